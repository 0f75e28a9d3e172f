//! End-to-end: real server and agent processes on 127.0.N.x move real files,
//! and every byte is compared at every destination.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{assert_same_file, list_tree, random_file, random_tree, Cluster, Opts};
use pollen_protocol::api::TaskStatus;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_40_mib_odd_sized_file_reaches_four_agents() -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(180), async {
        let c = Cluster::start(1, Opts::default()).await?;
        let src = c.dir.path().join("src");
        // Not a multiple of the 16 KiB block nor of any power-of-two piece.
        let size = 40 * 1024 * 1024 + 12_345;
        let file = src.join("big.bin");
        random_file(&file, size, 1)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640))?;
        let (code, body) = c
            .post_task(&json!({"id": "big", "dispatchFiles": [file], "destIPs": c.agent_ips()}))
            .await?;
        assert_eq!(code, 202, "{body}");
        let info = c.wait_final("big", Duration::from_secs(150)).await?;
        assert_eq!(info.status, TaskStatus::Completed, "{info:?}");
        assert_eq!(info.dispatch_infos.len(), 4);
        for (i, ip) in c.agent_ips().iter().enumerate() {
            let d = &info.dispatch_infos[ip];
            assert_eq!(d.status, TaskStatus::Completed);
            assert_eq!(d.percent_complete, 100.0);
            assert_eq!(d.bytes_done, size as u64);
            assert!(d.started_at.is_some() && d.finished_at.is_some());
            assert_eq!(d.dispatch_files.len(), 1);
            assert_eq!(d.dispatch_files[0].filename, "big.bin");
            assert_same_file(&file, &c.downdir(i).join("big.bin"));
            let mode = std::fs::metadata(c.downdir(i).join("big.bin"))?
                .permissions()
                .mode()
                & 0o7777;
            assert_eq!(mode, 0o640, "the source's file mode is kept");
            // Nothing else is left visible in the download directory.
            let visible: Vec<_> = list_tree(&c.downdir(i))
                .into_iter()
                .filter(|p| !p.starts_with(".pollen"))
                .collect();
            assert_eq!(visible, vec![std::path::PathBuf::from("big.bin")]);
        }
        assert!(info.finished_at.is_some());
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_500_small_files_and_an_empty_one_reach_four_agents() -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(180), async {
        let c = Cluster::start(2, Opts::default()).await?;
        let root = c.dir.path().join("src").join("tree");
        let files = random_tree(&root, 500, 7)?;
        assert_eq!(files.len(), 501);
        let (code, body) = c
            .post_task(&json!({"id": "tree", "dispatchFiles": [root], "destIPs": c.agent_ips()}))
            .await?;
        assert_eq!(code, 202, "{body}");
        let info = c.wait_final("tree", Duration::from_secs(150)).await?;
        assert_eq!(info.status, TaskStatus::Completed, "{info:?}");
        for i in 0..4 {
            let dest = c.downdir(i).join("tree");
            for rel in &files {
                assert_same_file(&root.join(rel), &dest.join(rel));
            }
            assert_eq!(
                list_tree(&dest).len(),
                files.len(),
                "no extra files at {}",
                dest.display()
            );
            let d = &info.dispatch_infos[&c.agent_ip(i)];
            assert_eq!(d.dispatch_files.len(), 501);
            assert!(d
                .dispatch_files
                .iter()
                .all(|f| f.status == TaskStatus::Completed));
            assert!(d
                .dispatch_files
                .iter()
                .any(|f| f.filename == "tree/empty.txt" && f.size == 0));
        }
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g_seven_agents_three_of_them_with_slim_pushes_get_identical_trees() -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(180), async {
        // Seven destinations: four get the whole metainfo, three a slim
        // push, and fetch the info dictionary over the data port.
        let c = Cluster::start(
            14,
            Opts {
                agents: 7,
                slim_pushes_from: 5,
                ..Opts::default()
            },
        )
        .await?;
        let root = c.dir.path().join("src").join("tree");
        let files = random_tree(&root, 300, 12)?;
        let (code, body) = c
            .post_task(&json!({"id": "slim", "dispatchFiles": [root], "destIPs": c.agent_ips()}))
            .await?;
        assert_eq!(code, 202, "{body}");
        let info = c.wait_final("slim", Duration::from_secs(150)).await?;
        assert_eq!(info.status, TaskStatus::Completed, "{info:?}");
        for i in 0..7 {
            let dest = c.downdir(i).join("tree");
            for rel in &files {
                assert_same_file(&root.join(rel), &dest.join(rel));
            }
            assert_eq!(list_tree(&dest).len(), files.len());
        }
        let metrics = c
            .http
            .get(format!("{}/metrics", c.base_url()))
            .basic_auth(common::USER, Some(common::PASSWORD))
            .send()
            .await?
            .text()
            .await?;
        let count = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
        };
        assert_eq!(count("pollen_agent_pushes_total"), Some(7), "{metrics}");
        assert_eq!(
            count("pollen_agent_slim_pushes_total"),
            Some(3),
            "{metrics}"
        );
        anyhow::Ok(())
    })
    .await?
}
