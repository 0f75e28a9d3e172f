//! The server's HTTP client for agents' management APIs.
//!
//! Agents are reached over HTTP, or over HTTPS when `net.agentTls` is set.
//! Every request is signed: `Authorization: Bearer <jwt>` over
//! [`CommandClaims`] binding the agent's IP, the method, the exact path as
//! sent (percent-encoded) and the SHA-1 of the exact body bytes. Requests time
//! out (`control.agentTimeoutSecs`) and are retried with exponential backoff
//! on connection errors, timeouts and 5xx; a 4xx is the agent's considered
//! answer and is not retried.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use pollen_agent::https::ClientTrust;
use pollen_protocol::api::{AgentTask, ErrorBody};
use pollen_protocol::token::{CommandClaims, Signer};
use pollen_protocol::{TaskId, TokenError};
use reqwest::{Method, StatusCode, Url};

/// Largest error body read from an agent.
const MAX_ERROR_BODY: usize = 8 * 1024;

/// Why a request to an agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No answer: connection refused, reset or timed out.
    #[error("agent {addr} unreachable after {attempts} attempt(s): {reason}")]
    Unreachable {
        addr: SocketAddr,
        attempts: u32,
        reason: String,
        /// Whether the request may have reached the agent (a timeout after
        /// connecting), so that a later cancel should still be sent.
        maybe_delivered: bool,
    },
    /// The agent answered with an error status.
    #[error("agent {addr} answered HTTP {status}: {kind}: {message}")]
    Refused {
        addr: SocketAddr,
        status: u16,
        kind: String,
        message: String,
    },
    /// The command could not be signed or encoded.
    #[error("cannot build the request: {0}")]
    Build(String),
}

impl AgentError {
    /// Whether the agent may hold the task despite the error.
    pub fn maybe_delivered(&self) -> bool {
        match self {
            AgentError::Unreachable {
                maybe_delivered, ..
            } => *maybe_delivered,
            AgentError::Refused { status, .. } => *status >= 500,
            AgentError::Build(_) => false,
        }
    }
}

impl From<TokenError> for AgentError {
    fn from(e: TokenError) -> Self {
        AgentError::Build(e.to_string())
    }
}

/// Retry policy, limits and scheme of the agent client.
#[derive(Clone, Debug)]
pub struct AgentClientOptions {
    /// Agents' management port.
    pub port: u16,
    /// Whether agents serve HTTPS (`net.agentTls` is set).
    pub https: bool,
    /// How agents' certificates are trusted over HTTPS.
    pub trust: ClientTrust,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub retries: u32,
    /// First backoff; doubled after each retry.
    pub backoff: Duration,
}

/// Signed requests to agents.
#[derive(Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    signer: Signer,
    options: AgentClientOptions,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl AgentClient {
    /// A client signing with `signer`.
    ///
    /// # Errors
    /// If the HTTP client cannot be built.
    pub fn new(signer: Signer, options: AgentClientOptions) -> Result<Self, reqwest::Error> {
        let http = options
            .trust
            .apply(reqwest::Client::builder())
            .timeout(options.timeout)
            .connect_timeout(options.timeout)
            .no_proxy()
            .pool_max_idle_per_host(2)
            .build()?;
        Ok(Self {
            http,
            signer,
            options,
        })
    }

    fn url(&self, ip: IpAddr, id: Option<&TaskId>) -> Result<Url, AgentError> {
        let addr = SocketAddr::new(ip, self.options.port);
        let scheme = if self.options.https { "https" } else { "http" };
        let mut url = Url::parse(&format!("{scheme}://{addr}/"))
            .map_err(|e| AgentError::Build(e.to_string()))?;
        {
            let mut segs = url
                .path_segments_mut()
                .map_err(|()| AgentError::Build("URL cannot have a path".into()))?;
            segs.clear().extend(["api", "v1", "agent", "tasks"]);
            if let Some(id) = id {
                segs.push(id.as_str());
            }
        }
        Ok(url)
    }

    /// `POST /api/v1/agent/tasks` with `task`.
    ///
    /// # Errors
    /// [`AgentError`] after the retries are spent, or at once on a 4xx.
    pub async fn push(&self, ip: IpAddr, task: &AgentTask) -> Result<(), AgentError> {
        let body = serde_json::to_vec(task).map_err(|e| AgentError::Build(e.to_string()))?;
        let url = self.url(ip, None)?;
        self.send(ip, Method::POST, url, body).await
    }

    /// `DELETE /api/v1/agent/tasks/{id}`: stop the task, drop its staging data.
    ///
    /// # Errors
    /// As [`AgentClient::push`].
    pub async fn delete(&self, ip: IpAddr, id: &TaskId) -> Result<(), AgentError> {
        let url = self.url(ip, Some(id))?;
        self.send(ip, Method::DELETE, url, Vec::new()).await
    }

    async fn send(
        &self,
        ip: IpAddr,
        method: Method,
        url: Url,
        body: Vec<u8>,
    ) -> Result<(), AgentError> {
        let addr = SocketAddr::new(ip, self.options.port);
        let attempts = self.options.retries.saturating_add(1);
        let mut backoff = self.options.backoff;
        let mut maybe_delivered = false;
        let mut last_reason = String::new();
        for attempt in 1..=attempts {
            if attempt > 1 {
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
            let claims = CommandClaims::new(&ip.to_string(), method.as_str(), url.path(), &body);
            let jwt = self.signer.sign(&claims)?;
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(jwt);
            if !body.is_empty() {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            match req.send().await {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) => {
                    let status = resp.status();
                    let (kind, message) = read_error_body(resp).await;
                    if retryable(status) && attempt < attempts {
                        tracing::debug!(agent = %addr, attempt, status = status.as_u16(), %kind, "agent busy, retrying");
                        maybe_delivered = true;
                        last_reason = format!("HTTP {status}: {kind}: {message}");
                        continue;
                    }
                    return Err(AgentError::Refused {
                        addr,
                        status: status.as_u16(),
                        kind,
                        message,
                    });
                }
                Err(e) => {
                    maybe_delivered |= !e.is_connect();
                    last_reason = describe(&e, self.options.timeout);
                    tracing::debug!(agent = %addr, attempt, error = %last_reason, "agent request failed");
                }
            }
        }
        Err(AgentError::Unreachable {
            addr,
            attempts,
            reason: last_reason,
            maybe_delivered,
        })
    }
}

fn retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

async fn read_error_body(mut resp: reqwest::Response) -> (String, String) {
    let mut buf = Vec::new();
    while buf.len() < MAX_ERROR_BODY {
        match resp.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c[..c.len().min(MAX_ERROR_BODY - buf.len())]),
            _ => break,
        }
    }
    match serde_json::from_slice::<ErrorBody>(&buf) {
        Ok(b) => (b.kind, b.message),
        Err(_) => (
            "UNKNOWN".into(),
            String::from_utf8_lossy(&buf).chars().take(200).collect(),
        ),
    }
}

/// The innermost cause of a reqwest error, which names what happened
/// ("Connection refused (os error 111)") rather than the URL.
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("timed out after {}s", timeout.as_secs_f32());
    }
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let what = if e.is_connect() { "connect" } else { "request" };
    format!("{what}: {cause}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(port: u16) -> AgentClient {
        client_with(port, false)
    }

    fn client_with(port: u16, https: bool) -> AgentClient {
        let (private, _) = pollen_protocol::token::generate_keypair().unwrap();
        AgentClient::new(
            Signer::from_pem(private.as_bytes()).unwrap(),
            AgentClientOptions {
                port,
                https,
                trust: ClientTrust::default(),
                timeout: Duration::from_secs(2),
                retries: 1,
                backoff: Duration::from_millis(10),
            },
        )
        .unwrap()
    }

    #[test]
    fn task_ids_are_percent_encoded() {
        let c = client(45010);
        let id = TaskId::new("a b?c#d%e").unwrap();
        let url = c.url("127.2.0.1".parse().unwrap(), Some(&id)).unwrap();
        assert_eq!(url.path(), "/api/v1/agent/tasks/a%20b%3Fc%23d%25e");
        assert_eq!(
            url.as_str(),
            "http://127.2.0.1:45010/api/v1/agent/tasks/a%20b%3Fc%23d%25e"
        );
        let v6 = c.url("::1".parse().unwrap(), None).unwrap();
        assert_eq!(v6.as_str(), "http://[::1]:45010/api/v1/agent/tasks");
        let tls = client_with(45010, true);
        let url = tls.url("127.2.0.1".parse().unwrap(), None).unwrap();
        assert_eq!(url.as_str(), "https://127.2.0.1:45010/api/v1/agent/tasks");
    }

    #[tokio::test]
    async fn unreachable_agent_is_named() {
        // Nothing listens on 127.2.9.9.
        let c = client(1);
        let id = TaskId::new("x").unwrap();
        let e = c
            .delete("127.2.9.9".parse().unwrap(), &id)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                AgentError::Unreachable {
                    attempts: 2,
                    maybe_delivered: false,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("127.2.9.9"), "{e}");
    }
}
