//! Shared helpers for the server's REST tests: an in-process server with no
//! seed, request helpers, fake agents on 127.2.N.x, and `wait_until`.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, StatusCode, Uri};
use axum::Router;
use base64::Engine;
use http_body_util::BodyExt;
use pollen_protocol::api::AgentTask;
use pollen_protocol::token::{CommandClaims, Verifier, AUD_AGENT};
use pollen_server::agent_client::AgentClientOptions;
use pollen_server::{
    router, AppState, Authenticator, Credentials, Keys, ManagerOptions, NoSeed, Store, TaskManager,
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

pub const USER: &str = "admin";
pub const PASSWORD: &str = "s3cret";

/// An in-process server.
pub struct TestServer {
    pub router: Router,
    pub state: AppState,
    pub keys: Keys,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    pub dir: Arc<tempfile::TempDir>,
}

impl TestServer {
    /// Stops the drivers and the writer, and waits for them.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        self.state.manager.flush().await;
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Options with short timeouts; agents listen on `agent_port`.
pub fn options(agent_port: u16) -> ManagerOptions {
    ManagerOptions {
        max_active: 4,
        push_concurrency: 4,
        peer_set_size: 30,
        slim_pushes_from: 64,
        agent_data_port: 45011,
        seed_addr: "127.2.0.1:45001".parse().unwrap(),
        report_url: "http://127.2.0.1:45000/api/v1/server/reports".into(),
        agent: AgentClientOptions {
            port: agent_port,
            https: false,
            trust: Default::default(),
            timeout: Duration::from_secs(2),
            retries: 1,
            backoff: Duration::from_millis(20),
        },
        report_timeout: Duration::from_secs(60),
        watchdog_interval: Duration::from_millis(50),
        build_concurrency: 2,
        max_tasks: 100,
        persist_interval: Duration::from_millis(20),
    }
}

/// A server with a fresh key pair, credentials `USER`/`PASSWORD`, no seed,
/// and a task store in a temporary directory.
pub fn server(opts: ManagerOptions) -> TestServer {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let keys = Keys::generate().unwrap();
    server_with(opts, keys, dir)
}

/// As [`server`], reusing a data directory and keys (restart tests).
pub fn server_with(opts: ManagerOptions, keys: Keys, dir: Arc<tempfile::TempDir>) -> TestServer {
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let store = Store::open(dir.path().join("tasks")).unwrap();
    let manager = TaskManager::new(
        opts,
        keys.clone(),
        Arc::new(NoSeed),
        Some(store),
        shutdown.clone(),
        tracker.clone(),
    )
    .unwrap();
    let hash = password_hash();
    let auth = Arc::new(Authenticator::new(
        Credentials {
            username: USER.into(),
            password_hash: hash,
        },
        keys.signer.clone(),
        keys.verifier.clone(),
        600,
    ));
    let state = AppState {
        manager,
        auth,
        public_pem: keys.public_pem.clone().into(),
    };
    TestServer {
        router: router(state.clone()),
        state,
        keys,
        shutdown,
        tracker,
        dir,
    }
}

fn password_hash() -> String {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| pollen_config::hash_password(PASSWORD).unwrap())
        .clone()
}

pub fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

pub fn admin() -> String {
    basic(USER, PASSWORD)
}

/// A response: status, headers, and the body as JSON (or a JSON string for
/// non-JSON bodies).
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Resp {
    pub fn kind(&self) -> &str {
        self.body["kind"].as_str().unwrap_or("")
    }

    pub fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or("")
    }
}

/// One request through the router.
pub async fn call(
    router: &Router,
    method: &str,
    uri: &str,
    auth: Option<&str>,
    body: Option<&str>,
) -> Resp {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    let req = b
        .body(body.map_or_else(Body::empty, |s| Body::from(s.to_owned())))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Resp {
        status,
        headers,
        body,
    }
}

/// Polls `f` every 20 ms until it is true; panics after `secs`.
pub async fn wait_until<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `len` pseudo-random bytes to `dir/name`.
pub fn write_file(dir: &Path, name: &str, len: usize) -> PathBuf {
    let p = dir.join(name);
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0])
        .collect();
    std::fs::write(&p, data).unwrap();
    p
}

/// What a fake agent saw.
#[derive(Default)]
pub struct AgentLog {
    pub pushes: Vec<AgentTask>,
    pub deletes: Vec<String>,
    pub bad_signatures: usize,
}

#[derive(Clone)]
struct FakeAgent {
    ip: IpAddr,
    verifier: Verifier,
    log: Arc<Mutex<AgentLog>>,
}

async fn fake_agent_handler(
    State(a): State<FakeAgent>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok = a
        .verifier
        .verify::<CommandClaims>(token, AUD_AGENT)
        .is_ok_and(|c| {
            c.check(&a.ip.to_string(), method.as_str(), uri.path(), &body)
                .is_ok()
        });
    let mut log = a.log.lock().unwrap();
    if !ok {
        log.bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    if method == Method::POST {
        log.pushes.push(serde_json::from_slice(&body).unwrap());
    } else {
        log.deletes.push(uri.path().to_owned());
    }
    StatusCode::ACCEPTED
}

/// Fake agents on `ips`, all on one port (the first binds port 0). They
/// check every command's signature against `verifier`.
pub async fn fake_agents(
    ips: &[IpAddr],
    verifier: &Verifier,
    shutdown: &CancellationToken,
) -> (u16, HashMap<IpAddr, Arc<Mutex<AgentLog>>>) {
    let mut port = 0;
    let mut logs = HashMap::new();
    for &ip in ips {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, port))
            .await
            .unwrap();
        port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(AgentLog::default()));
        let state = FakeAgent {
            ip,
            verifier: verifier.clone(),
            log: log.clone(),
        };
        let app = Router::new()
            .route(
                "/api/v1/agent/tasks",
                axum::routing::post(fake_agent_handler),
            )
            .route(
                "/api/v1/agent/tasks/{id}",
                axum::routing::delete(fake_agent_handler),
            )
            .with_state(state);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        logs.insert(ip, log);
    }
    (port, logs)
}

/// A create-task body.
pub fn task_body(id: &str, files: &[&Path], dests: &[&str]) -> String {
    serde_json::json!({
        "id": id,
        "dispatchFiles": files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "destIPs": dests,
    })
    .to_string()
}
