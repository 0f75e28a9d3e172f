//! The REST contract through `Router::oneshot`: every status code of
//! architecture.md §3, the validation matrix, auth, tokens and reports.
//! Destinations are 127.2.1.x–127.2.7.x, where nothing listens.

mod common;

use axum::http::StatusCode;
use common::*;
use pollen_protocol::api::{AgentTaskState, ProgressReport};
use pollen_protocol::token::TaskClaims;
use pollen_protocol::TaskId;

/// Agents are "reached" on port 1 of 127.2.N.x: connection refused.
const NOWHERE: u16 = 1;

#[tokio::test]
async fn create_query_repost_and_conflict() {
    let s = server(options(NOWHERE));
    let f = write_file(s.dir.path(), "payload.bin", 100_000);
    let body = task_body("t1", &[&f], &["127.2.1.1", "127.2.1.2"]);
    let r = call(
        &s.router,
        "POST",
        "/api/v1/server/tasks",
        Some(&admin()),
        Some(&body),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert_eq!(r.body["id"], "t1");

    let again = call(
        &s.router,
        "POST",
        "/api/v1/server/tasks",
        Some(&admin()),
        Some(&body),
    )
    .await;
    assert_eq!(
        again.status,
        StatusCode::ACCEPTED,
        "identical re-post is idempotent"
    );

    let other = task_body("t1", &[&f], &["127.2.1.1"]);
    let r = call(
        &s.router,
        "POST",
        "/api/v1/server/tasks",
        Some(&admin()),
        Some(&other),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.kind(), "TASK_EXISTED");

    let r = call(
        &s.router,
        "GET",
        "/api/v1/server/tasks/t1",
        Some(&admin()),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let b = &r.body;
    for k in ["id", "status", "startedAt", "finishedAt", "dispatchInfos"] {
        assert!(b.get(k).is_some(), "missing {k}: {b}");
    }
    let status = b["status"].as_str().unwrap();
    assert!(
        ["INIT", "INPROGESS", "FAILED"].contains(&status),
        "{status}"
    );
    let d = &b["dispatchInfos"]["127.2.1.2"];
    for k in [
        "status",
        "percentComplete",
        "startedAt",
        "finishedAt",
        "dispatchFiles",
    ] {
        assert!(d.get(k).is_some(), "missing dispatchInfos.<ip>.{k}: {d}");
    }
    assert_eq!(d["dispatchFiles"][0]["filename"], "payload.bin");
    assert_eq!(b["totalBytes"], 100_000);
}

#[tokio::test]
async fn unknown_tasks_and_cancel() {
    let s = server(options(NOWHERE));
    let r = call(
        &s.router,
        "GET",
        "/api/v1/server/tasks/nope",
        Some(&admin()),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.kind()),
        (StatusCode::BAD_REQUEST, "TASK_NOT_EXISTED")
    );
    let r = call(
        &s.router,
        "DELETE",
        "/api/v1/server/tasks/nope",
        Some(&admin()),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.kind()),
        (StatusCode::BAD_REQUEST, "TASK_NOT_EXISTED")
    );

    let f = write_file(s.dir.path(), "a", 10);
    let body = task_body("c 1", &[&f], &["127.2.2.1"]);
    assert_eq!(
        call(
            &s.router,
            "POST",
            "/api/v1/server/tasks",
            Some(&admin()),
            Some(&body)
        )
        .await
        .status,
        StatusCode::ACCEPTED
    );
    let r = call(
        &s.router,
        "DELETE",
        "/api/v1/server/tasks/c%201",
        Some(&admin()),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = call(
        &s.router,
        "GET",
        "/api/v1/server/tasks/c%201",
        Some(&admin()),
        None,
    )
    .await;
    let status = r.body["status"].as_str().unwrap();
    // It may have failed (agent unreachable) before the cancel landed.
    assert!(status == "CANCELED" || status == "FAILED", "{status}");
    if status == "CANCELED" {
        assert!(r.body["finishedAt"].is_string());
        let d = r.body["dispatchInfos"]["127.2.2.1"]["status"]
            .as_str()
            .unwrap();
        assert!(d == "CANCELED" || d == "FAILED", "{d}");
    }
    // Cancelling again is harmless.
    assert_eq!(
        call(
            &s.router,
            "DELETE",
            "/api/v1/server/tasks/c%201",
            Some(&admin()),
            None
        )
        .await
        .status,
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn credentials_are_required() {
    let s = server(options(NOWHERE));
    for (method, uri) in [
        ("GET", "/api/v1/server/tasks"),
        ("POST", "/api/v1/server/tasks"),
        ("GET", "/api/v1/server/tasks/x"),
        ("DELETE", "/api/v1/server/tasks/x"),
        ("POST", "/api/v1/server/token"),
        ("GET", "/metrics"),
    ] {
        for auth in [
            None,
            Some(basic(USER, "wrong")),
            Some(basic("other", PASSWORD)),
            Some("Bearer nope".to_owned()),
        ] {
            let r = call(&s.router, method, uri, auth.as_deref(), Some("{}")).await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} {auth:?}"
            );
            let www = r.headers.get("www-authenticate").unwrap().to_str().unwrap();
            assert!(www.starts_with("Basic realm=\"pollen\""), "{www}");
            assert_eq!(r.kind(), "UNAUTHORIZED");
        }
    }
    let r = call(&s.router, "GET", "/api/v1/server/pubkey", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r
        .body
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN PUBLIC KEY-----"));
    assert_eq!(r.headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(
        call(&s.router, "GET", "/healthz", None, None).await.status,
        StatusCode::OK
    );
    let r = call(&s.router, "GET", "/metrics", Some(&admin()), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r
        .body
        .as_str()
        .unwrap()
        .contains("pollen_tasks{status=\"INIT\"}"));
    let r = call(&s.router, "GET", "/nowhere", None, None).await;
    assert_eq!((r.status, r.kind()), (StatusCode::NOT_FOUND, "NOT_FOUND"));
}

#[tokio::test]
async fn bearer_token_flow() {
    let s = server(options(NOWHERE));
    let r = call(
        &s.router,
        "POST",
        "/api/v1/server/token",
        Some(&admin()),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let token = r.body["token"].as_str().unwrap().to_owned();
    assert!(r.body["expiresAt"].is_string());
    let bearer = format!("Bearer {token}");
    let r = call(
        &s.router,
        "GET",
        "/api/v1/server/tasks",
        Some(&bearer),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["tasks"].as_array().unwrap().is_empty());
    // A bearer token cannot mint another.
    let r = call(
        &s.router,
        "POST",
        "/api/v1/server/token",
        Some(&bearer),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // A task token is not a user token.
    let task_token = s
        .keys
        .signer
        .sign(&TaskClaims::new("127.2.3.1", "t", &"00".repeat(20), 60))
        .unwrap();
    let r = call(
        &s.router,
        "GET",
        "/api/v1/server/tasks",
        Some(&format!("Bearer {task_token}")),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn list_tasks() {
    let s = server(options(NOWHERE));
    let f = write_file(s.dir.path(), "a", 10);
    for id in ["first", "second"] {
        let body = task_body(id, &[&f], &["127.2.4.1", "127.2.4.2"]);
        assert_eq!(
            call(
                &s.router,
                "POST",
                "/api/v1/server/tasks",
                Some(&admin()),
                Some(&body)
            )
            .await
            .status,
            StatusCode::ACCEPTED
        );
    }
    let r = call(
        &s.router,
        "GET",
        "/api/v1/server/tasks",
        Some(&admin()),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let tasks = r.body["tasks"].as_array().unwrap();
    let ids: Vec<&str> = tasks.iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["first", "second"]);
    assert_eq!(tasks[0]["destCount"], 2);
    assert_eq!(tasks[0]["totalBytes"], 10);
}

#[tokio::test]
async fn validation_matrix() {
    let s = server(options(NOWHERE));
    let dir = s.dir.path();
    let a = write_file(dir, "a", 10);
    std::fs::create_dir(dir.join("sub")).unwrap();
    let sub_a = write_file(&dir.join("sub"), "a", 10);
    let a_s = a.display().to_string();
    let missing = dir.join("missing").display().to_string();
    let cases: Vec<(String, &str, &str)> = vec![
        ("{not json".into(), "BAD_REQUEST", "JSON"),
        ("".into(), "BAD_REQUEST", "empty"),
        (
            r#"{"id":"x","destIPs":["127.2.5.1"]}"#.to_owned(),
            "BAD_REQUEST",
            "dispatchFiles",
        ),
        (
            format!(r#"{{"id":"x","dispatchFiles":["{a_s}"]}}"#),
            "BAD_REQUEST",
            "destIPs",
        ),
        (
            format!(r#"{{"id":"x","dispatchFiles":["{a_s}"],"destIPs":["127.2.5.1"],"bogus":1}}"#),
            "BAD_REQUEST",
            "bogus",
        ),
        (
            format!(r#"{{"id":7,"dispatchFiles":["{a_s}"],"destIPs":["127.2.5.1"]}}"#),
            "BAD_REQUEST",
            "invalid type",
        ),
        (task_body("", &[&a], &["127.2.5.1"]), "BAD_REQUEST", "id"),
        (
            task_body("x", &[std::path::Path::new("rel/a")], &["127.2.5.1"]),
            "BAD_REQUEST",
            "absolute",
        ),
        (
            task_body("x", &[std::path::Path::new(&missing)], &["127.2.5.1"]),
            "FILE_NOT_EXISTED",
            "missing",
        ),
        (
            task_body("x", &[&a], &["not-an-ip"]),
            "BAD_REQUEST",
            "not an IP",
        ),
        (task_body("x", &[&a], &[]), "BAD_REQUEST", "destIPs"),
        (
            task_body("x", &[&a], &["127.2.5.1", "127.2.5.1"]),
            "BAD_REQUEST",
            "twice",
        ),
        (
            task_body("x", &[&a, &sub_a], &["127.2.5.1"]),
            "BAD_REQUEST",
            "\"a\"",
        ),
        (
            task_body("x", &[], &["127.2.5.1"]),
            "BAD_REQUEST",
            "dispatchFiles",
        ),
        (
            format!(
                r#"{{"id":"x","dispatchFiles":["{a_s}"],"destIPs":["127.2.5.1"],"destDir":"../up"}}"#
            ),
            "BAD_REQUEST",
            "destDir",
        ),
        (
            format!(r#"{{"id":"x","dispatchFiles":["{a_s}"],"destIPs":["127.2.5.1"],"speed":-1}}"#),
            "BAD_REQUEST",
            "speed",
        ),
        (
            format!(
                r#"{{"id":"x","dispatchFiles":["{a_s}"],"destIPs":["127.2.5.1"],"pieceLength":12345}}"#
            ),
            "BAD_REQUEST",
            "pieceLength",
        ),
    ];
    for (body, kind, needle) in cases {
        let r = call(
            &s.router,
            "POST",
            "/api/v1/server/tasks",
            Some(&admin()),
            Some(&body),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {:?}", r.body);
        assert_eq!(r.kind(), kind, "{body}: {:?}", r.body);
        assert!(
            r.message().contains(needle),
            "{body}: message {:?} should mention {needle:?}",
            r.message()
        );
    }
    let r = call(
        &s.router,
        "GET",
        "/api/v1/server/tasks",
        Some(&admin()),
        None,
    )
    .await;
    assert!(
        r.body["tasks"].as_array().unwrap().is_empty(),
        "no invalid task was registered"
    );
}

fn report(id: &str, state: AgentTaskState, done: u64, files: Vec<u64>) -> String {
    serde_json::to_string(&ProgressReport {
        task_id: TaskId::new(id).unwrap(),
        state,
        bytes_done: done,
        bytes_total: 10,
        pieces_done: 0,
        pieces_total: 1,
        bytes_from_peers: 0,
        bytes_from_seed: done,
        bytes_uploaded: 0,
        rate_bps: 0,
        pieces_in_flight: 0,
        file_bytes_done: files,
        peers: vec![],
        shunned_peers: vec![],
        error: None,
    })
    .unwrap()
}

#[tokio::test]
async fn reports_need_a_valid_task_token() {
    let s = server(options(NOWHERE));
    let body = report("r1", AgentTaskState::Running, 0, vec![0]);
    let url = "/api/v1/server/reports";
    let r = call(&s.router, "POST", url, None, Some(&body)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    let r = call(&s.router, "POST", url, Some("Bearer garbage"), Some(&body)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let other_key = pollen_server::Keys::generate().unwrap();
    let forged = other_key
        .signer
        .sign(&TaskClaims::new("127.2.6.1", "r1", &"00".repeat(20), 60))
        .unwrap();
    let r = call(
        &s.router,
        "POST",
        url,
        Some(&format!("Bearer {forged}")),
        Some(&body),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "signed by another key");

    let token = |sub: &str, tid: &str| {
        format!(
            "Bearer {}",
            s.keys
                .signer
                .sign(&TaskClaims::new(sub, tid, &"00".repeat(20), 60))
                .unwrap()
        )
    };
    let r = call(
        &s.router,
        "POST",
        url,
        Some(&token("127.2.6.1", "r1")),
        Some(&body),
    )
    .await;
    assert_eq!((r.status, r.kind()), (StatusCode::GONE, "TASK_NOT_EXISTED"));
    let r = call(
        &s.router,
        "POST",
        url,
        Some(&token("127.2.6.1", "other")),
        Some(&body),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "token for another task");

    let f = write_file(s.dir.path(), "a", 10);
    let create = task_body("r1", &[&f], &["127.2.6.1"]);
    assert_eq!(
        call(
            &s.router,
            "POST",
            "/api/v1/server/tasks",
            Some(&admin()),
            Some(&create)
        )
        .await
        .status,
        StatusCode::ACCEPTED
    );
    let r = call(
        &s.router,
        "POST",
        url,
        Some(&token("127.2.6.9", "r1")),
        Some(&body),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "not a destination");
    let r = call(
        &s.router,
        "POST",
        url,
        Some(&token("127.2.6.1", "r1")),
        Some("{bad"),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    call(
        &s.router,
        "DELETE",
        "/api/v1/server/tasks/r1",
        Some(&admin()),
        None,
    )
    .await;
    let r = call(
        &s.router,
        "POST",
        url,
        Some(&token("127.2.6.1", "r1")),
        Some(&body),
    )
    .await;
    assert_eq!(r.status, StatusCode::GONE);
    assert!(
        ["TASK_CANCELED", "TASK_FINISHED"].contains(&r.kind()),
        "{:?}",
        r.body
    );
}

#[tokio::test]
async fn unreachable_agents_fail_with_a_reason() {
    let s = server(options(NOWHERE));
    let f = write_file(s.dir.path(), "a", 70_000);
    let body = task_body("down", &[&f], &["127.2.7.1", "127.2.7.2", "127.2.7.3"]);
    assert_eq!(
        call(
            &s.router,
            "POST",
            "/api/v1/server/tasks",
            Some(&admin()),
            Some(&body)
        )
        .await
        .status,
        StatusCode::ACCEPTED
    );
    let router = s.router.clone();
    wait_until(20, "task FAILED", || {
        let router = router.clone();
        async move {
            call(
                &router,
                "GET",
                "/api/v1/server/tasks/down",
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
        "/api/v1/server/tasks/down",
        Some(&admin()),
        None,
    )
    .await;
    for ip in ["127.2.7.1", "127.2.7.2", "127.2.7.3"] {
        let d = &r.body["dispatchInfos"][ip];
        assert_eq!(d["status"], "FAILED");
        let e = d["error"].as_str().unwrap();
        assert!(e.contains(ip) && e.contains("unreachable"), "{e}");
        assert!(d["finishedAt"].is_string());
    }
    let e = r.body["error"].as_str().unwrap();
    assert!(e.contains("3 of 3 destinations failed"), "{e}");
    assert!(r.body["infoHash"].as_str().unwrap().len() == 40);
    assert!(r.body["finishedAt"].is_string() && r.body["startedAt"].is_string());
    let m = call(&s.router, "GET", "/metrics", Some(&admin()), None).await;
    let text = m.body.as_str().unwrap();
    assert!(text.contains("pollen_tasks{status=\"FAILED\"} 1"), "{text}");
    assert!(
        text.contains("pollen_agent_push_failures_total 3"),
        "{text}"
    );
}
