//! `pollen demo`: a whole cluster on loopback in one process.
//!
//! The server listens on 127.0.0.1 and the agents on 127.0.0.2, 127.0.0.3, …
//! all on the same ports, as real hosts would (`--ip` moves the whole cluster
//! to other addresses, e.g. to run beside another one). The demo generates a large
//! random file and a tree of small files, dispatches them, draws per-host
//! progress, then checks every byte at every destination and prints the split
//! between bytes served by the seed and bytes exchanged between peers.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use pollen_config::{AgentConfig, ServerConfig};
use pollen_protocol::api::{CreateTaskRequest, TaskStatus};
use rand::{Rng, RngCore, SeedableRng};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::task_cmd;

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Size of the generated large file (e.g. 256MiB, 1GiB, 500KB).
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    size: u64,
    /// Number of small files (1 B to 64 KiB, nested folders, plus one empty file).
    #[arg(long, default_value_t = 200)]
    small_files: usize,
    /// Number of agents (on the addresses right after --ip).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=250))]
    agents: u16,
    /// The seed's upload cap in MB/s (0 = unlimited).
    #[arg(long, default_value_t = 0.0)]
    seed_speed: f64,
    /// Server management port (agents use port+10 and port+11, as GoFD).
    #[arg(long, default_value_t = 45000)]
    port: u16,
    /// The server's IPv4 address; agent i listens on the address i+1 above
    /// it (e.g. 127.0.9.1 puts the agents on 127.0.9.2 upwards).
    #[arg(long, default_value_t = Ipv4Addr::LOCALHOST)]
    ip: Ipv4Addr,
    /// Keep the cluster running after the transfer and print how to use it.
    #[arg(long)]
    serve: bool,
    /// Work directory (default: a temporary directory removed at exit).
    #[arg(long)]
    workdir: Option<PathBuf>,
}

/// Parses `256MiB`, `1GiB`, `40M`, `1000` (bytes).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 256MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "kb" => 1000,
        "m" | "mib" => 1 << 20,
        "mb" => 1_000_000,
        "g" | "gib" => 1 << 30,
        "gb" => 1_000_000_000,
        other => return Err(format!("unknown size unit {other:?}")),
    };
    let bytes = n * mult as f64;
    if !(0.0..=1e13).contains(&bytes) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes as u64)
}

/// The `count` addresses right after `server`, all in its /24.
fn agent_ips(server: Ipv4Addr, count: u16) -> Result<Vec<Ipv4Addr>> {
    let [a, b, c, d] = server.octets();
    let last = u16::from(d) + count;
    if last > 254 {
        bail!("--ip {server} leaves no room for {count} agents in {a}.{b}.{c}.0/24");
    }
    Ok((1..=count)
        .map(|i| Ipv4Addr::new(a, b, c, (u16::from(d) + i) as u8))
        .collect())
}

#[derive(Clone)]
struct Sources {
    big: PathBuf,
    small: PathBuf,
    total: u64,
}

fn generate(dir: &Path, size: u64, small: usize) -> Result<Sources> {
    let mut rng = rand::rngs::StdRng::from_entropy();
    std::fs::create_dir_all(dir)?;
    let big = dir.join("payload.bin");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&big)?);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    let small_dir = dir.join("small");
    let mut total = size;
    for i in 0..small {
        let sub = small_dir
            .join(format!("d{}", i % 7))
            .join(format!("e{}", i % 3));
        std::fs::create_dir_all(&sub)?;
        let len = rng.gen_range(1..=64 * 1024);
        rng.fill_bytes(&mut buf[..len]);
        std::fs::write(sub.join(format!("file-{i:04}.bin")), &buf[..len])?;
        total += len as u64;
    }
    std::fs::create_dir_all(&small_dir)?;
    std::fs::write(small_dir.join("empty.txt"), b"")?;
    Ok(Sources {
        big,
        small: small_dir,
        total,
    })
}

/// Compares two files byte for byte.
fn same_bytes(a: &Path, b: &Path) -> Result<bool> {
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Every regular file under `root`, as paths relative to `root.parent()`.
fn walk(root: &Path, base: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(&path, base, out)?;
        } else {
            out.push(path.strip_prefix(base)?.to_path_buf());
        }
    }
    Ok(())
}

/// Checks every source file at one destination; returns the mismatches.
fn verify(src: &Sources, downdir: &Path) -> Result<Vec<String>> {
    let base = src.big.parent().context("source has no parent")?;
    let mut files = vec![PathBuf::from("payload.bin")];
    walk(&src.small, base, &mut files)?;
    let mut bad = Vec::new();
    for rel in files {
        let dest = downdir.join(&rel);
        if !dest.is_file() || !same_bytes(&base.join(&rel), &dest)? {
            bad.push(rel.display().to_string());
        }
    }
    Ok(bad)
}

fn random_password() -> String {
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(20)
        .map(char::from)
        .collect()
}

struct Node {
    name: String,
    handle: JoinHandle<Result<()>>,
}

pub(crate) async fn run(args: DemoArgs) -> Result<()> {
    let temp;
    let work = match &args.workdir {
        Some(w) => w.clone(),
        None => {
            temp = tempfile::Builder::new().prefix("pollen-demo-").tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let port = args.port;
    let agent_ips = agent_ips(args.ip, args.agents)?;
    let (data_port, agent_mgnt, agent_data) = (
        port.checked_add(1).context("--port too high")?,
        port.checked_add(10).context("--port too high")?,
        port.checked_add(11).context("--port too high")?,
    );
    println!(
        "generating {} bytes + {} small files in {}",
        args.size,
        args.small_files,
        work.display()
    );
    let (size, small) = (args.size, args.small_files);
    let src_dir = work.join("source");
    let sources = tokio::task::spawn_blocking(move || generate(&src_dir, size, small)).await??;

    let server_dir = work.join("server");
    std::fs::create_dir_all(&server_dir)?;
    let (private, public) = pollen_protocol::token::generate_keypair()?;
    let key_path = server_dir.join("server.key");
    let pub_path = server_dir.join("server.pub");
    std::fs::write(&key_path, private)?;
    std::fs::write(&pub_path, public)?;
    let password = random_password();

    let mut server = ServerConfig {
        data_dir: server_dir.clone(),
        ..ServerConfig::default()
    };
    server.net.ip = IpAddr::V4(args.ip);
    server.net.mgnt_port = port;
    server.net.data_port = data_port;
    server.net.agent_mgnt_port = agent_mgnt;
    server.net.agent_data_port = agent_data;
    server.auth.username = "pollen".into();
    server.auth.password = Some(pollen_config::hash_password(&password)?);
    server.auth.private_key = Some(key_path);
    server.control.speed = args.seed_speed;
    server.validate()?;

    let root = CancellationToken::new();
    let mut nodes = vec![Node {
        name: "server".into(),
        handle: tokio::spawn({
            let t = root.child_token();
            async move { pollen_server::run(server, t).await.map_err(Into::into) }
        }),
    }];
    let mut dests = Vec::new();
    let mut downdirs = Vec::new();
    for ip in agent_ips {
        let mut a = AgentConfig {
            name: format!("agent-{ip}"),
            ..AgentConfig::default()
        };
        a.net.ip = Some(IpAddr::V4(ip));
        a.net.mgnt_port = agent_mgnt;
        a.net.data_port = agent_data;
        a.downdir = work.join(format!("agent-{ip}"));
        a.server.addr = Some(format!("http://{}:{port}", args.ip));
        a.server.public_key = Some(pub_path.clone());
        a.validate()?;
        dests.push(ip.to_string());
        downdirs.push(a.downdir.clone());
        nodes.push(Node {
            name: a.name.clone(),
            handle: tokio::spawn({
                let t = root.child_token();
                async move { pollen_agent::run(a, t).await.map_err(Into::into) }
            }),
        });
    }

    let outcome = drive(&args, &sources, &dests, &downdirs, &password, &nodes).await;
    root.cancel();
    for n in nodes {
        match tokio::time::timeout(Duration::from_secs(10), n.handle).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => eprintln!("{} stopped with an error: {e:#}", n.name),
            Ok(Err(e)) => eprintln!("{} panicked: {e}", n.name),
            Err(_) => eprintln!("{} did not stop within 10 s", n.name),
        }
    }
    outcome
}

async fn wait_up(url: &str, nodes: &[Node]) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if matches!(http.get(url).send().await, Ok(r) if r.status().is_success()) {
            return Ok(());
        }
        if let Some(dead) = nodes.iter().find(|n| n.handle.is_finished()) {
            bail!("{} exited during start-up (is the port in use?)", dead.name);
        }
        if Instant::now() > deadline {
            bail!("{url} did not come up within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn drive(
    args: &DemoArgs,
    sources: &Sources,
    dests: &[String],
    downdirs: &[PathBuf],
    password: &str,
    nodes: &[Node],
) -> Result<()> {
    let base = format!("http://{}:{}", args.ip, args.port);
    wait_up(&format!("{base}/healthz"), nodes).await?;
    for ip in dests {
        wait_up(&format!("http://{ip}:{}/healthz", args.port + 10), nodes).await?;
    }
    let client = Client::new(&base, "pollen", password, &Default::default())?;
    let id = format!("demo-{}", chrono::Utc::now().format("%Y%m%d-%H%M%S"));
    let req = CreateTaskRequest {
        id: id.clone(),
        dispatch_files: vec![
            sources.big.display().to_string(),
            sources.small.display().to_string(),
        ],
        dest_ips: dests.to_vec(),
        dest_dir: None,
        speed: None,
        piece_length: None,
    };
    println!(
        "dispatching {} bytes to {} agents as task {id}",
        sources.total,
        dests.len()
    );
    let started = Instant::now();
    client.create(&req).await?;
    let info = task_cmd::watch(&client, &id).await?;
    let elapsed = started.elapsed();

    println!();
    task_cmd::print_summary(&info);
    let mut failed = info.status != TaskStatus::Completed;
    println!("verifying every byte at every destination…");
    for (ip, dir) in dests.iter().zip(downdirs) {
        let (src, dir2) = (sources.clone(), dir.clone());
        let bad = tokio::task::spawn_blocking(move || verify(&src, &dir2)).await??;
        if bad.is_empty() {
            println!("  {ip:<16} all bytes identical");
        } else {
            failed = true;
            println!(
                "  {ip:<16} {} files differ or are missing, e.g. {}",
                bad.len(),
                bad[0]
            );
        }
    }
    let from_seed: u64 = info
        .dispatch_infos
        .values()
        .map(|d| d.bytes_from_seed)
        .sum();
    let from_peers: u64 = info
        .dispatch_infos
        .values()
        .map(|d| d.bytes_from_peers)
        .sum();
    let delivered = (from_seed + from_peers).max(1);
    let secs = elapsed.as_secs_f64();
    println!();
    println!(
        "time: {secs:.2} s for {} bytes to {} hosts",
        sources.total,
        dests.len()
    );
    println!(
        "bytes served by the seed (server's count): {} ({:.2}x the task size)",
        info.seed_bytes,
        info.seed_bytes as f64 / sources.total.max(1) as f64
    );
    println!(
        "bytes received by agents: from seed {from_seed} ({:.1}%), from peers {from_peers} ({:.1}%)",
        100.0 * from_seed as f64 / delivered as f64,
        100.0 * from_peers as f64 / delivered as f64
    );
    if args.serve && !failed {
        println!();
        println!("cluster is running; press Ctrl-C to stop");
        println!("  REST API: {base}/api/v1/server/tasks   user: pollen   password: {password}");
        println!("  try: curl --basic -u 'pollen:{password}' {base}/api/v1/server/tasks/{id}");
        println!("  agents: {}", dests.join(", "));
        let _ = tokio::signal::ctrl_c().await;
    }
    if failed {
        bail!("demo failed: a host did not complete or a byte differs");
    }
    println!("demo OK");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{agent_ips, parse_size};
    use std::net::Ipv4Addr;

    #[test]
    fn agents_follow_the_server_address() {
        assert_eq!(
            agent_ips(Ipv4Addr::new(127, 0, 9, 1), 2).unwrap(),
            [Ipv4Addr::new(127, 0, 9, 2), Ipv4Addr::new(127, 0, 9, 3)]
        );
        assert_eq!(agent_ips(Ipv4Addr::new(10, 0, 0, 250), 4).unwrap().len(), 4);
        assert!(agent_ips(Ipv4Addr::new(10, 0, 0, 251), 4).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("40M"), Ok(40 << 20));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert!(parse_size("abc").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }
}
