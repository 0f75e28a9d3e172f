use super::*;
use crate::test_util::{make_info, random_bytes};
use axum::body::Body;
use axum::http::Request;
use base64::Engine as _;
use http_body_util::BodyExt;
use pollen_config::AgentConfig;
use pollen_protocol::api::{pack_info, InfoEncoding, ProgressReport};
use pollen_protocol::token::{generate_keypair, Signer, TaskClaims, Verifier};
use std::io::Write as _;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const IP: &str = "127.1.4.2";
const TASKS: &str = "/api/v1/agent/tasks";

struct Fixture {
    signer: Signer,
    agent: Arc<Agent>,
    app: Router,
    _dir: tempfile::TempDir,
}

fn fixture(max_active: usize) -> Fixture {
    let (private, public) = generate_keypair().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = AgentConfig {
        downdir: dir.path().to_path_buf(),
        ..AgentConfig::default()
    };
    config.net.ip = Some(IP.parse().unwrap());
    config.control.max_active = max_active;
    let verifier = Verifier::from_pem(public.as_bytes()).unwrap();
    let agent = Arc::new(
        Agent::new(
            &config,
            IP.parse().unwrap(),
            verifier,
            &crate::https::ClientTrust::default(),
            CancellationToken::new(),
        )
        .unwrap(),
    );
    Fixture {
        signer: Signer::from_pem(private.as_bytes()).unwrap(),
        app: router(agent.clone()),
        agent,
        _dir: dir,
    }
}

impl Fixture {
    fn spec(&self, id: &str, dest_dir: Option<&str>) -> (AgentTask, Info) {
        let (info, _) = make_info(&[("f", random_bytes(20_000), 0o644)], 16 * 1024);
        let ih = info.info_hash().unwrap();
        let token = self
            .signer
            .sign(&TaskClaims::new(IP, id, &ih.to_hex(), 3600))
            .unwrap();
        let (packed, info_encoding) = pack_info(&info.to_bencode().unwrap());
        let spec = AgentTask {
            task_id: TaskId::new(id).unwrap(),
            info: packed,
            info_encoding,
            info_hash: ih,
            token,
            peers: vec![],
            seed: "127.1.4.1:9".parse().unwrap(),
            report_url: "http://127.1.4.1:9/api/v1/server/reports".into(),
            speed_bytes_per_sec: None,
            dest_dir: dest_dir.map(str::to_owned),
            info_from: vec![],
        };
        (spec, info)
    }

    fn signed(&self, method: &str, path: &str, body: Vec<u8>) -> Request<Body> {
        let jwt = self
            .signer
            .sign(&CommandClaims::new(IP, method, path, &body))
            .unwrap();
        Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {jwt}"))
            .body(Body::from(body))
            .unwrap()
    }

    async fn call(&self, req: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes().to_vec(),
        )
    }

    async fn post(&self, spec: &AgentTask) -> (StatusCode, Option<ErrorBody>) {
        let (status, _, body) = self
            .call(self.signed("POST", TASKS, serde_json::to_vec(spec).unwrap()))
            .await;
        (status, serde_json::from_slice(&body).ok())
    }
}

fn kind(body: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(body)
        .map(|e| e.kind)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned())
}

#[tokio::test]
async fn health_needs_no_auth_and_unknown_routes_are_json() {
    let f = fixture(4);
    let (status, _, _) = f
        .call(Request::get("/healthz").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = f
        .call(Request::get("/nope").body(Body::empty()).unwrap())
        .await;
    assert_eq!(
        (status, kind(&body).as_str()),
        (StatusCode::NOT_FOUND, "NOT_FOUND")
    );
}

#[tokio::test]
async fn missing_or_bad_tokens_get_401_with_json() {
    let f = fixture(4);
    let (spec, _) = f.spec("t", None);
    let body = serde_json::to_vec(&spec).unwrap();
    let bare = Request::post(TASKS).body(Body::from(body.clone())).unwrap();
    let (status, headers, resp) = f.call(bare).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers.get("www-authenticate").unwrap(), "Bearer");
    assert_eq!(kind(&resp), "UNAUTHORIZED");

    let (other, _) = generate_keypair().unwrap();
    let forged = Signer::from_pem(other.as_bytes())
        .unwrap()
        .sign(&CommandClaims::new(IP, "POST", TASKS, &body))
        .unwrap();
    let req = Request::post(TASKS)
        .header("authorization", format!("Bearer {forged}"))
        .body(Body::from(body.clone()))
        .unwrap();
    assert_eq!(f.call(req).await.0, StatusCode::UNAUTHORIZED);

    // A genuine token for another body, method, path or agent.
    let mut req = f.signed("POST", TASKS, b"{}".to_vec());
    *req.body_mut() = Body::from(body.clone());
    assert_eq!(f.call(req).await.0, StatusCode::UNAUTHORIZED);
    let mut req = f.signed("DELETE", "/api/v1/agent/tasks/t", vec![]);
    *req.method_mut() = Method::GET;
    assert_eq!(f.call(req).await.0, StatusCode::UNAUTHORIZED);
    let jwt = f
        .signer
        .sign(&CommandClaims::new(
            "127.1.4.3",
            "GET",
            "/api/v1/agent/tasks/t",
            b"",
        ))
        .unwrap();
    let req = Request::get("/api/v1/agent/tasks/t")
        .header("authorization", format!("Bearer {jwt}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(f.call(req).await.0, StatusCode::UNAUTHORIZED);
    assert!(f.agent.task(&spec.task_id).is_none());
}

#[tokio::test]
async fn bad_json_and_bad_tasks_get_400_with_json() {
    let f = fixture(4);
    let (status, _, body) = f.call(f.signed("POST", TASKS, b"{not json".to_vec())).await;
    assert_eq!(
        (status, kind(&body).as_str()),
        (StatusCode::BAD_REQUEST, "BAD_REQUEST")
    );
    let (status, _, body) = f
        .call(f.signed("POST", TASKS, br#"{"taskId":"x"}"#.to_vec()))
        .await;
    assert_eq!(
        (status, kind(&body).as_str()),
        (StatusCode::BAD_REQUEST, "BAD_REQUEST")
    );

    let (mut spec, _) = f.spec("t", None);
    spec.info_hash = pollen_protocol::InfoHash([9; 20]);
    assert_eq!(
        f.post(&spec).await.0,
        StatusCode::BAD_REQUEST,
        "info-hash mismatch"
    );
    let (mut spec, _) = f.spec("t", None);
    spec.info = "%%%".into();
    assert_eq!(f.post(&spec).await.0, StatusCode::BAD_REQUEST, "not base64");
    // Deflated info: garbage, and a small body that inflates past the
    // body limit, are refused with the reason.
    let (mut spec, _) = f.spec("t", None);
    spec.info_encoding = InfoEncoding::Deflate;
    let (status, err) = f.post(&spec).await;
    let err = err.expect("an error body").message;
    assert_eq!(status, StatusCode::BAD_REQUEST, "not deflate: {err}");
    assert!(err.contains("deflate"), "{err}");
    let mut bomb = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..(super::MAX_BODY >> 20) + 1 {
        bomb.write_all(&zeros).unwrap();
    }
    let bomb = bomb.finish().unwrap();
    assert!(bomb.len() < 1 << 20);
    spec.info = base64::engine::general_purpose::STANDARD.encode(bomb);
    let (status, err) = f.post(&spec).await;
    let err = err.expect("an error body").message;
    assert_eq!(status, StatusCode::BAD_REQUEST, "bomb: {err}");
    assert!(err.contains("inflates to more than"), "{err}");
    let (spec, _) = f.spec("t", Some("../escape"));
    let (status, err) = f.post(&spec).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "unsafe dest_dir");
    assert!(err.unwrap().message.contains(".."));
    let (mut spec, _) = f.spec("t", None);
    spec.token = f
        .signer
        .sign(&TaskClaims::new(
            "127.1.4.3",
            "t",
            &spec.info_hash.to_hex(),
            60,
        ))
        .unwrap();
    assert_eq!(
        f.post(&spec).await.0,
        StatusCode::BAD_REQUEST,
        "token for another agent"
    );
}

#[tokio::test]
async fn accept_is_idempotent_conflicts_and_limits_are_reported() {
    let f = fixture(1);
    let (spec, _) = f.spec("t1", Some("sub"));
    assert_eq!(f.post(&spec).await.0, StatusCode::ACCEPTED);
    assert_eq!(f.post(&spec).await.0, StatusCode::ACCEPTED, "idempotent");
    let (other, _) = f.spec("t1", None);
    let (status, err) = f.post(&other).await;
    assert_eq!(
        (status, err.unwrap().kind.as_str()),
        (StatusCode::CONFLICT, "TASK_CONFLICT")
    );
    let (second, _) = f.spec("t2", None);
    let (status, err) = f.post(&second).await;
    assert_eq!(
        (status, err.unwrap().kind.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "TOO_MANY_TASKS")
    );

    let (status, _, body) = f
        .call(f.signed("GET", "/api/v1/agent/tasks/t1", vec![]))
        .await;
    assert_eq!(status, StatusCode::OK);
    let report: ProgressReport = serde_json::from_slice(&body).unwrap();
    assert_eq!((report.pieces_total, report.bytes_total), (2, 20_000));
    let (status, _, body) = f
        .call(f.signed("GET", "/api/v1/agent/tasks/t2", vec![]))
        .await;
    assert_eq!(
        (status, kind(&body).as_str()),
        (StatusCode::NOT_FOUND, "TASK_NOT_EXISTED")
    );

    let staging = crate::store::staging_dir(&f.agent.downdir, &spec.info_hash);
    assert!(staging.exists());
    let (status, _, _) = f
        .call(f.signed("DELETE", "/api/v1/agent/tasks/t1", vec![]))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(!staging.exists(), "DELETE removes the staging data");
    let (status, _, _) = f
        .call(f.signed("DELETE", "/api/v1/agent/tasks/t1", vec![]))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "DELETE is idempotent");
    assert_eq!(
        f.post(&second).await.0,
        StatusCode::ACCEPTED,
        "the slot is free again"
    );
}

#[tokio::test]
async fn slim_pushes_reuse_a_live_dictionary_or_say_why_none_came() {
    let f = fixture(4);
    let (full, _) = f.spec("t1", None);
    assert_eq!(f.post(&full).await.0, StatusCode::ACCEPTED);
    // The same task again, slim, with a source that does not answer: the
    // live task's dictionary serves, nothing is fetched.
    let slim = AgentTask {
        info: String::new(),
        info_from: vec!["127.1.4.1:9".parse().unwrap()],
        ..full.clone()
    };
    assert_eq!(f.post(&slim).await.0, StatusCode::ACCEPTED);

    // A new task whose sources and seed refuse connections.
    let (other, _) = f.spec("t2", None);
    let slim = AgentTask {
        info: String::new(),
        info_from: vec!["127.1.4.2:9".parse().unwrap()],
        ..other
    };
    let (status, err) = f.post(&slim).await;
    let err = err.unwrap();
    assert_eq!(
        (status, err.kind.as_str()),
        (StatusCode::BAD_GATEWAY, "INFO_UNAVAILABLE")
    );
    // The holder was asked in rounds for two seconds, then the seed.
    assert!(err.message.contains("(the seed)"), "{}", err.message);

    // A token for another agent is refused before anyone is dialed.
    let (mut third, _) = f.spec("t3", None);
    third.token = f
        .signer
        .sign(&TaskClaims::new(
            "127.1.4.99",
            "t3",
            &third.info_hash.to_hex(),
            3600,
        ))
        .unwrap();
    third.info = String::new();
    third.info_from = vec!["127.1.4.2:9".parse().unwrap()];
    let (status, err) = f.post(&third).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(err.unwrap().message.contains("another agent"));
}
