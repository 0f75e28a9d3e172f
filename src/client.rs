//! A small REST client for the server's `/api/v1/server/tasks` API, shared
//! by `pollen task` and `pollen demo`.

use anyhow::{anyhow, Context, Result};
use pollen_agent::https::ClientTrust;
use pollen_config::{TlsTrust, TrustField};
use pollen_protocol::api::{CreateTaskRequest, ErrorBody, TaskInfo, TaskList};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// The CLI's names for the fields of its [`TlsTrust`], for errors.
const FLAGS: TrustField = TrustField {
    ca: "--cacert",
    insecure: "--insecure",
};

/// Talks to one server with HTTP basic auth, over HTTP or HTTPS.
#[derive(Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    base: Url,
    user: String,
    password: String,
}

impl Client {
    /// A client for the server at `base`, trusting its certificate as
    /// `trust` says. A bare `host:port` means HTTPS when `trust` sets
    /// anything, HTTP otherwise.
    pub(crate) fn new(base: &str, user: &str, password: &str, trust: &TlsTrust) -> Result<Self> {
        let base = if base.contains("://") {
            base.to_owned()
        } else if trust != &TlsTrust::default() {
            format!("https://{base}")
        } else {
            format!("http://{base}")
        };
        let base = Url::parse(&base).with_context(|| format!("bad server address {base:?}"))?;
        let trust = ClientTrust::load(Some(trust), FLAGS)?;
        let http = trust
            .apply(reqwest::Client::builder())
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self {
            http,
            base,
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }

    fn url(&self, segments: &[&str]) -> Result<Url> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|_| anyhow!("server address {} cannot take a path", self.base))?
            .pop_if_empty()
            .extend(["api", "v1", "server", "tasks"])
            .extend(segments);
        Ok(url)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&CreateTaskRequest>,
    ) -> Result<T> {
        let mut req = self
            .http
            .request(method, url.clone())
            .basic_auth(&self.user, Some(&self.password));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {url}"))?;
        let status = resp.status();
        let bytes = resp.bytes().await.context("reading the server's answer")?;
        if status.is_success() {
            if status == StatusCode::ACCEPTED && bytes.is_empty() {
                return serde_json::from_slice(b"null").context("empty answer");
            }
            return serde_json::from_slice(&bytes)
                .with_context(|| format!("unexpected answer from {url}"));
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => Err(anyhow!(
                "server refused ({status}): {}: {}",
                e.kind,
                e.message
            )),
            Err(_) => Err(anyhow!(
                "server refused ({status}): {}",
                String::from_utf8_lossy(&bytes)
            )),
        }
    }

    pub(crate) async fn create(&self, req: &CreateTaskRequest) -> Result<()> {
        let _: serde_json::Value = self.call(Method::POST, self.url(&[])?, Some(req)).await?;
        Ok(())
    }

    pub(crate) async fn status(&self, id: &str) -> Result<TaskInfo> {
        self.call(Method::GET, self.url(&[id])?, None).await
    }

    pub(crate) async fn list(&self) -> Result<TaskList> {
        self.call(Method::GET, self.url(&[])?, None).await
    }

    pub(crate) async fn cancel(&self, id: &str) -> Result<()> {
        let _: serde_json::Value = self.call(Method::DELETE, self.url(&[id])?, None).await?;
        Ok(())
    }
}
