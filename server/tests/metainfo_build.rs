//! The metainfo build runs in the background, after the 202: the REST API
//! keeps answering while a large source is hashed, and a source that
//! vanishes before the build reads it ends the task `FILE_NOT_EXISTED` with
//! a reason.
//! Destinations are 127.2.8.x and 127.2.11.x, where nothing listens.

mod common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::*;

/// Agents are "reached" on port 1 of 127.2.N.x: connection refused.
const NOWHERE: u16 = 1;

/// Longest a GET may take while a build runs. The routes only read the
/// task table, so anything near this means the runtime is blocked.
const ANSWER_BOUND: Duration = Duration::from_millis(500);

/// Calls `uri`, asserting 200 within [`ANSWER_BOUND`]. The test runs on a
/// current-thread runtime, so the window starts with a yield: every other
/// ready task, the task's driver included, runs first, as it would while a
/// real request waited for the runtime. A driver that hashed on the runtime
/// would hold the window for seconds.
async fn timed_get(s: &TestServer, uri: &str) -> Resp {
    let started = Instant::now();
    tokio::task::yield_now().await;
    let r = call(&s.router, "GET", uri, Some(&admin()), None).await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.body);
    assert!(
        took < ANSWER_BOUND,
        "GET {uri} took {took:?} during a build"
    );
    r
}

#[tokio::test]
async fn the_api_answers_while_a_metainfo_is_being_built() {
    let s = server(options(NOWHERE));
    // A 4 GiB sparse file: hashing it takes seconds, far longer than the
    // GETs below, and the DELETE at the end stops the build early.
    let big = s.dir.path().join("big");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    let body = task_body("slow", &[&big], &["127.2.11.1"]);
    let r = call(
        &s.router,
        "POST",
        "/api/v1/server/tasks",
        Some(&admin()),
        Some(&body),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    for _ in 0..5 {
        let one = timed_get(&s, "/api/v1/server/tasks/slow").await;
        // INIT without an info-hash: the metainfo is still being built (the
        // hash is recorded as soon as the build ends).
        assert_eq!(one.body["status"], "INIT", "{}", one.body);
        assert!(one.body["infoHash"].is_null(), "{}", one.body);
        let list = timed_get(&s, "/api/v1/server/tasks").await;
        assert_eq!(list.body["tasks"][0]["id"], "slow");
        assert_eq!(list.body["tasks"][0]["status"], "INIT");
    }
    let r = call(
        &s.router,
        "DELETE",
        "/api/v1/server/tasks/slow",
        Some(&admin()),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.body["status"], "CANCELED");
    // The build notices the cancel between reads, so its blocking job and
    // the driver end well before the whole file could be hashed.
    tokio::time::timeout(Duration::from_secs(30), s.stop())
        .await
        .expect("the cancelled build did not stop");
}

#[tokio::test]
async fn a_vanished_source_ends_the_task_file_not_existed() {
    let s = server(options(NOWHERE));
    let dir = s.dir.path().join("tree");
    std::fs::create_dir(&dir).unwrap();
    // The POST checks that "a" and "b" exist; "b" is removed right after the
    // 202. The build either finds "b" gone when it takes the file lengths,
    // or, if it already had, when it opens "b" after hashing "a" (a 1 GiB
    // sparse file, which takes far longer than the removal).
    std::fs::File::create(dir.join("a"))
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let b = write_file(&dir, "b", 10);
    let body = task_body("v", &[&dir], &["127.2.8.1", "127.2.8.2"]);
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
    std::fs::remove_file(&b).unwrap();
    let router = s.router.clone();
    wait_until(60, "task FILE_NOT_EXISTED", || {
        let router = router.clone();
        async move {
            let r = call(
                &router,
                "GET",
                "/api/v1/server/tasks/v",
                Some(&admin()),
                None,
            )
            .await;
            let status = r.body["status"].as_str().unwrap_or("").to_owned();
            assert!(
                status == "INIT" || status == "FILE_NOT_EXISTED",
                "{}",
                r.body
            );
            status == "FILE_NOT_EXISTED"
        }
    })
    .await;
    let r = call(
        &s.router,
        "GET",
        "/api/v1/server/tasks/v",
        Some(&admin()),
        None,
    )
    .await;
    let e = r.body["error"].as_str().unwrap();
    assert!(e.contains("vanished") && e.contains("tree/b"), "{e}");
    assert!(r.body["finishedAt"].is_string());
    assert!(r.body["infoHash"].is_null());
    for ip in ["127.2.8.1", "127.2.8.2"] {
        let d = &r.body["dispatchInfos"][ip];
        assert_eq!(d["status"], "FILE_NOT_EXISTED", "{d}");
        assert!(d["error"].as_str().unwrap().contains("tree/b"), "{d}");
    }
    let list = call(
        &s.router,
        "GET",
        "/api/v1/server/tasks",
        Some(&admin()),
        None,
    )
    .await;
    let row = &list.body["tasks"][0];
    assert_eq!(row["status"], "FILE_NOT_EXISTED");
    assert_eq!(row["failedCount"], 2);
    let m = call(&s.router, "GET", "/metrics", Some(&admin()), None).await;
    let text = m.body.as_str().unwrap();
    assert!(
        text.contains("pollen_tasks{status=\"FILE_NOT_EXISTED\"} 1"),
        "{text}"
    );
    // Final: a DELETE answers 202 but does not turn it into CANCELED.
    let d = call(
        &s.router,
        "DELETE",
        "/api/v1/server/tasks/v",
        Some(&admin()),
        None,
    )
    .await;
    assert_eq!(d.status, StatusCode::ACCEPTED);
    assert_eq!(d.body["status"], "FILE_NOT_EXISTED");
}
