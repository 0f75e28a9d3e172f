//! End-to-end: GoFD's own README curl calls (create, query, delete with
//! `-l --insecure --basic -u`) work unchanged against a running server:
//! over HTTPS with `net.tls`, as the README shows them, and over plain HTTP.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{random_file, wait_until, Cluster, Opts, PASSWORD, USER};

fn curl(args: &[&str]) -> anyhow::Result<(u16, serde_json::Value)> {
    let out = Command::new("curl")
        .args(args)
        .args(["-sS", "-w", "\n%{http_code}"])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let json = if body.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(body)?
    };
    Ok((code.trim().parse()?, json))
}

/// One of the README's calls: `curl -l --insecure --basic -u <auth> -H
/// "Content-type: application/json" -X <method> [-d <body>] <url>`.
fn readme_curl(
    auth: &str,
    method: &str,
    body: Option<&str>,
    url: &str,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let mut args = vec![
        "-l",
        "--insecure",
        "--basic",
        "-u",
        auth,
        "-H",
        "Content-type: application/json",
        "-X",
        method,
    ];
    if let Some(b) = body {
        args.extend(["-d", b]);
    }
    args.push(url);
    curl(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_gofd_readme_curl_calls_over_https() -> anyhow::Result<()> {
    readme_curl_calls(5, true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_gofd_readme_curl_calls_over_http() -> anyhow::Result<()> {
    readme_curl_calls(9, false).await
}

async fn readme_curl_calls(net: u8, tls: bool) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(120), async {
        let c = Cluster::start(
            net,
            Opts {
                agents: 2,
                tls,
                ..Opts::default()
            },
        )
        .await?;
        let file = c.dir.path().join("src/archlinux.tar.gz");
        random_file(&file, 1_500_000, 5)?;
        let auth = format!("{USER}:{PASSWORD}");
        let url = c.tasks_url();
        assert_eq!(url.starts_with("https://"), tls, "{url}");
        let body = format!(
            r#"{{"id":"1","dispatchFiles":["{}"],"destIPs":["{}","{}"]}}"#,
            file.display(),
            c.agent_ip(0),
            c.agent_ip(1)
        );
        if tls {
            // Without --insecure, curl does not trust the test CA: the TLS is real.
            let e = curl(&["-l", "--basic", "-u", &auth, &url]).unwrap_err();
            assert!(e.to_string().contains("curl failed"), "{e}");
        }
        // GoFD README: create.
        let (code, _) = readme_curl(&auth, "POST", Some(&body), &url)?;
        assert_eq!(code, 202);
        // Re-posting the identical body is idempotent.
        let (code, _) = readme_curl(&auth, "POST", Some(&body), &url)?;
        assert_eq!(code, 202);
        // GoFD README: query, until done.
        let one = format!("{url}/1");
        let done = wait_until("task 1 to complete", Duration::from_secs(60), || async {
            let (code, v) = readme_curl(&auth, "GET", None, &one).ok()?;
            (code == 200 && v["status"] == "COMPLETED").then_some(v)
        })
        .await?;
        assert_eq!(done["id"], "1");
        for ip in [c.agent_ip(0), c.agent_ip(1)] {
            let d = &done["dispatchInfos"][&ip];
            assert_eq!(d["status"], "COMPLETED");
            assert_eq!(d["percentComplete"], 100.0);
            assert_eq!(d["dispatchFiles"][0]["filename"], "archlinux.tar.gz");
            assert!(d["startedAt"].is_string() && d["finishedAt"].is_string());
        }
        assert!(chrono::DateTime::parse_from_rfc3339(
            done["startedAt"].as_str().unwrap_or_default()
        )
        .is_ok());
        // GoFD README: delete.
        let (code, _) = readme_curl(&auth, "DELETE", None, &one)?;
        assert_eq!(code, 202);
        // Unknown ids: 400 TASK_NOT_EXISTED for query and delete.
        let nope = format!("{url}/nope");
        for m in ["GET", "DELETE"] {
            let (code, v) = readme_curl(&auth, m, None, &nope)?;
            assert_eq!(code, 400);
            assert!(v.to_string().contains("TASK_NOT_EXISTED"), "{v}");
        }
        // Same id, different body: 400 TASK_EXISTED.
        let other = body.replace(&format!(r#","{}""#, c.agent_ip(1)), "");
        let (code, v) = readme_curl(&auth, "POST", Some(&other), &url)?;
        assert_eq!(code, 400);
        assert!(v.to_string().contains("TASK_EXISTED"), "{v}");
        // Wrong password: 401.
        let (code, _) = readme_curl(&format!("{USER}:wrong"), "GET", None, &one)?;
        assert_eq!(code, 401);
        anyhow::Ok(())
    })
    .await?
}
