//! End-to-end swarm tests: a real seed and real agents (`pollen_agent::run`)
//! on loopback addresses 127.1.N.x, with the test playing the server: it
//! signs tokens, builds the metainfo, pushes tasks and sinks reports.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Json;
use pollen_agent::connection::{Connection, READ_TIMEOUT};
use pollen_agent::seed::{Seed, SeedConfig, SeedTask};
use pollen_config::AgentConfig;
use pollen_protocol::api::{pack_info, AgentTask, AgentTaskState, ProgressReport};
use pollen_protocol::token::{CommandClaims, Signer, TaskClaims, Verifier, SEED_SUBJECT};
use pollen_protocol::{FileEntry, Handshake, Info, InfoHash, Message, PeerId, TaskId};
use rand::RngCore;
use sha1::{Digest, Sha1};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

const MGNT_PORT: u16 = 45010;
const DATA_PORT: u16 = 45011;
const TTL: i64 = 7 * 24 * 3600;

/// Polls `cond` every 50 ms until it holds or `deadline` passes.
async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut cond: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if cond().await {
            return Ok(());
        }
        if tokio::time::Instant::now() > end {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The test's stand-in for the server.
struct Server {
    signer: Signer,
    verifier: Verifier,
    pubkey_path: PathBuf,
    reports: Arc<Mutex<HashMap<String, ProgressReport>>>,
    /// When set, the sink answers 410 as for a deleted task.
    gone: Arc<std::sync::atomic::AtomicBool>,
    report_url: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(ip: IpAddr) -> Result<Self> {
        let (private, public) = pollen_protocol::token::generate_keypair()?;
        let dir = tempfile::tempdir()?;
        let pubkey_path = dir.path().join("server.pub");
        std::fs::write(&pubkey_path, &public)?;
        let verifier = Verifier::from_pem(public.as_bytes())?;
        let reports: Arc<Mutex<HashMap<String, ProgressReport>>> = Arc::default();
        let gone: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let (sink_reports, sink_verifier, sink_gone) =
            (reports.clone(), verifier.clone(), gone.clone());
        let app = axum::Router::new().route(
            "/api/v1/server/reports",
            post(
                move |headers: HeaderMap, Json(report): Json<ProgressReport>| {
                    let (reports, verifier) = (sink_reports.clone(), sink_verifier.clone());
                    let gone = sink_gone.load(std::sync::atomic::Ordering::SeqCst);
                    async move {
                        let token = headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.strip_prefix("Bearer "))
                            .unwrap_or_default();
                        match verifier.verify::<TaskClaims>(token, pollen_protocol::token::AUD_TASK)
                        {
                            Ok(_) if gone => StatusCode::GONE,
                            Ok(c) if c.tid == report.task_id.as_str() => {
                                reports.lock().unwrap().insert(c.sub, report);
                                StatusCode::NO_CONTENT
                            }
                            _ => StatusCode::UNAUTHORIZED,
                        }
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind((ip, 0)).await?;
        let report_url = format!("http://{}/api/v1/server/reports", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            signer: Signer::from_pem(private.as_bytes())?,
            verifier,
            pubkey_path,
            reports,
            gone,
            report_url,
            http: reqwest::Client::new(),
            _dir: dir,
        })
    }

    fn task_token(&self, sub: &str, task: &str, ih: &InfoHash) -> String {
        self.signer
            .sign(&TaskClaims::new(sub, task, &ih.to_hex(), TTL))
            .unwrap()
    }

    async fn command(
        &self,
        ip: IpAddr,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<reqwest::Response> {
        let jwt = self
            .signer
            .sign(&CommandClaims::new(&ip.to_string(), method, path, &body))?;
        let url = format!("http://{ip}:{MGNT_PORT}{path}");
        let req = match method {
            "POST" => self
                .http
                .post(url)
                .header("content-type", "application/json")
                .body(body),
            "DELETE" => self.http.delete(url),
            _ => self.http.get(url),
        };
        Ok(req.bearer_auth(jwt).send().await?)
    }

    fn report(&self, ip: IpAddr) -> Option<ProgressReport> {
        self.reports.lock().unwrap().get(&ip.to_string()).cloned()
    }
}

/// A task's files on the "server" and its metainfo.
struct Content {
    info: Info,
    info_hash: InfoHash,
    sources: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

fn make_content(files: &[(&str, usize)], piece_length: u64) -> Result<Content> {
    let dir = tempfile::tempdir()?;
    let mut stream = Vec::new();
    let mut entries = Vec::new();
    let mut sources = Vec::new();
    for (path, len) in files {
        let mut data = vec![0u8; *len];
        rand::thread_rng().fill_bytes(&mut data);
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().context("parent")?)?;
        std::fs::write(&p, &data)?;
        stream.extend_from_slice(&data);
        entries.push(FileEntry {
            length: *len as u64,
            path: path.split('/').map(str::to_owned).collect(),
            mode: 0o640,
        });
        sources.push(p);
    }
    let pieces = stream
        .chunks(piece_length as usize)
        .flat_map(|c| <[u8; 20]>::from(Sha1::digest(c)))
        .collect();
    let info = Info {
        name: "t".into(),
        piece_length,
        pieces,
        files: entries,
    };
    let info_hash = info.info_hash()?;
    Ok(Content {
        info,
        info_hash,
        sources,
        _dir: dir,
    })
}

struct TestAgent {
    ip: IpAddr,
    downdir: tempfile::TempDir,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<pollen_agent::Result<()>>,
}

impl TestAgent {
    fn data_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, DATA_PORT)
    }
}

async fn start_agent(server: &Server, ip: IpAddr) -> Result<TestAgent> {
    let downdir = tempfile::tempdir()?;
    let mut config = AgentConfig {
        downdir: downdir.path().to_path_buf(),
        ..AgentConfig::default()
    };
    config.net.ip = Some(ip);
    config.net.mgnt_port = MGNT_PORT;
    config.net.data_port = DATA_PORT;
    config.server.public_key = Some(server.pubkey_path.clone());
    config.validate()?;
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(pollen_agent::run(config, shutdown.clone()));
    let http = server.http.clone();
    wait_until("the agent's health check", Duration::from_secs(10), || {
        let http = http.clone();
        async move {
            http.get(format!("http://{ip}:{MGNT_PORT}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await?;
    Ok(TestAgent {
        ip,
        downdir,
        shutdown,
        handle,
    })
}

async fn start_seed(
    server: &Server,
    ip: IpAddr,
    content: &Content,
    task: &str,
    limit: Option<u64>,
) -> Result<Seed> {
    let seed = Seed::start(
        SeedConfig {
            listen: SocketAddr::new(ip, 0),
            upload_bytes_per_sec: limit,
            cache_bytes: 4 * 1024 * 1024,
            verifier: server.verifier.clone(),
        },
        CancellationToken::new(),
    )
    .await?;
    seed.add_task(SeedTask {
        task_id: TaskId::new(task).unwrap(),
        info: Arc::new(content.info.clone()),
        info_hash: content.info_hash,
        info_bytes: content.info.to_bencode()?.into(),
        sources: content.sources.clone(),
        token: server.task_token(SEED_SUBJECT, task, &content.info_hash),
        speed_bytes_per_sec: None,
    });
    Ok(seed)
}

async fn push(
    server: &Server,
    content: &Content,
    task: &str,
    ip: IpAddr,
    peers: Vec<SocketAddr>,
    seed: SocketAddr,
) -> Result<()> {
    push_from(server, content, task, ip, peers, seed, None).await
}

/// Pushes the task; with `info_from`, a slim push: no info dictionary, the
/// agent fetches it from those addresses and then the seed.
async fn push_from(
    server: &Server,
    content: &Content,
    task: &str,
    ip: IpAddr,
    peers: Vec<SocketAddr>,
    seed: SocketAddr,
    info_from: Option<Vec<SocketAddr>>,
) -> Result<()> {
    let (info, info_encoding) = match info_from {
        Some(_) => (String::new(), Default::default()),
        None => pack_info(&content.info.to_bencode()?),
    };
    let spec = AgentTask {
        task_id: TaskId::new(task).unwrap(),
        info,
        info_encoding,
        info_hash: content.info_hash,
        token: server.task_token(&ip.to_string(), task, &content.info_hash),
        peers,
        seed,
        report_url: server.report_url.clone(),
        speed_bytes_per_sec: None,
        dest_dir: Some("out".into()),
        info_from: info_from.unwrap_or_default(),
    };
    let resp = server
        .command(
            ip,
            "POST",
            "/api/v1/agent/tasks",
            serde_json::to_vec(&spec)?,
        )
        .await?;
    if resp.status() != StatusCode::ACCEPTED {
        bail!("push to {ip}: {} {}", resp.status(), resp.text().await?);
    }
    Ok(())
}

async fn wait_completed(server: &Server, agents: &[TestAgent], deadline: Duration) -> Result<()> {
    wait_until("every agent to complete", deadline, || async {
        agents.iter().all(|a| {
            server
                .report(a.ip)
                .is_some_and(|r| r.state == AgentTaskState::Completed)
        })
    })
    .await
    .with_context(|| {
        let states: Vec<_> = agents.iter().map(|a| (a.ip, server.report(a.ip))).collect();
        format!("reports: {states:#?}")
    })
}

fn check_bytes(content: &Content, downdir: &Path) -> Result<()> {
    for (entry, src) in content.info.files.iter().zip(&content.sources) {
        let got = std::fs::read(downdir.join("out").join(entry.relative_path()))
            .with_context(|| format!("reading {}", entry.display_path()))?;
        if got != std::fs::read(src)? {
            bail!("{} differs from its source", entry.display_path());
        }
    }
    Ok(())
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn ip(n: u8, x: u8) -> IpAddr {
    IpAddr::from([127, 1, n, x])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_and_three_agents_distribute_identical_bytes() -> Result<()> {
    init_tracing();
    tokio::time::timeout(Duration::from_secs(120), async {
        let server = Server::start(ip(1, 1)).await?;
        let content = make_content(
            &[
                ("a.bin", 1_500_000),
                ("empty.txt", 0),
                ("dir/sub/b.bin", 700_001),
                ("dir/c.bin", 40_000),
            ],
            32 * 1024,
        )?;
        let seed = start_seed(&server, ip(1, 1), &content, "t1", Some(3 * 1024 * 1024)).await?;
        let mut agents = Vec::new();
        for x in 2..=4 {
            agents.push(start_agent(&server, ip(1, x)).await?);
        }
        for a in &agents {
            let peers = agents
                .iter()
                .filter(|b| b.ip != a.ip)
                .map(TestAgent::data_addr)
                .collect();
            push(&server, &content, "t1", a.ip, peers, seed.local_addr()).await?;
        }
        // Idempotent re-push.
        push(
            &server,
            &content,
            "t1",
            agents[0].ip,
            vec![],
            seed.local_addr(),
        )
        .await?;
        wait_completed(&server, &agents, Duration::from_secs(90)).await?;
        let mut from_peers = 0;
        for a in &agents {
            check_bytes(&content, a.downdir.path())?;
            let r = server.report(a.ip).context("report")?;
            assert_eq!(r.bytes_done, r.bytes_total);
            assert_eq!(
                r.file_bytes_done,
                content
                    .info
                    .files
                    .iter()
                    .map(|f| f.length)
                    .collect::<Vec<_>>()
            );
            from_peers += r.bytes_from_peers;
            eprintln!(
                "{}: from peers {} from seed {} uploaded {}",
                a.ip, r.bytes_from_peers, r.bytes_from_seed, r.bytes_uploaded
            );
        }
        eprintln!(
            "seed uploaded {} of {}",
            seed.uploaded_bytes(&content.info_hash),
            content.info.total_length()
        );
        assert!(from_peers > 0, "agents must exchange pieces");
        assert!(seed.uploaded_bytes(&content.info_hash) > 0);

        // GET needs a command token; DELETE removes the task and its staging.
        let a = &agents[0];
        let path = "/api/v1/agent/tasks/t1";
        let r: ProgressReport = server
            .command(a.ip, "GET", path, vec![])
            .await?
            .json()
            .await?;
        assert_eq!(r.state, AgentTaskState::Completed);
        assert_eq!(
            server
                .http
                .get(format!("http://{}:{MGNT_PORT}{path}", a.ip))
                .send()
                .await?
                .status(),
            401
        );
        assert_eq!(
            server.command(a.ip, "DELETE", path, vec![]).await?.status(),
            StatusCode::ACCEPTED
        );
        assert_eq!(
            server.command(a.ip, "GET", path, vec![]).await?.status(),
            StatusCode::NOT_FOUND
        );
        assert!(!a
            .downdir
            .path()
            .join(".pollen/staging")
            .join(content.info_hash.to_hex())
            .exists());
        check_bytes(&content, a.downdir.path())?;

        for a in agents {
            a.shutdown.cancel();
            a.handle.await??;
        }
        Ok(())
    })
    .await?
}

/// Reads from `conn`'s socket until EOF and returns how many bytes arrived.
async fn bytes_until_close(stream: &mut tokio::net::TcpStream) -> usize {
    let mut buf = [0u8; 1024];
    let mut total = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(15), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return total,
            Ok(Ok(n)) => total += n,
            Err(_) => return usize::MAX,
        }
    }
}

async fn raw_attempt(
    from: IpAddr,
    to: SocketAddr,
    ih: InfoHash,
    auth: Option<Message>,
) -> Result<usize> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let mut stream = socket.connect(to).await?;
    let mut out = bytes::BytesMut::new();
    out.extend_from_slice(&Handshake::new(ih, PeerId::random()).to_bytes());
    if let Some(m) = auth {
        m.encode(&mut out);
    }
    tokio::io::AsyncWriteExt::write_all(&mut stream, &out).await?;
    Ok(bytes_until_close(&mut stream).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_or_missing_token_is_closed_without_a_byte() -> Result<()> {
    init_tracing();
    tokio::time::timeout(Duration::from_secs(60), async {
        let server = Server::start(ip(3, 1)).await?;
        let content = make_content(&[("f", 100_000)], 16 * 1024)?;
        let seed = start_seed(&server, ip(3, 1), &content, "t3", None).await?;
        let agent = start_agent(&server, ip(3, 2)).await?;
        push(&server, &content, "t3", agent.ip, vec![], seed.local_addr()).await?;
        let ih = content.info_hash;
        let (other_private, _) = pollen_protocol::token::generate_keypair()?;
        let forged = Signer::from_pem(other_private.as_bytes())?.sign(&TaskClaims::new(
            "127.1.3.9",
            "t3",
            &ih.to_hex(),
            TTL,
        ))?;
        let wrong_sub = server.task_token("127.1.3.8", "t3", &ih);
        let wrong_ih = server.task_token("127.1.3.9", "t3", &InfoHash([7; 20]));
        let cases = [
            ("missing", Some(Message::Bitfield(vec![0; 7].into()))),
            ("silent", None),
            ("forged", Some(Message::Auth(forged))),
            ("garbage", Some(Message::Auth("not.a.jwt".into()))),
            ("wrong subject", Some(Message::Auth(wrong_sub))),
            ("wrong info-hash", Some(Message::Auth(wrong_ih))),
        ];
        let targets = [agent.data_addr(), seed.local_addr()];
        // All at once: the silent one waits out the 10 s AUTH timeout.
        let attempts = targets.iter().flat_map(|&target| {
            cases.iter().cloned().map(move |(what, auth)| async move {
                (what, target, raw_attempt(ip(3, 9), target, ih, auth).await)
            })
        });
        for (what, target, n) in futures::future::join_all(attempts).await {
            let n = n?;
            assert_eq!(n, 0, "{what} token to {target}: got {n} bytes");
        }
        for target in targets {
            // Unknown info-hash.
            let good = server.task_token("127.1.3.9", "t3", &ih);
            assert_eq!(
                raw_attempt(
                    ip(3, 9),
                    target,
                    InfoHash([1; 20]),
                    Some(Message::Auth(good.clone()))
                )
                .await?,
                0
            );
            // A valid token gets an answer.
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(ip(3, 9), 0))?;
            let mut conn = Connection::new(socket.connect(target).await?)?;
            conn.write_handshake(&Handshake::new(ih, PeerId::random()))
                .await?;
            conn.write_message(&Message::Auth(good)).await?;
            assert_eq!(conn.read_handshake(READ_TIMEOUT).await?.info_hash, ih);
            assert!(matches!(
                conn.read_message(READ_TIMEOUT).await?,
                Some(Message::Auth(_))
            ));
        }
        agent.shutdown.cancel();
        agent.handle.await??;
        Ok(())
    })
    .await?
}

/// The opening of a fake peer: reads the dialer's handshake and AUTH
/// (without checking it), answers with its own handshake, and queues its
/// AUTH. `None` when the dialer went away.
async fn fake_greeting(
    stream: tokio::net::TcpStream,
    ih: InfoHash,
    token: String,
) -> Option<Connection> {
    let mut conn = Connection::new(stream).ok()?;
    conn.read_handshake(READ_TIMEOUT).await.ok()?;
    let _ = conn.read_message(READ_TIMEOUT).await;
    let _ = conn
        .write_handshake(&Handshake::new(ih, PeerId::random()))
        .await;
    conn.queue(&Message::Auth(token));
    Some(conn)
}

/// A peer that authenticates properly, claims every piece, and serves garbage.
async fn run_hostile(
    server: &Server,
    at: SocketAddr,
    content: &Content,
    task: &str,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(at).await?;
    let token = server.task_token(&at.ip().to_string(), task, &content.info_hash);
    let ih = content.info_hash;
    let n = content.info.lengths(16 * 1024)?.num_pieces();
    Ok(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let token = token.clone();
            tokio::spawn(async move {
                let Some(mut conn) = fake_greeting(stream, ih, token).await else {
                    return;
                };
                let full = pollen_protocol::bitfield::to_bytes(&pollen_protocol::bitfield::full(n));
                conn.queue(&Message::Bitfield(full.into()));
                conn.queue(&Message::Unchoke);
                let _ = conn.flush().await;
                while let Ok(Some(m)) = conn.read_message(READ_TIMEOUT).await {
                    if let Message::Request {
                        index,
                        begin,
                        length,
                    } = m
                    {
                        let data = vec![0xAA; length as usize].into();
                        if conn
                            .write_message(&Message::Piece { index, begin, data })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_peer_is_shunned_and_agents_still_finish() -> Result<()> {
    init_tracing();
    tokio::time::timeout(Duration::from_secs(120), async {
        let server = Server::start(ip(2, 1)).await?;
        let content = make_content(&[("x.bin", 900_000), ("y.bin", 123_457)], 16 * 1024)?;
        let seed = start_seed(&server, ip(2, 1), &content, "t2", Some(2 * 1024 * 1024)).await?;
        let hostile_addr = SocketAddr::new(ip(2, 9), DATA_PORT);
        let hostile = run_hostile(&server, hostile_addr, &content, "t2").await?;
        let agents = vec![
            start_agent(&server, ip(2, 2)).await?,
            start_agent(&server, ip(2, 3)).await?,
        ];
        for a in &agents {
            let mut peers: Vec<SocketAddr> = agents
                .iter()
                .filter(|b| b.ip != a.ip)
                .map(TestAgent::data_addr)
                .collect();
            peers.push(hostile_addr);
            push(&server, &content, "t2", a.ip, peers, seed.local_addr()).await?;
        }
        wait_completed(&server, &agents, Duration::from_secs(90)).await?;
        for a in &agents {
            check_bytes(&content, a.downdir.path())?;
            let r = server.report(a.ip).context("report")?;
            assert_eq!(r.shunned_peers, vec![ip(2, 9).to_string()], "{:?}", r);
        }
        hostile.abort();
        for a in agents {
            a.shutdown.cancel();
            a.handle.await??;
        }
        Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_answered_with_410_stops_the_task_and_cleans_staging() -> Result<()> {
    init_tracing();
    tokio::time::timeout(Duration::from_secs(60), async {
        let server = Server::start(ip(5, 1)).await?;
        let content = make_content(&[("f", 300_000)], 16 * 1024)?;
        let agent = start_agent(&server, ip(5, 2)).await?;
        // No seed listens there: the task stays running.
        let nowhere = SocketAddr::new(ip(5, 1), 9);
        push(&server, &content, "t5", agent.ip, vec![], nowhere).await?;
        wait_until("a first report", Duration::from_secs(10), || async {
            server
                .report(agent.ip)
                .is_some_and(|r| r.state == AgentTaskState::Running)
        })
        .await?;
        let staging = agent
            .downdir
            .path()
            .join(".pollen/staging")
            .join(content.info_hash.to_hex());
        assert!(staging.exists());
        server.gone.store(true, std::sync::atomic::Ordering::SeqCst);
        let path = "/api/v1/agent/tasks/t5";
        wait_until(
            "the task to be dropped",
            Duration::from_secs(10),
            || async {
                server
                    .command(agent.ip, "GET", path, vec![])
                    .await
                    .is_ok_and(|r| r.status() == StatusCode::NOT_FOUND)
            },
        )
        .await?;
        wait_until("staging removal", Duration::from_secs(10), || async {
            !staging.exists()
        })
        .await?;
        agent.shutdown.cancel();
        agent.handle.await??;
        Ok(())
    })
    .await?
}

/// A larger swarm for manual evaluation (`cargo test -- --ignored large`):
/// 8 agents, 64 MiB, the seed capped at 50 Mbit/s as in the benchmark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow; run by hand to look at seed egress and timing"]
async fn large_swarm_keeps_seed_egress_low() -> Result<()> {
    init_tracing();
    tokio::time::timeout(Duration::from_secs(300), async {
        let server = Server::start(ip(6, 1)).await?;
        let content = make_content(&[("big.bin", 64 << 20)], 64 * 1024)?;
        let seed_rate = 50_000_000 / 8;
        let seed = start_seed(&server, ip(6, 1), &content, "t6", Some(seed_rate)).await?;
        let mut agents = Vec::new();
        for x in 2..=9 {
            agents.push(start_agent(&server, ip(6, x)).await?);
        }
        let started = std::time::Instant::now();
        for a in &agents {
            let peers = agents
                .iter()
                .filter(|b| b.ip != a.ip)
                .map(TestAgent::data_addr)
                .collect();
            push(&server, &content, "t6", a.ip, peers, seed.local_addr()).await?;
        }
        wait_completed(&server, &agents, Duration::from_secs(280)).await?;
        let took = started.elapsed();
        let total = content.info.total_length();
        let egress = seed.uploaded_bytes(&content.info_hash) as f64 / total as f64;
        let bound = total as f64 / seed_rate as f64;
        eprintln!("took {took:?} (seed-bound {bound:.1}s), seed egress {egress:.3} F");
        for a in &agents {
            check_bytes(&content, a.downdir.path())?;
        }
        for a in agents {
            a.shutdown.cancel();
            a.handle.await??;
        }
        Ok(())
    })
    .await?
}

/// The same content dispatched again under a new id, right after the first
/// task completed (the agent still serves it until the server stops it):
/// the new task replaces the finished one instead of failing with a
/// conflict, and the seed keeps serving the new task when the old one is
/// taken off it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_content_under_a_new_id_replaces_a_finished_task() -> Result<()> {
    init_tracing();
    tokio::time::timeout(Duration::from_secs(120), async {
        let server = Server::start(ip(8, 1)).await?;
        let content = make_content(&[("again.bin", 300_000)], 32 * 1024)?;
        let seed = start_seed(&server, ip(8, 1), &content, "first", None).await?;
        let agent = start_agent(&server, ip(8, 2)).await?;
        let agents = [agent];
        push(
            &server,
            &content,
            "first",
            agents[0].ip,
            vec![],
            seed.local_addr(),
        )
        .await?;
        wait_completed(&server, &agents, Duration::from_secs(60)).await?;
        let first = TaskId::new("first").unwrap();
        let second = TaskId::new("second").unwrap();
        let sent = seed.uploaded_bytes(&content.info_hash);
        assert!(
            sent >= content.info.total_length(),
            "one agent: all from the seed"
        );
        assert_eq!(seed.task_uploaded(&first, &content.info_hash), Some(sent));
        assert_eq!(seed.task_uploaded(&second, &content.info_hash), None);
        // The server registers the new task with the seed, then retires the
        // old one: that must not take the new one off.
        seed.add_task(SeedTask {
            task_id: TaskId::new("second").unwrap(),
            info: Arc::new(content.info.clone()),
            info_hash: content.info_hash,
            info_bytes: content.info.to_bencode().unwrap().into(),
            sources: content.sources.clone(),
            token: server.task_token(SEED_SUBJECT, "second", &content.info_hash),
            speed_bytes_per_sec: None,
        });
        assert_eq!(
            seed.remove_task(&first, &content.info_hash),
            None,
            "the first task was no longer served"
        );
        // The count belongs to the task now served, not to the first one.
        assert_eq!(seed.task_uploaded(&first, &content.info_hash), None);
        assert_eq!(seed.task_uploaded(&second, &content.info_hash), Some(0));
        std::fs::remove_dir_all(agents[0].downdir.path().join("out"))?;
        push(
            &server,
            &content,
            "second",
            agents[0].ip,
            vec![],
            seed.local_addr(),
        )
        .await?;
        wait_until(
            "the second task to complete",
            Duration::from_secs(60),
            || async {
                server.report(agents[0].ip).is_some_and(|r| {
                    r.task_id.as_str() == "second" && r.state == AgentTaskState::Completed
                })
            },
        )
        .await?;
        check_bytes(&content, agents[0].downdir.path())?;
        // Removing the task hands back its final count, which stays known.
        let second_sent = seed
            .task_uploaded(&second, &content.info_hash)
            .expect("the second task is served");
        assert!(second_sent >= content.info.total_length());
        assert_eq!(
            seed.remove_task(&second, &content.info_hash),
            Some(second_sent)
        );
        assert_eq!(seed.task_uploaded(&second, &content.info_hash), None);
        assert_eq!(seed.uploaded_bytes(&content.info_hash), second_sent);
        Ok(())
    })
    .await?
}

/// A destination that authenticates properly and answers INFO_REQUEST
/// with bytes of the right length that are not the info dictionary.
async fn run_info_liar(
    server: &Server,
    at: SocketAddr,
    content: &Content,
    task: &str,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(at).await?;
    let token = server.task_token(&at.ip().to_string(), task, &content.info_hash);
    let ih = content.info_hash;
    let total = content.info.to_bencode()?.len() as u32;
    Ok(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let token = token.clone();
            tokio::spawn(async move {
                let Some(mut conn) = fake_greeting(stream, ih, token).await else {
                    return;
                };
                let _ = conn.flush().await;
                while let Ok(Some(Message::InfoRequest { offset })) =
                    conn.read_message(READ_TIMEOUT).await
                {
                    let len = (total - offset.min(total)).min(100_000) as usize;
                    let data = vec![b'd'; len].into();
                    let reply = Message::InfoData {
                        offset,
                        total,
                        data,
                    };
                    if conn.write_message(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slim_pushes_fetch_the_dictionary_from_a_holder_or_the_seed() -> Result<()> {
    init_tracing();
    tokio::time::timeout(Duration::from_secs(120), async {
        let server = Server::start(ip(11, 1)).await?;
        // 2,000 files in 2,930 pieces: 59 KB of piece hashes and the file
        // list make a dictionary of more than one INFO_DATA chunk.
        let names: Vec<String> = (0..2_000).map(|i| format!("d{}/f{i}.bin", i % 7)).collect();
        let files: Vec<(&str, usize)> = names.iter().map(|n| (n.as_str(), 24_000)).collect();
        let content = make_content(&files, 16 * 1024)?;
        let dict = content.info.to_bencode()?.len();
        assert!(
            dict > pollen_protocol::message::MAX_INFO_CHUNK as usize,
            "dictionary of {dict} bytes fits one chunk"
        );
        let seed = start_seed(&server, ip(11, 1), &content, "t11", None).await?;
        let liar = SocketAddr::new(ip(11, 9), DATA_PORT);
        let liar_task = run_info_liar(&server, liar, &content, "t11").await?;
        let agents = vec![
            start_agent(&server, ip(11, 2)).await?,
            start_agent(&server, ip(11, 3)).await?,
            start_agent(&server, ip(11, 4)).await?,
        ];
        let peers = |me: IpAddr| -> Vec<SocketAddr> {
            agents
                .iter()
                .filter(|b| b.ip != me)
                .map(TestAgent::data_addr)
                .collect()
        };
        let (full, slim, fallback) = (&agents[0], &agents[1], &agents[2]);
        // Only the holder can give `slim` the dictionary: its seed address
        // leads nowhere, so its pieces come from its peers too. The holder
        // takes the task a moment after `slim` starts asking (the server
        // pushes to both at once), so `slim` must ask again.
        let nowhere = SocketAddr::new(ip(11, 8), DATA_PORT);
        let (slim_push, full_push) = tokio::join!(
            push_from(
                &server,
                &content,
                "t11",
                slim.ip,
                peers(slim.ip),
                nowhere,
                Some(vec![full.data_addr()]),
            ),
            async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                push(
                    &server,
                    &content,
                    "t11",
                    full.ip,
                    peers(full.ip),
                    seed.local_addr(),
                )
                .await
            }
        );
        full_push?;
        slim_push?;
        // The liar's bytes do not hash to the info-hash: the seed's do.
        push_from(
            &server,
            &content,
            "t11",
            fallback.ip,
            peers(fallback.ip),
            seed.local_addr(),
            Some(vec![liar]),
        )
        .await?;
        wait_completed(&server, &agents, Duration::from_secs(100)).await?;
        for a in &agents {
            check_bytes(&content, a.downdir.path())?;
        }
        let r = server.report(slim.ip).context("report")?;
        assert_eq!((r.bytes_from_seed, r.bytes_done), (0, r.bytes_total));
        liar_task.abort();
        for a in agents {
            a.shutdown.cancel();
            a.handle.await??;
        }
        Ok(())
    })
    .await?
}
