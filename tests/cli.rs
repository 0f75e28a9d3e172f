//! The `pollen` binary's own subcommands, run as a user would: `demo`,
//! `passwd`, `keygen` and `task list` against a real server. Each run has a
//! deadline and is killed if it overstays it.

mod common;

use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::{bin, random_file, Cluster, Opts, PASSWORD, USER};
use pollen_protocol::api::TaskStatus;
use pollen_protocol::token::{Signer, TaskClaims, Verifier, AUD_TASK};
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// The demo's cluster: 127.0.9.1 and agents upwards, as `Cluster::start(9, …)`
/// would place them, so it never meets another test's processes.
const DEMO_NET: u8 = 9;
/// The real server for `task list`.
const LIST_NET: u8 = 10;

/// Runs `pollen args…` with `stdin` (if any) and extra `env`, and returns
/// its output; fails after `timeout`, killing the process.
async fn pollen(
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<Output> {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.args(args)
        .env_remove("POLLEN_PASSWORD")
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("spawning pollen")?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await?;
    }
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => Ok(out?),
        Err(_) => bail!("pollen {args:?} did not exit within {timeout:?}"),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The number right after `prefix` in `line`, e.g. `from seed 123`.
fn number_after(line: &str, prefix: &str) -> Option<u64> {
    let rest = &line[line.find(prefix)? + prefix.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_moves_the_files_and_reports_time_hosts_and_byte_split() -> Result<()> {
    let ip = format!("127.0.{DEMO_NET}.1");
    let out = pollen(
        &[
            "demo",
            "--size",
            "300KiB",
            "--small-files",
            "3",
            "--agents",
            "2",
            "--ip",
            &ip,
        ],
        None,
        &[],
        Duration::from_secs(120),
    )
    .await?;
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        text(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let total = lines
        .iter()
        .find_map(|l| number_after(l, "dispatching "))
        .with_context(|| format!("no task size in:\n{stdout}"))?;
    // 300 KiB plus 3 files of 1 B..=64 KiB.
    assert!((300 * 1024 + 3..=300 * 1024 + 3 * 65536).contains(&total));
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("time: ") && l.ends_with(&format!("{total} bytes to 2 hosts"))),
        "{stdout}"
    );
    for host in [2, 3] {
        let host = format!("127.0.{DEMO_NET}.{host}");
        let mine: Vec<&&str> = lines
            .iter()
            .filter(|l| l.trim_start().starts_with(&host))
            .collect();
        assert!(
            mine.iter()
                .any(|l| l.contains("COMPLETED") && l.contains("100.0%")),
            "{host}: {stdout}"
        );
        assert!(
            mine.iter().any(|l| l.contains("all bytes identical")),
            "{host}: {stdout}"
        );
    }
    let split = lines
        .iter()
        .find(|l| l.starts_with("bytes received by agents: "))
        .with_context(|| format!("no byte split in:\n{stdout}"))?;
    let from_seed = number_after(split, "from seed ").context("from seed")?;
    let from_peers = number_after(split, "from peers ").context("from peers")?;
    // Each agent counts every verified byte once, from whoever sent it.
    assert_eq!(from_seed + from_peers, 2 * total, "{split}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("bytes served by the seed (server's count): ")),
        "{stdout}"
    );
    assert_eq!(lines.last().copied(), Some("demo OK"));
    Ok(())
}

#[tokio::test]
async fn passwd_prints_a_hash_that_the_config_accepts() -> Result<()> {
    let password = "pollen passwd test: ünïcode & spaces";
    let out = pollen(
        &["passwd"],
        Some(&format!("{password}\n")),
        &[],
        Duration::from_secs(30),
    )
    .await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let hash = stdout.trim_end();
    assert_eq!(hash.lines().count(), 1, "{stdout}");
    assert!(pollen_config::verify_password(hash, password), "{hash}");
    assert!(!pollen_config::verify_password(hash, "something else"));
    let yaml = format!("auth:\n  username: ops\n  password: '{hash}'\n");
    let config = pollen_config::ServerConfig::from_yaml(&yaml, "passwd test")?;
    assert_eq!(config.auth.password.as_deref(), Some(hash));

    let empty = pollen(&["passwd"], Some("\n"), &[], Duration::from_secs(30)).await?;
    assert!(!empty.status.success());
    assert!(empty.stdout.is_empty());
    Ok(())
}

#[tokio::test]
async fn keygen_writes_a_matching_key_pair_and_keeps_existing_keys() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (private, public) = (dir.path().join("k.pem"), dir.path().join("k.pub"));
    let (private_s, public_s) = (
        private.to_str().context("utf8")?,
        public.to_str().context("utf8")?,
    );
    let args = ["keygen", "--private", private_s, "--public", public_s];
    let out = pollen(&args, None, &[], Duration::from_secs(30)).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (private_pem, public_pem) = (std::fs::read(&private)?, std::fs::read(&public)?);
    let signer = Signer::from_pem(&private_pem)?;
    let verifier = Verifier::from_pem(&public_pem)?;
    let token = signer.sign(&TaskClaims::new("127.0.0.2", "t", &"ab".repeat(20), 60))?;
    let claims: TaskClaims = verifier.verify(&token, AUD_TASK)?;
    assert_eq!(claims.sub, "127.0.0.2");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&private)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "private key mode {mode:o}");
    }

    let again = pollen(&args, None, &[], Duration::from_secs(30)).await?;
    assert!(!again.status.success(), "keygen overwrote existing keys");
    assert_eq!(std::fs::read(&private)?, private_pem);
    let forced = [&args[..], &["--force"]].concat();
    let out = pollen(&forced, None, &[], Duration::from_secs(30)).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_ne!(std::fs::read(&private)?, private_pem);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_list_shows_the_server_tasks() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(120), async {
        let c = Cluster::start(
            LIST_NET,
            Opts {
                agents: 0,
                ..Opts::default()
            },
        )
        .await?;
        let file = c.dir.path().join("src").join("one.bin");
        random_file(&file, 1000, 10)?;
        // Nothing listens there: the task fails, which makes its row final.
        let ghost = format!("127.0.{LIST_NET}.99");
        let (code, body) = c
            .post_task(&json!({"id": "listed", "dispatchFiles": [file], "destIPs": [ghost]}))
            .await?;
        assert_eq!(code, 202, "{body}");
        let info = c.wait_final("listed", Duration::from_secs(60)).await?;
        assert_eq!(info.status, TaskStatus::Failed);

        let server = c.base_url();
        let args = ["task", "--server", &server, "--user", USER, "list"];
        let out = pollen(
            &args,
            None,
            &[("POLLEN_PASSWORD", PASSWORD)],
            Duration::from_secs(30),
        )
        .await?;
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let mut lines = stdout.lines();
        let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
        assert_eq!(header, ["ID", "STATUS", "HOSTS", "DONE", "FAILED", "BYTES"]);
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(
            rows,
            [["listed", "FAILED", "1", "0", "1", "1000"]],
            "{stdout}"
        );

        let denied = pollen(
            &args,
            None,
            &[("POLLEN_PASSWORD", "wrong")],
            Duration::from_secs(30),
        )
        .await?;
        assert!(!denied.status.success());
        assert!(
            text(&denied.stderr).contains("401"),
            "{}",
            text(&denied.stderr)
        );
        anyhow::Ok(())
    })
    .await
    .context("test timed out")?
}
