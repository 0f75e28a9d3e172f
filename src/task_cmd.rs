//! `pollen task create|status|list|cancel`, with live per-host progress bars.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use pollen_config::TlsTrust;
use pollen_protocol::api::{CreateTaskRequest, TaskInfo, TaskStatus};

use crate::client::Client;

#[derive(Args)]
pub(crate) struct TaskArgs {
    /// Server management address.
    #[arg(
        long,
        env = "POLLEN_SERVER",
        default_value = "http://127.0.0.1:45000",
        global = true
    )]
    server: String,
    /// User name for basic auth.
    #[arg(
        long,
        short,
        env = "POLLEN_USER",
        default_value = "pollen",
        global = true
    )]
    user: String,
    /// Password for basic auth (prefer the environment variable).
    #[arg(long, env = "POLLEN_PASSWORD", hide_env_values = true, global = true)]
    password: Option<String>,
    /// PEM file of the CA that signed the server's certificate (HTTPS); when
    /// given, only it is trusted.
    #[arg(long, env = "POLLEN_CACERT", global = true, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// Do not check the server's certificate (HTTPS), like `curl --insecure`.
    #[arg(long, short = 'k', env = "POLLEN_INSECURE", global = true)]
    insecure: bool,
    #[command(subcommand)]
    command: TaskCommand,
}

#[derive(Subcommand)]
enum TaskCommand {
    /// Create a dispatch task.
    Create {
        /// Task id (GoFD's `id`).
        #[arg(long)]
        id: String,
        /// Absolute path of a file or directory on the server (repeatable).
        #[arg(long = "file", short = 'f', required = true)]
        files: Vec<String>,
        /// Destination agent IP (repeatable, or comma-separated).
        #[arg(long = "dest", short = 'd', required = true, value_delimiter = ',')]
        dests: Vec<String>,
        /// Directory under each agent's downdir.
        #[arg(long)]
        dest_dir: Option<String>,
        /// Task upload cap, MB/s.
        #[arg(long)]
        speed: Option<f64>,
        /// Piece length in bytes (power of two).
        #[arg(long)]
        piece_length: Option<u64>,
        /// Show live progress until the task ends.
        #[arg(long, short)]
        watch: bool,
    },
    /// Show a task.
    Status {
        id: String,
        /// Live per-host progress bars until the task ends.
        #[arg(long, short)]
        watch: bool,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// List tasks.
    List,
    /// Cancel a task.
    Cancel { id: String },
}

pub(crate) async fn run(args: TaskArgs) -> Result<()> {
    let Some(password) = args.password.as_deref() else {
        bail!("no password: set POLLEN_PASSWORD or pass --password");
    };
    let trust = TlsTrust {
        ca: args.cacert,
        insecure: args.insecure,
    };
    let client = Client::new(&args.server, &args.user, password, &trust)?;
    match args.command {
        TaskCommand::Create {
            id,
            files,
            dests,
            dest_dir,
            speed,
            piece_length,
            watch: w,
        } => {
            let req = CreateTaskRequest {
                id: id.clone(),
                dispatch_files: files,
                dest_ips: dests,
                dest_dir,
                speed,
                piece_length,
            };
            client.create(&req).await?;
            println!("task {id} accepted");
            if w {
                finish(watch(&client, &id).await?)?;
            }
        }
        TaskCommand::Status { id, watch: w, json } => {
            let info = if w {
                watch(&client, &id).await?
            } else {
                client.status(&id).await?
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print_summary(&info);
            }
        }
        TaskCommand::List => {
            let list = client.list().await?;
            println!(
                "{:<24} {:<16} {:>6} {:>6} {:>6} {:>12}",
                "ID", "STATUS", "HOSTS", "DONE", "FAILED", "BYTES"
            );
            for t in list.tasks {
                println!(
                    "{:<24} {:<16} {:>6} {:>6} {:>6} {:>12}",
                    t.id,
                    t.status.as_str(),
                    t.dest_count,
                    t.completed_count,
                    t.failed_count,
                    t.total_bytes
                );
            }
        }
        TaskCommand::Cancel { id } => {
            client.cancel(&id).await?;
            println!("task {id} cancelled");
        }
    }
    Ok(())
}

fn finish(info: TaskInfo) -> Result<()> {
    print_summary(&info);
    if info.status != TaskStatus::Completed {
        bail!("task {} ended {}", info.id, info.status.as_str());
    }
    Ok(())
}

/// Prints one line per host.
pub(crate) fn print_summary(info: &TaskInfo) {
    println!("task {}: {}", info.id, info.status.as_str());
    if let Some(e) = &info.error {
        println!("  error: {e}");
    }
    for (ip, d) in &info.dispatch_infos {
        let took = match (d.started_at, d.finished_at) {
            (Some(s), Some(f)) => format!("{:.2}s", (f - s).num_milliseconds() as f64 / 1000.0),
            _ => "-".into(),
        };
        println!(
            "  {ip:<16} {:<10} {:>6.1}%  {took:>8}  from seed {:>12}  from peers {:>12}{}",
            d.status.as_str(),
            d.percent_complete,
            d.bytes_from_seed,
            d.bytes_from_peers,
            d.error
                .as_deref()
                .map(|e| format!("  ({e})"))
                .unwrap_or_default()
        );
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:<16} [{bar:32.cyan/blue}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// Polls the task and draws one progress bar per host until it is final.
pub(crate) async fn watch(client: &Client, id: &str) -> Result<TaskInfo> {
    let multi = MultiProgress::new();
    let mut bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
    loop {
        let info = client.status(id).await?;
        for (ip, d) in &info.dispatch_infos {
            let bar = bars.entry(ip.clone()).or_insert_with(|| {
                let b = multi.add(ProgressBar::new(d.bytes_total.max(1)));
                b.set_style(bar_style());
                b.set_prefix(ip.clone());
                b
            });
            bar.set_length(d.bytes_total.max(1));
            bar.set_position(d.bytes_done.min(d.bytes_total.max(1)));
            let mut msg = d.status.as_str().to_owned();
            if let Some(e) = &d.error {
                msg.push_str(": ");
                msg.push_str(e);
            }
            bar.set_message(msg);
            if d.status.is_final() && !bar.is_finished() {
                bar.finish();
            }
        }
        if info.status.is_final() {
            for b in bars.values() {
                if !b.is_finished() {
                    b.finish();
                }
            }
            return Ok(info);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
