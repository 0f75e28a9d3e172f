//! `pollen`: one binary for the server, the agent, the task CLI and the demo.
//!
//! Thin by design: it parses arguments, loads config, installs tracing and
//! calls a library `run(config, shutdown)`. The task CLI and the demo are
//! REST clients of the server and live in their own modules.

mod client;
mod demo;
mod keys;
mod shutdown;
mod task_cmd;

use std::io::{BufRead, IsTerminal};
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use pollen_config::{AgentConfig, ServerConfig};
use tracing_subscriber::EnvFilter;

/// Pollen: push files from one server to many hosts over a P2P swarm.
#[derive(Parser)]
#[command(name = "pollen", version, about, propagate_version = true)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (REST API, task manager and fixed seed).
    Server {
        /// YAML config; embedded defaults when omitted.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run the agent daemon on a target host.
    Agent {
        /// YAML config; embedded defaults when omitted.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The server's management address (overrides `server.addr`).
        #[arg(long)]
        server: Option<String>,
        /// This host's address (overrides `net.ip`; by default the local
        /// address of the route to the server).
        #[arg(long)]
        ip: Option<IpAddr>,
        /// Download directory (overrides `downdir`).
        #[arg(long)]
        downdir: Option<PathBuf>,
    },
    /// Create, watch, list and cancel tasks through the REST API.
    Task(task_cmd::TaskArgs),
    /// Read a password on stdin and print its hash for `auth.password`.
    Passwd,
    /// Write the server's Ed25519 signing key pair.
    Keygen(keys::KeygenArgs),
    /// Run a server and 4 agents on loopback and dispatch generated files.
    Demo(demo::DemoArgs),
}

fn install_tracing(json: bool, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn load_server_config(path: Option<PathBuf>) -> Result<ServerConfig> {
    match path {
        Some(p) => Ok(ServerConfig::load(&p)?),
        None => Ok(ServerConfig::from_yaml("", "embedded defaults")?),
    }
}

fn load_agent_config(
    path: Option<PathBuf>,
    server: Option<String>,
    ip: Option<IpAddr>,
    downdir: Option<PathBuf>,
) -> Result<AgentConfig> {
    let mut c = match path {
        Some(p) => {
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("cannot read config file {}", p.display()))?;
            serde_yaml_from(&text, &p.display().to_string())?
        }
        None => AgentConfig::default(),
    };
    if let Some(s) = server {
        c.server.addr = Some(s);
    }
    if let Some(ip) = ip {
        c.net.ip = Some(ip);
    }
    if let Some(d) = downdir {
        c.downdir = d;
    }
    c.normalize();
    c.validate()?;
    Ok(c)
}

/// Parses agent YAML without validating, so command-line overrides apply first.
fn serde_yaml_from(text: &str, origin: &str) -> Result<AgentConfig> {
    if text.trim().is_empty() {
        return Ok(AgentConfig::default());
    }
    AgentConfig::parse_unvalidated(text, origin).map_err(Into::into)
}

fn passwd() -> Result<()> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let again = rpassword::prompt_password("Again: ")?;
        if first != again {
            bail!("the passwords differ");
        }
        first
    } else {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    if password.is_empty() {
        bail!("the password must not be empty");
    }
    println!("{}", pollen_config::hash_password(&password)?);
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Passwd => passwd(),
        Command::Keygen(args) => keys::keygen(args),
        command => run_async(command, cli.log_json),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open descriptors to the hard limit, as daemons
/// that hold many sockets and files do; 1024 is a common default. Nothing
/// changes where the limit cannot be read or raised.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some() && limit.current != limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
}

/// A multi-threaded runtime with `workers` worker threads, or one per core
/// (or `TOKIO_WORKER_THREADS`) when `workers` is 0.
fn build_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        builder.worker_threads(workers);
    }
    builder.enable_all().build()
}

fn run_async(command: Command, log_json: bool) -> Result<()> {
    raise_fd_limit();
    match command {
        Command::Server { config } => build_runtime(0)?.block_on(async move {
            install_tracing(log_json, "info");
            let config = load_server_config(config)?;
            let shutdown = shutdown::on_signals();
            pollen_server::run(config, shutdown).await?;
            Ok(())
        }),
        Command::Agent {
            config,
            server,
            ip,
            downdir,
        } => {
            install_tracing(log_json, "info");
            // The configuration sizes the runtime, so it is read first.
            let config = load_agent_config(config, server, ip, downdir)?;
            build_runtime(config.control.worker_threads)?.block_on(async move {
                let shutdown = shutdown::on_signals();
                pollen_agent::run(config, shutdown).await?;
                Ok(())
            })
        }
        Command::Task(args) => build_runtime(0)?.block_on(async move {
            install_tracing(log_json, "warn");
            task_cmd::run(args).await
        }),
        Command::Demo(args) => build_runtime(0)?.block_on(async move {
            install_tracing(log_json, "warn");
            demo::run(args).await
        }),
        Command::Passwd => passwd(),
        Command::Keygen(args) => keys::keygen(args),
    }
}

#[cfg(test)]
mod tests {
    use super::build_runtime;

    #[test]
    fn the_runtime_has_the_configured_worker_threads() -> std::io::Result<()> {
        assert_eq!(build_runtime(1)?.metrics().num_workers(), 1);
        assert_eq!(build_runtime(3)?.metrics().num_workers(), 3);
        assert!(build_runtime(0)?.metrics().num_workers() >= 1);
        Ok(())
    }
}
