//! `pollen_server::run` end to end on 127.2.20.1: bootstrap, the real seed,
//! the REST port, graceful shutdown, and a restart on the same datadir.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use pollen_config::ServerConfig;
use tokio_util::sync::CancellationToken;

const IP: [u8; 4] = [127, 2, 20, 1];

fn free_port() -> u16 {
    std::net::TcpListener::bind(SocketAddr::from((IP, 0)))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_healthy(http: &reqwest::Client, base: &str) {
    for _ in 0..500 {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("server did not come up");
}

#[tokio::test]
async fn run_serves_and_shuts_down() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = ServerConfig {
        data_dir: tmp.path().join("data"),
        ..ServerConfig::default()
    };
    config.net.ip = IpAddr::from(IP);
    config.net.mgnt_port = free_port();
    config.net.data_port = free_port();
    config.net.agent_mgnt_port = 1; // nothing listens: pushes are refused
    config.control.agent_timeout_secs = 2;
    config.auth.username = "ops".into();
    config.auth.password = Some(pollen_config::hash_password("pw").unwrap());
    let base = format!("http://{}:{}", config.net.ip, config.net.mgnt_port);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    let shutdown = CancellationToken::new();
    let server = tokio::spawn(pollen_server::run(config.clone(), shutdown.clone()));
    wait_healthy(&http, &base).await;

    let pem = http
        .get(format!("{base}/api/v1/server/pubkey"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        pem,
        std::fs::read_to_string(config.data_dir.join("server.pub")).unwrap()
    );
    assert_eq!(
        http.get(format!("{base}/api/v1/server/tasks"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    let src = tmp.path().join("payload");
    std::fs::write(&src, vec![7u8; 300_000]).unwrap();
    let body = serde_json::json!({"id": "r1", "dispatchFiles": [src], "destIPs": ["127.2.20.2"]});
    let r = http
        .post(format!("{base}/api/v1/server/tasks"))
        .basic_auth("ops", Some("pw"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let mut status = String::new();
    for _ in 0..500 {
        let r = http
            .get(format!("{base}/api/v1/server/tasks/r1"))
            .basic_auth("ops", Some("pw"))
            .send()
            .await
            .unwrap();
        let v: serde_json::Value = r.json().await.unwrap();
        status = v["status"].as_str().unwrap_or("").to_owned();
        if status == "FAILED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, "FAILED");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("drains in time")
        .unwrap()
        .unwrap();

    // Same datadir again: same key, the task is still there.
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(pollen_server::run(config.clone(), shutdown.clone()));
    wait_healthy(&http, &base).await;
    let pem2 = http
        .get(format!("{base}/api/v1/server/pubkey"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(pem, pem2);
    let r = http
        .get(format!("{base}/api/v1/server/tasks/r1"))
        .basic_auth("ops", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("drains in time")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn run_refuses_an_unspecified_address() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = ServerConfig {
        data_dir: tmp.path().join("data"),
        ..ServerConfig::default()
    };
    config.net.ip = IpAddr::from([0, 0, 0, 0]);
    let e = pollen_server::run(config, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("net.ip"), "{e}");
}
