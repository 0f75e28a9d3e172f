//! Test harness for end-to-end tests: real `pollen` server and agent
//! processes on 127.0.N.x (N unique per test), random-content temp dirs,
//! `wait_until` polling with a deadline, and byte comparison.
#![allow(dead_code, unreachable_pub)]

pub mod peer;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pollen_protocol::api::TaskInfo;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::Value;

pub const USER: &str = "tester";
pub const PASSWORD: &str = "correct horse battery staple";
pub const MGNT: u16 = 45000;
pub const DATA: u16 = 45001;
pub const AGENT_MGNT: u16 = 45010;
pub const AGENT_DATA: u16 = 45011;

/// Polls `cond` every 50 ms until it returns `Some`, or fails at `timeout`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut cond: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Options for [`Cluster::start`].
#[derive(Clone)]
pub struct Opts {
    pub agents: usize,
    /// Seed upload cap, MB/s (0 = unlimited).
    pub seed_speed: f64,
    pub max_active: usize,
    /// HTTPS on every management port: one test CA signs a certificate for
    /// all the cluster's addresses, which the server and agents share, as in
    /// GoFD's README. The server trusts the CA for agents (`net.agentTls`),
    /// the agents for the server (`server.tls`), and so does [`Cluster::http`].
    pub tls: bool,
    /// `control.slimPushesFrom`.
    pub slim_pushes_from: usize,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            agents: 4,
            seed_speed: 0.0,
            max_active: 10,
            tls: false,
            slim_pushes_from: 64,
        }
    }
}

/// Writes `ca.pem`, `cert.pem` and `key.pem` into `dir`: a test CA and a
/// certificate it signed for `ips`.
pub fn write_test_pki(dir: &Path, ips: &[String]) -> Result<()> {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate()?)?;
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(ips.to_vec())?.signed_by(&key, &*ca)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    std::fs::write(dir.join("cert.pem"), cert.pem())?;
    std::fs::write(dir.join("key.pem"), key.serialize_pem())?;
    Ok(())
}

struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

/// A running server and its agents.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub net: u8,
    pub tls: bool,
    pub http: reqwest::Client,
    pub private_key_pem: String,
    pub public_key_pem: String,
    server: Proc,
    agents: Vec<Proc>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_pollen")
}

fn spawn(name: &str, args: &[&str], log: &Path) -> Result<Proc> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    let child = Command::new(bin())
        .args(args)
        .env("RUST_LOG", "info,pollen_agent=debug")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("spawning {name}"))?;
    Ok(Proc {
        name: name.to_owned(),
        child,
        log: log.to_path_buf(),
    })
}

impl Cluster {
    pub fn server_ip(&self) -> String {
        format!("127.0.{}.1", self.net)
    }

    /// IP of agent `i` (0-based): 127.0.N.(i+2).
    pub fn agent_ip(&self, i: usize) -> String {
        format!("127.0.{}.{}", self.net, i + 2)
    }

    pub fn agent_ips(&self) -> Vec<String> {
        (0..self.agents.len()).map(|i| self.agent_ip(i)).collect()
    }

    pub fn downdir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("agent-{i}"))
    }

    fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    pub fn base_url(&self) -> String {
        format!("{}://{}:{MGNT}", self.scheme(), self.server_ip())
    }

    pub fn tasks_url(&self) -> String {
        format!("{}/api/v1/server/tasks", self.base_url())
    }

    /// Writes configs and keys, starts the processes, waits for `/healthz`.
    pub async fn start(net: u8, opts: Opts) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("pollen-e2e-").tempdir()?;
        let (private, public) = pollen_protocol::token::generate_keypair()?;
        let key = dir.path().join("server.key");
        let pubk = dir.path().join("server.pub");
        std::fs::write(&key, &private)?;
        std::fs::write(&pubk, &public)?;
        let hash = pollen_config::hash_password(PASSWORD)?;
        let ips: Vec<String> = (1..=opts.agents + 1)
            .map(|i| format!("127.0.{net}.{i}"))
            .collect();
        let (net_tls, agent_tls, server_tls) = if opts.tls {
            write_test_pki(dir.path(), &ips)?;
            let d = dir.path().display();
            (
                format!("  tls:\n    cert: {d}/cert.pem\n    key: {d}/key.pem\n"),
                format!("  agentTls:\n    ca: {d}/ca.pem\n"),
                format!("  tls:\n    ca: {d}/ca.pem\n"),
            )
        } else {
            Default::default()
        };
        let server_yml = format!(
            "name: server\ndatadir: {data}\nnet:\n  ip: 127.0.{net}.1\n  mgntPort: {MGNT}\n  dataPort: {DATA}\n  agentMgntPort: {AGENT_MGNT}\n  agentDataPort: {AGENT_DATA}\n{net_tls}{agent_tls}auth:\n  username: {USER}\n  password: '{hash}'\n  privateKey: {key}\ncontrol:\n  speed: {speed}\n  cacheSize: 32\n  maxActive: {max_active}\n  agentTimeoutSecs: 3\n  slimPushesFrom: {slim}\n",
            data = dir.path().join("server-data").display(),
            key = key.display(),
            speed = opts.seed_speed,
            slim = opts.slim_pushes_from,
            max_active = opts.max_active,
        );
        let cfg = dir.path().join("server.yml");
        std::fs::write(&cfg, server_yml)?;
        let server = spawn(
            "server",
            &["server", "--config", cfg.to_str().context("utf8")?],
            &dir.path().join("server.log"),
        )?;
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(20));
        if opts.tls {
            let ca = std::fs::read(dir.path().join("ca.pem"))?;
            http = http
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(&ca)?);
        }
        let http = http.build()?;
        let mut c = Cluster {
            dir,
            net,
            tls: opts.tls,
            http,
            private_key_pem: private,
            public_key_pem: public,
            server,
            agents: Vec::new(),
        };
        for i in 0..opts.agents {
            let down = c.downdir(i);
            std::fs::create_dir_all(&down)?;
            let yml = format!(
                "name: agent-{i}\ndowndir: {down}\nnet:\n  ip: {ip}\n  mgntPort: {AGENT_MGNT}\n  dataPort: {AGENT_DATA}\n{net_tls}server:\n  addr: {base}\n  publicKey: {pubk}\n{server_tls}",
                down = down.display(),
                ip = c.agent_ip(i),
                base = c.base_url(),
                pubk = pubk.display(),
            );
            let path = c.dir.path().join(format!("agent-{i}.yml"));
            std::fs::write(&path, yml)?;
            let log = c.dir.path().join(format!("agent-{i}.log"));
            c.agents.push(spawn(
                &format!("agent-{i}"),
                &["agent", "--config", path.to_str().context("utf8")?],
                &log,
            )?);
        }
        c.wait_healthy(&format!("{}/healthz", c.base_url())).await?;
        for i in 0..opts.agents {
            let url = format!("{}://{}:{AGENT_MGNT}/healthz", c.scheme(), c.agent_ip(i));
            c.wait_healthy(&url).await?;
        }
        Ok(c)
    }

    async fn wait_healthy(&mut self, url: &str) -> Result<()> {
        let http = self.http.clone();
        let url = url.to_owned();
        wait_until(&format!("{url} to answer"), Duration::from_secs(30), || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                matches!(http.get(&url).send().await, Ok(r) if r.status().is_success())
                    .then_some(())
            }
        })
        .await
    }

    /// Kills agent `i` (SIGKILL) and waits for it.
    pub fn kill_agent(&mut self, i: usize) -> Result<()> {
        let p = &mut self.agents[i];
        p.child.kill()?;
        p.child.wait()?;
        Ok(())
    }

    pub async fn post_task(&self, body: &Value) -> Result<(u16, Value)> {
        let r = self
            .http
            .post(self.tasks_url())
            .basic_auth(USER, Some(PASSWORD))
            .json(body)
            .send()
            .await?;
        let code = r.status().as_u16();
        let text = r.text().await?;
        Ok((
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    pub async fn get_task(&self, id: &str) -> Result<TaskInfo> {
        let r = self
            .http
            .get(format!("{}/{id}", self.tasks_url()))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await?;
        let code = r.status();
        let text = r.text().await?;
        if !code.is_success() {
            bail!("GET task {id}: {code}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("bad TaskInfo: {text}"))
    }

    pub async fn delete_task(&self, id: &str) -> Result<u16> {
        let r = self
            .http
            .delete(format!("{}/{id}", self.tasks_url()))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await?;
        Ok(r.status().as_u16())
    }

    /// Waits until the task reaches a final status.
    pub async fn wait_final(&self, id: &str, timeout: Duration) -> Result<TaskInfo> {
        let r = wait_until(&format!("task {id} to finish"), timeout, || async {
            self.get_task(id).await.ok().filter(|t| t.status.is_final())
        })
        .await;
        if r.is_err() {
            if let Ok(t) = self.get_task(id).await {
                eprintln!(
                    "last status: {}",
                    serde_json::to_string_pretty(&t).unwrap_or_default()
                );
            }
        }
        r
    }

    fn dump_logs(&self) {
        for p in std::iter::once(&self.server).chain(&self.agents) {
            let mut s = String::new();
            if let Ok(mut f) = std::fs::File::open(&p.log) {
                let _ = f.read_to_string(&mut s);
            }
            let tail: Vec<&str> = s.lines().rev().take(60).collect();
            eprintln!("----- {} log (last {} lines) -----", p.name, tail.len());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("POLLEN_TEST_LOGS").is_some() {
            self.dump_logs();
        }
        for p in std::iter::once(&mut self.server).chain(self.agents.iter_mut()) {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// Writes `len` random bytes to `path`.
pub fn random_file(path: &Path, len: usize, seed: u64) -> Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; len];
    rng.fill_bytes(&mut data);
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(path, data)?;
    Ok(())
}

/// Creates `count` random files of 1 B..=64 KiB in nested folders under
/// `root`, plus `empty.txt`. Returns the relative paths.
pub fn random_tree(root: &Path, count: usize, seed: u64) -> Result<Vec<PathBuf>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for i in 0..count {
        let rel = PathBuf::from(format!("lvl{}", i % 5))
            .join(format!("sub{}", i % 4))
            .join(format!("deep{}", i % 3))
            .join(format!("f{i}.dat"));
        let len = if i == 0 {
            1
        } else if i == 1 {
            64 * 1024
        } else {
            rng.gen_range(1..=64 * 1024)
        };
        random_file(&root.join(&rel), len, seed.wrapping_add(i as u64 + 1))?;
        out.push(rel);
    }
    std::fs::write(root.join("empty.txt"), b"")?;
    out.push(PathBuf::from("empty.txt"));
    Ok(out)
}

/// Asserts that `b` holds exactly the bytes of `a`.
pub fn assert_same_file(a: &Path, b: &Path) {
    let x = std::fs::read(a).unwrap_or_else(|e| panic!("read {}: {e}", a.display()));
    let y = std::fs::read(b).unwrap_or_else(|e| panic!("read {}: {e}", b.display()));
    assert_eq!(
        x.len(),
        y.len(),
        "length of {} vs {}",
        a.display(),
        b.display()
    );
    assert!(
        x == y,
        "bytes of {} differ from {}",
        b.display(),
        a.display()
    );
}

/// Every file (any type) under `dir`, relative, sorted.
pub fn list_tree(dir: &Path) -> Vec<PathBuf> {
    fn go(root: &Path, d: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    go(root, &p, out);
                } else if let Ok(r) = p.strip_prefix(root) {
                    out.push(r.to_path_buf());
                }
            }
        }
    }
    let mut out = Vec::new();
    go(dir, dir, &mut out);
    out.sort();
    out
}
