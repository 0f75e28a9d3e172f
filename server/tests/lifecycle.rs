//! Task lifecycle against real listeners: the server's router on a real
//! socket, fake agents (127.2.1x.x) that verify every signed command, agents'
//! reports, the `maxActive` queue, the watchdog, and restart.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pollen_protocol::api::{AgentTask, AgentTaskState, ProgressReport, TaskInfo};
use pollen_protocol::token::TaskClaims;
use pollen_protocol::{Info, TaskId};
use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn progress(id: &str, state: AgentTaskState, files: Vec<u64>) -> ProgressReport {
    let done = files.iter().sum();
    ProgressReport {
        task_id: TaskId::new(id).unwrap(),
        state,
        bytes_done: done,
        bytes_total: 0,
        pieces_done: 0,
        pieces_total: 0,
        bytes_from_peers: done / 2,
        bytes_from_seed: done - done / 2,
        bytes_uploaded: 7,
        rate_bps: 1000,
        pieces_in_flight: 2,
        file_bytes_done: files,
        peers: vec![],
        shunned_peers: vec![],
        error: None,
    }
}

fn pushes(
    logs: &std::collections::HashMap<IpAddr, Arc<std::sync::Mutex<AgentLog>>>,
    at: &str,
) -> Vec<AgentTask> {
    logs[&ip(at)].lock().unwrap().pushes.clone()
}

fn deletes(
    logs: &std::collections::HashMap<IpAddr, Arc<std::sync::Mutex<AgentLog>>>,
    at: &str,
) -> Vec<String> {
    logs[&ip(at)].lock().unwrap().deletes.clone()
}

#[tokio::test]
async fn full_lifecycle_over_real_sockets() {
    let stop = CancellationToken::new();
    let keys = pollen_server::Keys::generate().unwrap();
    let (agent_port, logs) =
        fake_agents(&[ip("127.2.10.1"), ip("127.2.10.2")], &keys.verifier, &stop).await;
    // The server's own listener, so the report URL can name it.
    let listener = tokio::net::TcpListener::bind("127.2.10.3:0").await.unwrap();
    let server_addr = listener.local_addr().unwrap();
    let mut opts = options(agent_port);
    opts.report_url = format!("http://{server_addr}/api/v1/server/reports");
    let s = server_with(opts, keys.clone(), Arc::new(tempfile::tempdir().unwrap()));
    let router = s.router.clone();
    let stop2 = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(stop2.cancelled_owned())
            .await;
    });

    let dir = s.dir.path().join("tree");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    write_file(&dir, "one.bin", 200_000);
    write_file(&dir.join("sub"), "two.bin", 50_000);
    std::fs::write(dir.join("empty"), b"").unwrap();
    let body = serde_json::json!({
        "id": "life 1",
        "dispatchFiles": [dir.display().to_string()],
        "destIPs": ["127.2.10.1", "127.2.10.2"],
        "destDir": "incoming",
        "speed": 2,
    });
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://{server_addr}");
    let r = http
        .post(format!("{base}/api/v1/server/tasks"))
        .basic_auth(USER, Some(PASSWORD))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = http
        .get(format!("{base}/api/v1/server/tasks"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));

    wait_until(20, "both pushes", || async {
        pushes(&logs, "127.2.10.1").len() == 1 && pushes(&logs, "127.2.10.2").len() == 1
    })
    .await;
    let mut tokens = Vec::new();
    for (me, other) in [("127.2.10.1", "127.2.10.2"), ("127.2.10.2", "127.2.10.1")] {
        let t = pushes(&logs, me).remove(0);
        let bencoded = t.info_bytes(usize::MAX).unwrap();
        let (info, hash): (Info, _) = Info::from_bencode(&bencoded).unwrap();
        assert_eq!(hash, t.info_hash);
        let names: Vec<String> = info.files.iter().map(|f| f.display_path()).collect();
        assert_eq!(names, ["tree/empty", "tree/one.bin", "tree/sub/two.bin"]);
        assert_eq!(info.total_length(), 250_000);
        let claims: TaskClaims = keys
            .verifier
            .verify_task(&t.token, &t.info_hash.to_hex())
            .unwrap();
        assert_eq!((claims.sub.as_str(), claims.tid.as_str()), (me, "life 1"));
        assert_eq!(t.peers, vec![SocketAddr::new(ip(other), 45011)]);
        assert_eq!(t.seed, "127.2.0.1:45001".parse().unwrap());
        assert_eq!(t.report_url, format!("{base}/api/v1/server/reports"));
        assert_eq!(t.speed_bytes_per_sec, Some(2 * 1024 * 1024));
        assert_eq!(t.dest_dir.as_deref(), Some("incoming"));
        tokens.push(t.token);
    }
    let get = || async {
        let r = http
            .get(format!("{base}/api/v1/server/tasks/life%201"))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<TaskInfo>().await.unwrap()
    };
    let info = get().await;
    assert_eq!(info.status.as_str(), "INPROGESS");
    assert_eq!(
        info.dispatch_infos["127.2.10.1"].status.as_str(),
        "INPROGESS"
    );

    let send = |token: String, rep: ProgressReport| {
        let http = http.clone();
        let url = format!("{base}/api/v1/server/reports");
        async move {
            http.post(url)
                .bearer_auth(token)
                .json(&rep)
                .send()
                .await
                .unwrap()
        }
    };
    let r = send(
        tokens[0].clone(),
        progress("life 1", AgentTaskState::Running, vec![0, 200_000, 0]),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let info = get().await;
    let d = &info.dispatch_infos["127.2.10.1"];
    assert_eq!(d.percent_complete, 80.0);
    assert_eq!(d.bytes_from_seed, 100_000);
    let file_status: Vec<&str> = d.dispatch_files.iter().map(|f| f.status.as_str()).collect();
    assert_eq!(file_status, ["INIT", "COMPLETED", "INIT"]);

    // A report with the wrong file count is refused.
    let r = send(
        tokens[0].clone(),
        progress("life 1", AgentTaskState::Running, vec![0]),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Another agent's token cannot report for this one's files... it reports as itself.
    let r = send(
        tokens[0].clone(),
        progress(
            "life 1",
            AgentTaskState::Completed,
            vec![0, 200_000, 50_000],
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(get().await.status.as_str(), "INPROGESS");
    let r = send(
        tokens[1].clone(),
        progress(
            "life 1",
            AgentTaskState::Completed,
            vec![0, 200_000, 50_000],
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let info = get().await;
    assert_eq!(info.status.as_str(), "COMPLETED");
    assert!(info.finished_at.is_some());
    for d in info.dispatch_infos.values() {
        assert_eq!(d.percent_complete, 100.0);
        assert!(d
            .dispatch_files
            .iter()
            .all(|f| f.status.as_str() == "COMPLETED"));
    }

    // Cleanup: both agents are told to drop the task, at the encoded path.
    wait_until(20, "deletes", || async {
        deletes(&logs, "127.2.10.1").len() == 1 && deletes(&logs, "127.2.10.2").len() == 1
    })
    .await;
    assert_eq!(
        deletes(&logs, "127.2.10.1"),
        ["/api/v1/agent/tasks/life%201"]
    );
    for l in logs.values() {
        assert_eq!(l.lock().unwrap().bad_signatures, 0);
    }
    // Late reports tell the agent to stop.
    let r = send(
        tokens[0].clone(),
        progress(
            "life 1",
            AgentTaskState::Completed,
            vec![0, 200_000, 50_000],
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::GONE);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["kind"], "TASK_FINISHED");
    stop.cancel();
}

#[tokio::test]
async fn max_active_queues_and_cancel_frees_the_slot() {
    let stop = CancellationToken::new();
    let keys = pollen_server::Keys::generate().unwrap();
    let (agent_port, logs) = fake_agents(&[ip("127.2.11.1")], &keys.verifier, &stop).await;
    let mut opts = options(agent_port);
    opts.max_active = 1;
    let s = server_with(opts, keys, Arc::new(tempfile::tempdir().unwrap()));
    let f = write_file(s.dir.path(), "f", 1000);
    for id in ["q1", "q2"] {
        let body = task_body(id, &[&f], &["127.2.11.1"]);
        let r = call(
            &s.router,
            "POST",
            "/api/v1/server/tasks",
            Some(&admin()),
            Some(&body),
        )
        .await;
        assert_eq!(r.status, axum::http::StatusCode::ACCEPTED);
    }
    wait_until(20, "one push", || async {
        pushes(&logs, "127.2.11.1").len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Tasks take the slot in the order their metainfo is ready.
    let first = pushes(&logs, "127.2.11.1")[0].task_id.as_str().to_owned();
    let second = if first == "q1" { "q2" } else { "q1" };
    let status = |id: String| {
        let router = s.router.clone();
        async move {
            call(
                &router,
                "GET",
                &format!("/api/v1/server/tasks/{id}"),
                Some(&admin()),
                None,
            )
            .await
            .body["status"]
                .clone()
        }
    };
    assert_eq!(status(first.clone()).await, "INPROGESS");
    assert_eq!(
        status(second.to_owned()).await,
        "INIT",
        "waits for the slot"
    );
    assert_eq!(pushes(&logs, "127.2.11.1").len(), 1);

    let uri = format!("/api/v1/server/tasks/{first}");
    let r = call(&s.router, "DELETE", &uri, Some(&admin()), None).await;
    assert_eq!(r.status, axum::http::StatusCode::ACCEPTED);
    assert_eq!(r.body["status"], "CANCELED");
    assert_eq!(r.body["dispatchInfos"]["127.2.11.1"]["status"], "CANCELED");
    wait_until(20, "second pushed", || async {
        pushes(&logs, "127.2.11.1").len() == 2
    })
    .await;
    assert_eq!(pushes(&logs, "127.2.11.1")[1].task_id.as_str(), second);
    let deleted = format!("/api/v1/agent/tasks/{first}");
    wait_until(20, "first deleted", || async {
        deletes(&logs, "127.2.11.1") == [deleted.clone()]
    })
    .await;
    assert_eq!(status(second.to_owned()).await, "INPROGESS");
    stop.cancel();
}

#[tokio::test]
async fn silent_agents_are_failed_by_the_watchdog() {
    let stop = CancellationToken::new();
    let keys = pollen_server::Keys::generate().unwrap();
    let (agent_port, logs) = fake_agents(&[ip("127.2.12.1")], &keys.verifier, &stop).await;
    let mut opts = options(agent_port);
    opts.report_timeout = Duration::from_millis(300);
    let s = server_with(opts, keys, Arc::new(tempfile::tempdir().unwrap()));
    let f = write_file(s.dir.path(), "f", 1000);
    let body = task_body("quiet", &[&f], &["127.2.12.1"]);
    call(
        &s.router,
        "POST",
        "/api/v1/server/tasks",
        Some(&admin()),
        Some(&body),
    )
    .await;
    let router = s.router.clone();
    wait_until(20, "watchdog", || {
        let router = router.clone();
        async move {
            call(
                &router,
                "GET",
                "/api/v1/server/tasks/quiet",
                Some(&admin()),
                None,
            )
            .await
            .body["status"]
                == "FAILED"
        }
    })
    .await;
    let r = call(
        &s.router,
        "GET",
        "/api/v1/server/tasks/quiet",
        Some(&admin()),
        None,
    )
    .await;
    let e = r.body["dispatchInfos"]["127.2.12.1"]["error"]
        .as_str()
        .unwrap();
    assert!(e.contains("stopped reporting"), "{e}");
    wait_until(20, "delete", || async {
        deletes(&logs, "127.2.12.1").len() == 1
    })
    .await;
    stop.cancel();
}

#[tokio::test]
async fn restart_keeps_tasks_and_fails_unfinished_ones() {
    let stop = CancellationToken::new();
    let keys = pollen_server::Keys::generate().unwrap();
    let (agent_port, logs) = fake_agents(&[ip("127.2.13.1")], &keys.verifier, &stop).await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let s = server_with(options(agent_port), keys.clone(), dir.clone());
    let f = write_file(dir.path(), "f", 1000);
    for id in ["running", "done"] {
        let body = task_body(id, &[&f], &["127.2.13.1"]);
        call(
            &s.router,
            "POST",
            "/api/v1/server/tasks",
            Some(&admin()),
            Some(&body),
        )
        .await;
    }
    wait_until(20, "pushes", || async {
        pushes(&logs, "127.2.13.1").len() == 2
    })
    .await;
    let done = pushes(&logs, "127.2.13.1")
        .into_iter()
        .find(|t| t.task_id.as_str() == "done")
        .unwrap();
    let rep =
        serde_json::to_string(&progress("done", AgentTaskState::Completed, vec![1000])).unwrap();
    let r = call(
        &s.router,
        "POST",
        "/api/v1/server/reports",
        Some(&format!("Bearer {}", done.token)),
        Some(&rep),
    )
    .await;
    assert_eq!(r.status, axum::http::StatusCode::NO_CONTENT);
    s.stop().await;
    assert_eq!(
        std::fs::read_dir(dir.path().join("tasks")).unwrap().count(),
        2
    );
    drop(s);

    let s = server_with(options(agent_port), keys, dir);
    assert_eq!(s.state.manager.restore().await.unwrap(), 2);
    let r = call(
        &s.router,
        "GET",
        "/api/v1/server/tasks/done",
        Some(&admin()),
        None,
    )
    .await;
    assert_eq!(r.body["status"], "COMPLETED");
    assert_eq!(
        r.body["dispatchInfos"]["127.2.13.1"]["percentComplete"],
        100.0
    );
    let r = call(
        &s.router,
        "GET",
        "/api/v1/server/tasks/running",
        Some(&admin()),
        None,
    )
    .await;
    assert_eq!(r.body["status"], "FAILED");
    assert_eq!(r.body["error"], "server restarted");
    // Its agent is told to stop at its next report.
    let running = pushes(&logs, "127.2.13.1")
        .into_iter()
        .find(|t| t.task_id.as_str() == "running")
        .unwrap();
    let rep =
        serde_json::to_string(&progress("running", AgentTaskState::Running, vec![10])).unwrap();
    let r = call(
        &s.router,
        "POST",
        "/api/v1/server/reports",
        Some(&format!("Bearer {}", running.token)),
        Some(&rep),
    )
    .await;
    assert_eq!(r.status, axum::http::StatusCode::GONE);
    // Re-posting the same request is still idempotent after a restart.
    let body = task_body("done", &[&f], &["127.2.13.1"]);
    let r = call(
        &s.router,
        "POST",
        "/api/v1/server/tasks",
        Some(&admin()),
        Some(&body),
    )
    .await;
    assert_eq!(r.status, axum::http::StatusCode::ACCEPTED);
    stop.cancel();
}
