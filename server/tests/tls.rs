//! HTTPS on the management ports, against real listeners on 127.2.21.x: a
//! server with `net.tls` and `net.agentTls`, an agent with `net.tls` that
//! fetches the server's key and reports over HTTPS, one task end to end,
//! then both drain.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pollen_config::{AgentConfig, ServerConfig, Tls, TlsTrust};
use tokio_util::sync::CancellationToken;

const SERVER: [u8; 4] = [127, 2, 21, 1];
const AGENT: [u8; 4] = [127, 2, 21, 2];

fn free_port(ip: [u8; 4]) -> u16 {
    std::net::TcpListener::bind(SocketAddr::from((ip, 0)))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes a CA and one leaf certificate valid for `ips`; returns the CA's
/// path and the leaf's `Tls`.
fn write_pki(dir: &Path, ips: &[IpAddr]) -> (PathBuf, Tls) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = ips.iter().map(ToString::to_string).collect();
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &*ca)
        .unwrap();
    let tls = Tls {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(&tls.cert, cert.pem()).unwrap();
    std::fs::write(&tls.key, key.serialize_pem()).unwrap();
    (dir.join("ca.pem"), tls)
}

async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..600 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_server_and_agent_run_a_task() {
    tokio::time::timeout(Duration::from_secs(60), run_a_task())
        .await
        .expect("the test finishes in time");
}

async fn run_a_task() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, tls) = write_pki(tmp.path(), &[SERVER.into(), AGENT.into()]);
    let trust = TlsTrust {
        ca: Some(ca.clone()),
        insecure: false,
    };

    let mut server = ServerConfig {
        data_dir: tmp.path().join("server"),
        ..ServerConfig::default()
    };
    server.net.ip = SERVER.into();
    server.net.mgnt_port = free_port(SERVER);
    server.net.data_port = free_port(SERVER);
    server.net.agent_mgnt_port = free_port(AGENT);
    server.net.agent_data_port = free_port(AGENT);
    server.net.tls = Some(tls.clone());
    server.net.agent_tls = Some(trust.clone());
    server.auth.username = "ops".into();
    server.auth.password = Some(pollen_config::hash_password("pw").unwrap());
    server.validate().unwrap();
    let base = format!("https://{}:{}", server.net.ip, server.net.mgnt_port);

    let mut agent = AgentConfig {
        downdir: tmp.path().join("agent"),
        ..AgentConfig::default()
    };
    agent.net.ip = Some(AGENT.into());
    agent.net.mgnt_port = server.net.agent_mgnt_port;
    agent.net.data_port = server.net.agent_data_port;
    agent.net.tls = Some(tls);
    // No scheme: server.tls makes it HTTPS. No public key: fetched over HTTPS.
    agent.server.addr = Some(format!("{}:{}", server.net.ip, server.net.mgnt_port));
    agent.server.tls = Some(trust);
    agent.validate().unwrap();

    let ca_cert = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca_cert)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    let server_stop = CancellationToken::new();
    let server_task = tokio::spawn(pollen_server::run(server.clone(), server_stop.clone()));
    wait_for("the server over HTTPS", || async {
        let r = http.get(format!("{base}/healthz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;

    // The same port in clear text, or without the CA, gets nowhere.
    let plain = format!("http://{}:{}/healthz", server.net.ip, server.net.mgnt_port);
    assert!(http.get(&plain).send().await.is_err());
    let untrusting = reqwest::Client::builder().no_proxy().build().unwrap();
    let e = untrusting
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap_err();
    assert!(e.is_connect(), "{e:?}");
    // Credentials are still required over HTTPS.
    let r = http
        .get(format!("{base}/api/v1/server/tasks"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let agent_stop = CancellationToken::new();
    let agent_task = tokio::spawn(pollen_agent::run(agent.clone(), agent_stop.clone()));
    let agent_base = format!("https://{}:{}", IpAddr::from(AGENT), agent.net.mgnt_port);
    wait_for("the agent over HTTPS", || async {
        let r = http
            .get(format!("{agent_base}/healthz"))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    assert!(
        agent.downdir.join(".pollen/server.pub").exists(),
        "the agent pinned the key it fetched over HTTPS"
    );

    let src = tmp.path().join("payload.bin");
    let payload: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&src, &payload).unwrap();
    let body = serde_json::json!({
        "id": "tls-1",
        "dispatchFiles": [src],
        "destIPs": [IpAddr::from(AGENT).to_string()],
    });
    let r = http
        .post(format!("{base}/api/v1/server/tasks"))
        .basic_auth("ops", Some("pw"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let done = wait_for("the task to finish", || async {
        let v: serde_json::Value = http
            .get(format!("{base}/api/v1/server/tasks/tls-1"))
            .basic_auth("ops", Some("pw"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        matches!(v["status"].as_str(), Some("COMPLETED" | "FAILED")).then_some(v)
    })
    .await;
    // COMPLETED needs the push over HTTPS to the agent and its reports over
    // HTTPS to the server.
    assert_eq!(done["status"], "COMPLETED", "{done:#}");
    assert_eq!(
        std::fs::read(agent.downdir.join("payload.bin")).unwrap(),
        payload
    );

    agent_stop.cancel();
    server_stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), agent_task)
        .await
        .expect("the agent drains in time")
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), server_task)
        .await
        .expect("the server drains in time")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_key_for_another_certificate_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let (_, tls_a) = write_pki(&a, &[SERVER.into()]);
    let (_, tls_b) = write_pki(&b, &[SERVER.into()]);
    let mut config = ServerConfig {
        data_dir: tmp.path().join("data"),
        ..ServerConfig::default()
    };
    config.net.ip = SERVER.into();
    config.net.mgnt_port = free_port(SERVER);
    config.net.data_port = free_port(SERVER);
    config.net.tls = Some(Tls {
        cert: tls_a.cert,
        key: tls_b.key,
    });
    let e = pollen_server::run(config, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(e.to_string().starts_with("net.tls"), "{e}");
}
