//! Runs the curl examples of `docs/api.md` against a real server and two
//! agents, so the documented routes and status codes cannot drift from the
//! code.
//!
//! The convention (described at the top of `docs/api.md`): in a ```` ```sh ````
//! block, a command whose last line ends in `# → <status> [KIND]` is an
//! example. Blocks are run with bash in page order, with `S`, `A` and `AUTH`
//! set to the test cluster's, the addresses `127.0.0.x` rewritten to the
//! cluster's and `/srv/` to a temporary source directory. A block whose first
//! line begins with `# not run` is only checked for its markers. Every route
//! the page names must have an example, and every `curl` line a marker.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::{random_file, Cluster, Opts, AGENT_MGNT, PASSWORD, USER};

/// This test's cluster: 127.0.11.1 and agents 127.0.11.2–3.
const NET: u8 = 11;
const MARKER: &str = "# → ";

/// One documented command and the answer the page promises.
#[derive(Debug)]
struct Example {
    command: String,
    status: u16,
    kind: Option<String>,
}

/// One ```` ```sh ```` block: its logical lines (continuations joined) and
/// the examples among them.
#[derive(Debug)]
struct Block {
    lines: Vec<String>,
    examples: Vec<Example>,
    runnable: bool,
}

/// Splits `line` into the command and its `# → NNN [KIND]` marker.
fn parse_marker(line: &str) -> Result<Option<Example>> {
    let Some(at) = line.rfind(MARKER) else {
        return Ok(None);
    };
    let command = line[..at].trim().to_owned();
    let mut words = line[at + MARKER.len()..].split_whitespace();
    let status = words
        .next()
        .and_then(|w| w.parse().ok())
        .with_context(|| format!("marker without a status: {line}"))?;
    let kind = words.next().map(str::to_owned);
    ensure!(words.next().is_none(), "marker with extra words: {line}");
    Ok(Some(Example {
        command,
        status,
        kind,
    }))
}

fn parse_blocks(doc: &str) -> Result<Vec<Block>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    let mut pending = String::new();
    for raw in doc.lines() {
        let fence = raw.trim_start().starts_with("```");
        match &mut current {
            None if fence && raw.trim_start() == "```sh" => current = Some(Vec::new()),
            None => {}
            Some(_) if fence => {
                ensure!(pending.is_empty(), "a block ends with a '\\' line");
                let lines = current.take().unwrap_or_default();
                let runnable = !lines.first().is_some_and(|l| l.starts_with("# not run"));
                let mut examples = Vec::new();
                for l in &lines {
                    match parse_marker(l)? {
                        Some(e) => examples.push(e),
                        None => ensure!(
                            !l.starts_with("curl "),
                            "curl example without a `# → <status>` marker: {l}"
                        ),
                    }
                }
                blocks.push(Block {
                    lines,
                    examples,
                    runnable,
                });
            }
            Some(lines) => match raw.strip_suffix('\\') {
                Some(head) => {
                    pending.push_str(head.trim());
                    pending.push(' ');
                }
                None => {
                    pending.push_str(raw.trim());
                    lines.push(std::mem::take(&mut pending));
                }
            },
        }
    }
    ensure!(current.is_none(), "unterminated code block");
    Ok(blocks)
}

/// Method and path of a documented command (`-X`, else POST with `-d`).
fn method_and_path(command: &str) -> Option<(String, String)> {
    let words: Vec<&str> = command.split_whitespace().collect();
    let method = match words.iter().position(|w| *w == "-X") {
        Some(i) => words.get(i + 1)?.to_string(),
        None if words.contains(&"-d") => "POST".into(),
        None => "GET".into(),
    };
    let url = words
        .iter()
        .map(|w| w.trim_matches(['"', '\'']))
        .find(|w| w.starts_with("$S/") || w.starts_with("$A/"))?;
    Some((method, url[2..].to_owned()))
}

/// Whether `path` fits `template`, where `{name}` is any one segment.
fn path_matches(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| t == p || (t.starts_with('{') && t.ends_with('}') && !p.is_empty()))
}

/// Every `` `METHOD /path` `` the page names outside code blocks.
fn documented_routes(doc: &str) -> Vec<(String, String)> {
    let mut routes = Vec::new();
    let mut in_code = false;
    for line in doc.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        for span in line.split('`').skip(1).step_by(2) {
            if let Some((m, p)) = span.split_once(' ') {
                if ["GET", "POST", "DELETE", "PUT"].contains(&m) && p.starts_with('/') {
                    routes.push((m.to_owned(), p.to_owned()));
                }
            }
        }
    }
    routes
}

/// The bash script for one block: each example prints `@@ <status>` and
/// leaves its body in `bodies/<n>`.
fn script(block: &Block, first: usize, net: u8, srv: &Path) -> Result<String> {
    let mut out = String::from("set -eu\n");
    let mut n = first;
    for line in &block.lines {
        let line = line
            .replace("127.0.0.", &format!("127.0.{net}."))
            .replace("/srv/", &format!("{}/", srv.display()));
        match parse_marker(&line)? {
            Some(e) => {
                ensure!(
                    e.command.starts_with("curl ") && !e.command.contains('|'),
                    "an example must be one curl command: {}",
                    e.command
                );
                out.push_str(&format!(
                    "printf '@@ %s\\n' \"$({} -o \"$BODIES/{n}\" -w '%{{http_code}}')\"\n",
                    e.command
                ));
                n += 1;
            }
            None => {
                out.push_str(&line);
                out.push('\n');
            }
        }
    }
    Ok(out)
}

#[test]
fn the_page_parses_and_every_route_has_an_example() -> Result<()> {
    let doc = std::fs::read_to_string(doc_path())?;
    let blocks = parse_blocks(&doc)?;
    let examples: Vec<&Example> = blocks.iter().flat_map(|b| &b.examples).collect();
    // Every marker in a code block (```bash, ```shell, …) belongs to an
    // example the parser found, so none is silently skipped.
    let mut in_code = false;
    let mut markers = 0;
    for line in doc.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if in_code && line.contains(MARKER) {
            markers += 1;
        }
    }
    ensure!(
        markers == examples.len(),
        "{markers} markers in code blocks, {} examples parsed (use ```sh blocks)",
        examples.len()
    );
    ensure!(
        blocks.iter().any(|b| b.runnable && !b.examples.is_empty()),
        "no runnable example"
    );
    let mut missing = Vec::new();
    for (method, route) in documented_routes(&doc) {
        let covered = examples.iter().any(|e| {
            method_and_path(&e.command)
                .is_some_and(|(m, p)| m == method && path_matches(&route, &p))
        });
        if !covered {
            missing.push(format!("{method} {route}"));
        }
    }
    ensure!(
        missing.is_empty(),
        "routes without a curl example: {missing:?}"
    );
    Ok(())
}

fn doc_path() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_curl_examples_answer_as_documented() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(180), run_examples())
        .await
        .context("test timed out")?
}

async fn run_examples() -> Result<()> {
    let doc = std::fs::read_to_string(doc_path())?;
    let blocks = parse_blocks(&doc)?;
    let c = Cluster::start(
        NET,
        Opts {
            agents: 2,
            ..Opts::default()
        },
    )
    .await?;
    let srv = c.dir.path().join("srv");
    random_file(&srv.join("release.tar.gz"), 300_000, 21)?;
    random_file(&srv.join("configs").join("app.yml"), 1_000, 22)?;
    random_file(&srv.join("configs").join("db").join("db.yml"), 2_000, 23)?;
    let bodies = c.dir.path().join("bodies");
    std::fs::create_dir_all(&bodies)?;

    let mut failures = Vec::new();
    let mut ran = 0;
    for block in blocks
        .iter()
        .filter(|b| b.runnable && !b.examples.is_empty())
    {
        let text = script(block, ran, NET, &srv)?;
        let out = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(&text)
            .env("S", c.base_url())
            .env("A", format!("http://{}:{AGENT_MGNT}", c.agent_ip(0)))
            .env("AUTH", format!("{USER}:{PASSWORD}"))
            .env("BODIES", &bodies)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .context("running bash (is it installed?)")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let codes: Vec<&str> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("@@ "))
            .collect();
        if !out.status.success() || codes.len() != block.examples.len() {
            bail!(
                "block failed ({}), is curl installed?\n{text}\nstdout:\n{stdout}\nstderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for (e, code) in block.examples.iter().zip(codes) {
            let body = std::fs::read_to_string(bodies.join(ran.to_string())).unwrap_or_default();
            ran += 1;
            let kind_ok = e
                .kind
                .as_ref()
                .is_none_or(|k| body.contains(&format!("\"kind\":\"{k}\"")));
            if code != e.status.to_string() || !kind_ok {
                failures.push(format!(
                    "{}\n  documented {} {}, got {code}: {body}",
                    e.command,
                    e.status,
                    e.kind.as_deref().unwrap_or("")
                ));
            }
        }
    }
    let runnable: usize = blocks
        .iter()
        .filter(|b| b.runnable)
        .map(|b| b.examples.len())
        .sum();
    ensure!(
        ran == runnable && ran > 0,
        "{ran} of {runnable} examples ran"
    );
    ensure!(
        failures.is_empty(),
        "{} examples answered otherwise:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The documented create really dispatched: task 1 exists with both hosts.
    let info = c.get_task("1").await?;
    ensure!(info.dispatch_infos.len() == 2, "{info:?}");
    Ok(())
}
