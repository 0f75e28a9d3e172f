//! End-to-end: wrong or missing credentials are refused on the server's
//! management API, the agents' API and the data ports.

mod common;

use std::time::Duration;

use common::peer::{RawPeer, Seen};
use common::{
    random_file, wait_until, Cluster, Opts, AGENT_DATA, AGENT_MGNT, DATA, PASSWORD, USER,
};
use pollen_protocol::api::TaskStatus;
use pollen_protocol::token::{generate_keypair, CommandClaims, Signer, TaskClaims};
use pollen_protocol::{InfoHash, Message, PieceIndex};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g_wrong_or_missing_credentials_are_refused_everywhere() -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(120), async {
        let c = Cluster::start(
            6,
            Opts {
                agents: 2,
                seed_speed: 0.25,
                ..Opts::default()
            },
        )
        .await?;

        // --- Server management API: basic auth.
        let url = c.tasks_url();
        for (user, pass) in [
            (None, None),
            (Some(USER), Some("wrong")),
            (Some("intruder"), Some(PASSWORD)),
        ] {
            let mut req = c.http.get(&url);
            if let Some(u) = user {
                req = req.basic_auth(u, pass);
            }
            let r = req.send().await?;
            assert_eq!(r.status().as_u16(), 401, "{user:?}");
            let challenge = r
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap_or("").to_owned());
            assert!(
                challenge.is_some_and(|v| v.starts_with("Basic realm=")),
                "WWW-Authenticate"
            );
        }
        assert_eq!(
            c.http
                .get(&url)
                .basic_auth(USER, Some(PASSWORD))
                .send()
                .await?
                .status()
                .as_u16(),
            200
        );

        // A task in progress, so the data ports have something to guard.
        let file = c.dir.path().join("src/guarded.bin");
        random_file(&file, 8 * 1024 * 1024, 6)?;
        let (code, _) = c
            .post_task(&json!({"id": "guarded", "dispatchFiles": [file], "destIPs": c.agent_ips()}))
            .await?;
        assert_eq!(code, 202);
        // Pushed to every agent, so that the data ports know the task.
        let ih: InfoHash = wait_until(
            "the task to reach the agents",
            Duration::from_secs(30),
            || async {
                let t = c.get_task("guarded").await.ok()?;
                let pushed = t
                    .dispatch_infos
                    .values()
                    .all(|d| d.status != TaskStatus::Init);
                if pushed {
                    t.info_hash
                } else {
                    None
                }
            },
        )
        .await?;

        // --- Agent management API: server-signed commands only.
        let agent = c.agent_ip(0);
        let path = "/api/v1/agent/tasks";
        let agent_url = format!("http://{agent}:{AGENT_MGNT}{path}");
        let body = br#"{"taskId":"x"}"#.to_vec();
        let (other_private, _) = generate_keypair()?;
        let real = Signer::from_pem(c.private_key_pem.as_bytes())?;
        let forged = Signer::from_pem(other_private.as_bytes())?;
        let attempts = [
            ("no token", None),
            ("garbage", Some("not-a-jwt".to_owned())),
            (
                "other key",
                Some(forged.sign(&CommandClaims::new(&agent, "POST", path, &body))?),
            ),
            (
                "other agent",
                Some(real.sign(&CommandClaims::new(&c.agent_ip(1), "POST", path, &body))?),
            ),
            (
                "other body",
                Some(real.sign(&CommandClaims::new(&agent, "POST", path, b"{}"))?),
            ),
            (
                "other method",
                Some(real.sign(&CommandClaims::new(&agent, "DELETE", path, &body))?),
            ),
        ];
        for (what, token) in attempts {
            let mut req = c
                .http
                .post(&agent_url)
                .header("content-type", "application/json")
                .body(body.clone());
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            assert_eq!(
                req.send().await?.status().as_u16(),
                401,
                "agent API accepted {what}"
            );
        }
        // Control: a correctly signed (if useless) command passes auth and fails validation instead.
        let ok = real.sign(&CommandClaims::new(&agent, "POST", path, &body))?;
        let r = c
            .http
            .post(&agent_url)
            .header("content-type", "application/json")
            .bearer_auth(ok)
            .body(body.clone())
            .send()
            .await?;
        assert_eq!(
            r.status().as_u16(),
            400,
            "signed command reaches validation"
        );

        // --- Data ports (agent and seed): no byte before a valid token.
        let me = format!("127.0.{}.50", c.net);
        let targets = [
            (format!("{agent}:{AGENT_DATA}").parse()?, agent.clone()),
            (
                format!("{}:{DATA}", c.server_ip()).parse()?,
                "seed".to_owned(),
            ),
        ];
        // The genuine token from the right address gets an answer. Checked
        // before the refusals too: a port that does not know the task yet
        // (its push still on the way) closes for that reason alone.
        let served = |addr: std::net::SocketAddr| {
            let me = me.clone();
            let token = real.sign(&TaskClaims::new(&me, "guarded", &ih.to_hex(), 600));
            async move {
                let mut p = RawPeer::connect(&me, addr).await?;
                p.send_handshake(ih).await?;
                p.send(&Message::Auth(token?)).await?;
                anyhow::Ok(
                    p.read_handshake(Duration::from_secs(5))
                        .await?
                        .map(|h| h.info_hash),
                )
            }
        };
        for (addr, name) in targets {
            assert_eq!(
                served(addr).await?,
                Some(ih),
                "{name}: valid token is served before the refusals"
            );
            // No AUTH: a REQUEST straight after the handshake.
            let mut p = RawPeer::connect(&me, addr).await?;
            p.send_handshake(ih).await?;
            p.send(&Message::Request {
                index: PieceIndex(0),
                begin: 0,
                length: 16384,
            })
            .await?;
            assert_eq!(
                p.observe(Duration::from_secs(5)).await,
                Seen::Closed,
                "{name}: no auth"
            );
            // Garbage token.
            let mut p = RawPeer::connect(&me, addr).await?;
            p.send_handshake(ih).await?;
            p.send(&Message::Auth("garbage".into())).await?;
            assert_eq!(
                p.observe(Duration::from_secs(5)).await,
                Seen::Closed,
                "{name}: garbage token"
            );
            // A token signed by another key.
            let mut p = RawPeer::connect(&me, addr).await?;
            p.send_handshake(ih).await?;
            p.send(&Message::Auth(forged.sign(&TaskClaims::new(
                &me,
                "guarded",
                &ih.to_hex(),
                600,
            ))?))
            .await?;
            assert_eq!(
                p.observe(Duration::from_secs(5)).await,
                Seen::Closed,
                "{name}: forged token"
            );
            // A genuine token, presented from the wrong address.
            let mut p = RawPeer::connect(&me, addr).await?;
            p.send_handshake(ih).await?;
            let stolen = real.sign(&TaskClaims::new(
                &format!("127.0.{}.51", c.net),
                "guarded",
                &ih.to_hex(),
                600,
            ))?;
            p.send(&Message::Auth(stolen)).await?;
            assert_eq!(
                p.observe(Duration::from_secs(5)).await,
                Seen::Closed,
                "{name}: stolen token"
            );
            // Garbage instead of a handshake.
            let mut p = RawPeer::connect(&me, addr).await?;
            p.send_raw(&[0xff; 68]).await?;
            assert_eq!(
                p.observe(Duration::from_secs(5)).await,
                Seen::Closed,
                "{name}: bad handshake"
            );
            // ... and still after them: the task was live throughout.
            assert_eq!(
                served(addr).await?,
                Some(ih),
                "{name}: valid token is served after the refusals"
            );
        }
        anyhow::Ok(())
    })
    .await?
}
