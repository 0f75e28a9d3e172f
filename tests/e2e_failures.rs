//! End-to-end: an unreachable destination, and cancel in mid-transfer.

mod common;

use std::time::Duration;

use common::{random_file, wait_until, Cluster, Opts, AGENT_MGNT};
use pollen_protocol::api::TaskStatus;
use pollen_protocol::token::{CommandClaims, Signer};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_unreachable_destination_fails_alone() -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(120), async {
        let c = Cluster::start(
            3,
            Opts {
                agents: 3,
                ..Opts::default()
            },
        )
        .await?;
        let file = c.dir.path().join("src/data.bin");
        random_file(&file, 3 * 1024 * 1024 + 7, 3)?;
        let ghost = format!("127.0.{}.99", c.net);
        let mut dests = c.agent_ips();
        dests.push(ghost.clone());
        let (code, body) = c
            .post_task(&json!({"id": "partial", "dispatchFiles": [file], "destIPs": dests}))
            .await?;
        assert_eq!(code, 202, "{body}");
        let info = c.wait_final("partial", Duration::from_secs(100)).await?;
        assert_eq!(info.status, TaskStatus::Failed, "{info:?}");
        let g = &info.dispatch_infos[&ghost];
        assert_eq!(g.status, TaskStatus::Failed);
        let reason = g.error.as_deref().unwrap_or_default();
        assert!(!reason.is_empty(), "the unreachable host has a reason");
        for (i, ip) in c.agent_ips().iter().enumerate() {
            assert_eq!(
                info.dispatch_infos[ip].status,
                TaskStatus::Completed,
                "{ip}"
            );
            common::assert_same_file(&file, &c.downdir(i).join("data.bin"));
        }
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_cancel_mid_transfer_stops_agents_and_leaves_no_partial_file() -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(120), async {
        // A slow seed keeps the transfer going long enough to cancel it.
        let c = Cluster::start(
            4,
            Opts {
                agents: 3,
                seed_speed: 0.5,
                ..Opts::default()
            },
        )
        .await?;
        let file = c.dir.path().join("src/slow.bin");
        let size = 24 * 1024 * 1024;
        random_file(&file, size, 4)?;
        let (code, body) = c
            .post_task(
                &json!({"id": "cancel me", "dispatchFiles": [file], "destIPs": c.agent_ips()}),
            )
            .await?;
        assert_eq!(code, 202, "{body}");
        wait_until("some progress", Duration::from_secs(60), || async {
            let t = c.get_task("cancel me").await.ok()?;
            t.dispatch_infos
                .values()
                .any(|d| d.bytes_done > 0)
                .then_some(())
        })
        .await?;
        let before = c.get_task("cancel me").await?;
        assert!(
            before
                .dispatch_infos
                .values()
                .all(|d| d.bytes_done < size as u64),
            "still mid-transfer"
        );
        assert_eq!(c.delete_task("cancel me").await?, 202);
        let info = c.wait_final("cancel me", Duration::from_secs(30)).await?;
        assert_eq!(info.status, TaskStatus::Canceled);

        // Each agent forgets the task (signed query answers 404) and removes its staging data.
        let signer = Signer::from_pem(c.private_key_pem.as_bytes())?;
        for (i, ip) in c.agent_ips().iter().enumerate() {
            let path = "/api/v1/agent/tasks/cancel%20me";
            let url = format!("http://{ip}:{AGENT_MGNT}{path}");
            let code = wait_until(
                "the agent to drop the task",
                Duration::from_secs(20),
                || {
                    let (url, http) = (url.clone(), c.http.clone());
                    let jwt = signer.sign(&CommandClaims::new(ip, "GET", path, b"")).ok();
                    async move {
                        let r = http.get(&url).bearer_auth(jwt?).send().await.ok()?;
                        (r.status().as_u16() == 404).then_some(404)
                    }
                },
            )
            .await?;
            assert_eq!(code, 404);
            let dl = c.downdir(i);
            assert!(
                !dl.join("slow.bin").exists(),
                "no partial file at the destination"
            );
            let staging = dl.join(".pollen").join("staging");
            wait_until("staging to be removed", Duration::from_secs(20), || async {
                let empty = std::fs::read_dir(&staging)
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(true);
                empty.then_some(())
            })
            .await?;
        }
        anyhow::Ok(())
    })
    .await?
}
