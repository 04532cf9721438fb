//! Nudge benchmark for `scripts/bench-nudge.sh` (issue 5): how long from a
//! hub's `nudge` to the new worker container starting, with an hourly poll (so
//! only the nudge can bring the update).
//!
//! ```text
//! nudge_bench --registry 127.0.0.1:5055 [--repo bench/nudge-worker]
//!             [--docker-host unix:///…/docker.sock] [--agent-bin target/release/gpu-agent]
//!             [--nudges 100] [--plain 30] [--port N] [--dir DIR] [--goal-s 1]
//! ```
//!
//! The registry must hold `<repo>:v1` and `<repo>:v2` (two test worker images
//! with distinct digests; the script pushes them). The benchmark:
//!
//! 1. starts a [`MockHub`] in this process (with a token, written to a 0600
//!    file), writes an agent config (`poll_interval = "1h"`, `[hub]`, the test
//!    worker on the host network with an HTTP health check, a drain endpoint
//!    and `stable_for = "1s"`, `[gpu] check = false`) and runs the real
//!    `gpu-agent run -v --config …` process on it, following tag `bench`
//!    (pointed at v1 first);
//! 2. waits for the first deploy to commit and the agent's event stream to
//!    be open;
//! 3. `--nudges` rounds: a nudge naming the other digest. Measured from just
//!    before `MockHub::nudge` to the engine's `start` event of the new
//!    container (its `timeNano`; engine and benchmark share the clock), and,
//!    for context, to the engine's `create` of the new container (pre-pull and
//!    create done), the hub's `draining: true` notice, the old container's
//!    `die`, and the commit (the history entry's `at`; it includes
//!    `stable_for`). Each round waits for the commit and the hub's
//!    `draining: false` notice (the agent is idle again) before the next;
//! 4. `--plain` rounds: the tag is moved in the registry first, then a nudge
//!    without a digest (the agent asks the registry: one more HEAD).
//!
//! Prints min, median, p90, p99, max and the share within `--goal-s` for each
//! mode, a breakdown of the medians, and a closing line such as
//! `nudge->start: 100 samples, p99 0.62 s, goal <= 1 s: met`. The raw samples
//! go to `DIR/samples.tsv`, the agent's log to `DIR/agent.log`.
//!
//! Exit status: 0 when every round was measured (a missed goal is a result,
//! not an error); 1 on an error (agent died, a round timed out, …); 2 bad
//! arguments.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use bollard::query_parameters::EventsOptions;
use futures_util::StreamExt;
use gpu_agent::docker::{BollardEngine, LABEL_AGENT, LABEL_DIGEST};
use hub_client::mock::MockHub;
use hub_client::Nudge;
use tokio::sync::mpsc;

const TOKEN: &str = "nudge-bench-token-7d41";
const TAG: &str = "bench";
/// The longest one round (nudge → commit → idle) may take.
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);
const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.oci.image.manifest.v1+json";

struct Args {
    agent_bin: PathBuf,
    docker_host: String,
    registry: String,
    repo: String,
    nudges: usize,
    plain: usize,
    port: u16,
    dir: Option<PathBuf>,
    goal: Duration,
    agent_id: String,
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("nudge_bench: {msg}");
    eprintln!(
        "usage: nudge_bench --registry HOST:PORT [--repo PATH] [--docker-host URL] \
         [--agent-bin PATH] [--nudges N] [--plain N] [--port N] [--dir DIR] [--goal-s S]"
    );
    ExitCode::from(2)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18390)
}

fn parse_args() -> Result<Args, String> {
    let default_bin = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.join("gpu-agent")))
        .unwrap_or_else(|| PathBuf::from("target/release/gpu-agent"));
    let mut a = Args {
        agent_bin: std::env::var_os("GPU_AGENT_BIN").map_or(default_bin, PathBuf::from),
        docker_host: std::env::var("GPU_AGENT_TEST_DOCKER_HOST")
            .or_else(|_| std::env::var("DOCKER_HOST"))
            .unwrap_or_default(),
        registry: std::env::var("GPU_AGENT_TEST_REGISTRY").unwrap_or_default(),
        repo: "bench/nudge-worker".into(),
        nudges: 100,
        plain: 30,
        port: 0,
        dir: None,
        goal: Duration::from_secs(1),
        agent_id: "nudge-bench".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        if name == "--help" || name == "-h" {
            return Err("help".into());
        }
        let value = match inline {
            Some(v) => v,
            None => it.next().ok_or_else(|| format!("{name} needs a value"))?,
        };
        let bad = |what: &str| format!("{name}: {what}, got {value:?}");
        match name.as_str() {
            "--agent-bin" => a.agent_bin = value.into(),
            "--docker-host" => a.docker_host = value,
            "--registry" => a.registry = value,
            "--repo" => a.repo = value,
            "--nudges" => a.nudges = value.parse().map_err(|_| bad("want a count"))?,
            "--plain" => a.plain = value.parse().map_err(|_| bad("want a count"))?,
            "--port" => a.port = value.parse().map_err(|_| bad("want a port"))?,
            "--dir" => a.dir = Some(value.into()),
            "--agent-id" => a.agent_id = value,
            "--goal-s" => {
                let s: f64 = value
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| bad("want a positive number of seconds"))?;
                a.goal = Duration::from_secs_f64(s);
            }
            _ => return Err(format!("unknown argument {name}")),
        }
    }
    if a.docker_host.is_empty() {
        return Err("--docker-host (or DOCKER_HOST) is required".into());
    }
    if a.registry.is_empty() {
        return Err("--registry (or GPU_AGENT_TEST_REGISTRY) is required".into());
    }
    if a.port == 0 {
        a.port = free_port();
    }
    Ok(a)
}

fn unix_ns(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

fn secs(ns: i64) -> f64 {
    ns as f64 / 1e9
}

/// One engine event of a container of the agent.
#[derive(Debug, Clone)]
struct EngineEvent {
    action: String,
    digest: String,
    time_ns: i64,
}

/// What one round measured, in ns after the nudge (`None`: not seen).
#[derive(Debug, Default, Clone)]
struct Sample {
    start: i64,
    create: Option<i64>,
    drain_notice: Option<i64>,
    old_die: Option<i64>,
    commit: Option<i64>,
}

/// The registry's HTTP API (plain HTTP, loopback).
struct Registry {
    http: reqwest::Client,
    base: String,
    repo: String,
}

impl Registry {
    async fn digest(&self, tag: &str) -> Result<String> {
        let url = format!("{}/v2/{}/manifests/{tag}", self.base, self.repo);
        let r = self
            .http
            .head(&url)
            .header("Accept", MANIFEST_TYPES)
            .send()
            .await
            .with_context(|| format!("HEAD {url}"))?;
        if !r.status().is_success() {
            bail!(
                "HEAD {url}: {} (push the test images first: scripts/bench-nudge.sh does)",
                r.status()
            );
        }
        r.headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("HEAD {url}: no Docker-Content-Digest"))
    }

    /// Points `to` at `from`'s manifest, in the registry only.
    async fn retag(&self, from: &str, to: &str) -> Result<()> {
        let url = format!("{}/v2/{}/manifests/{from}", self.base, self.repo);
        let r = self
            .http
            .get(&url)
            .header("Accept", MANIFEST_TYPES)
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("GET {url}"))?;
        let ctype = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/vnd.docker.distribution.manifest.v2+json")
            .to_owned();
        let body = r.bytes().await?;
        let url = format!("{}/v2/{}/manifests/{to}", self.base, self.repo);
        self.http
            .put(&url)
            .header("Content-Type", ctype)
            .body(body)
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("PUT {url}"))?;
        Ok(())
    }
}

/// The running agent process; killed (SIGTERM, then SIGKILL) when dropped.
struct AgentProc {
    child: Child,
    log: PathBuf,
}

impl AgentProc {
    fn spawn(bin: &Path, config: &Path, log: &Path) -> Result<AgentProc> {
        let out = std::fs::File::create(log)?;
        let child = Command::new(bin)
            .args(["run", "-v", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(AgentProc {
            child,
            log: log.to_owned(),
        })
    }

    fn alive(&mut self) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!("gpu-agent exited ({st}); its log:\n{}", self.tail(40));
        }
        Ok(())
    }

    fn tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The successful history entries to `digest`, as unix ns of their `at`.
fn successes(state_dir: &Path, digest: &str) -> Vec<i64> {
    std::fs::read_to_string(state_dir.join("history.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["to"] == digest && e["outcome"] == "success")
        .filter_map(|e| {
            let at = e["at"].as_str()?;
            let t = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                .ok()?;
            Some(t.unix_timestamp_nanos() as i64)
        })
        .collect()
}

fn drain_falses(hub: &MockHub, id: &str) -> usize {
    hub.drains(id).iter().filter(|d| !d.draining).count()
}

/// The hub's `draining: true` notices received after `since`, earliest first.
fn drain_true_after(hub: &MockHub, id: &str, since: i64) -> Option<i64> {
    hub.received()
        .iter()
        .filter(|r| r.agent == id && r.call == "drain" && r.body["draining"] == true)
        .map(|r| unix_ns(r.at))
        .find(|&t| t >= since)
}

struct Bench {
    a: Args,
    dir: PathBuf,
    hub: MockHub,
    agent: AgentProc,
    events: mpsc::UnboundedReceiver<EngineEvent>,
    samples: std::fs::File,
}

impl Bench {
    /// Engine events until `deadline`, checking the agent now and then.
    async fn next_event(&mut self, deadline: Instant) -> Result<Option<EngineEvent>> {
        loop {
            self.agent.alive()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            match tokio::time::timeout(left.min(Duration::from_millis(500)), self.events.recv())
                .await
            {
                Ok(Some(e)) => return Ok(Some(e)),
                Ok(None) => bail!("the engine's event stream ended"),
                Err(_) => {}
            }
        }
    }

    /// One round: nudges (naming `target` unless `plain`), then waits for the
    /// new container's start, the commit and the agent to be idle.
    async fn round(&mut self, target: &str, old: &str, plain: bool) -> Result<Sample> {
        let id = self.a.agent_id.clone();
        let state = self.dir.join("state");
        let commits_before = successes(&state, target).len();
        let idles_before = drain_falses(&self.hub, &id);
        // Events from earlier rounds are not this round's.
        while self.events.try_recv().is_ok() {}

        let t0 = unix_ns(SystemTime::now());
        self.hub.nudge(
            &id,
            Nudge {
                reason: "bench".into(),
                digest: (!plain).then(|| target.to_owned()),
            },
        );
        let deadline = Instant::now() + ROUND_TIMEOUT;
        let mut s = Sample::default();
        let mut started = None;
        while started.is_none() {
            let Some(e) = self.next_event(deadline).await? else {
                bail!(
                    "no start of the new container within {ROUND_TIMEOUT:?}; agent log:\n{}",
                    self.agent.tail(40)
                );
            };
            if e.time_ns < t0 {
                continue;
            }
            match (e.action.as_str(), e.digest == target, e.digest == old) {
                ("create", true, _) => s.create = Some(e.time_ns - t0),
                ("die", _, true) => s.old_die = Some(e.time_ns - t0),
                ("start", true, _) => started = Some(e.time_ns - t0),
                _ => {}
            }
        }
        s.start = started.unwrap_or_default();
        // The commit and the agent idle again (draining: false sent).
        loop {
            self.agent.alive()?;
            let commits = successes(&state, target);
            if commits.len() > commits_before && drain_falses(&self.hub, &id) > idles_before {
                s.commit = commits.last().map(|&at| at - t0);
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "the update to {target} did not commit within {ROUND_TIMEOUT:?}; agent log:\n{}",
                    self.agent.tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        s.drain_notice = drain_true_after(&self.hub, &id, t0).map(|t| t - t0);
        Ok(s)
    }

    async fn run_mode(
        &mut self,
        plain: bool,
        rounds: usize,
        reg: &Registry,
        digests: &[String; 2],
    ) -> Result<Vec<Sample>> {
        let mode = if plain { "plain" } else { "digest" };
        let mut out = Vec::with_capacity(rounds);
        // The agent runs digests[0] or [1]; find which from the last commit.
        let mut cur = self.current(digests)?;
        for i in 1..=rounds {
            let next = 1 - cur;
            if plain {
                reg.retag(if next == 0 { "v1" } else { "v2" }, TAG).await?;
            }
            let s = self
                .round(&digests[next], &digests[cur], plain)
                .await
                .with_context(|| format!("{mode} round {i}"))?;
            writeln!(
                self.samples,
                "{mode}\t{i}\t{:.6}\t{}\t{}\t{}\t{}",
                secs(s.start),
                opt_s(s.create),
                opt_s(s.drain_notice),
                opt_s(s.old_die),
                opt_s(s.commit)
            )?;
            if i % 10 == 0 || i == rounds {
                println!(
                    "    {mode} {i:>3}/{rounds}: nudge->start {:.3} s (commit {})",
                    secs(s.start),
                    opt_s(s.commit)
                );
            }
            out.push(s);
            cur = next;
        }
        Ok(out)
    }

    /// Which of the two digests the agent runs now (by its history).
    fn current(&self, digests: &[String; 2]) -> Result<usize> {
        let state = self.dir.join("state");
        let last = |d: &str| successes(&state, d).last().copied().unwrap_or(i64::MIN);
        let (a, b) = (last(&digests[0]), last(&digests[1]));
        if a == i64::MIN && b == i64::MIN {
            bail!("the agent has committed neither digest");
        }
        Ok(if a >= b { 0 } else { 1 })
    }
}

fn opt_s(v: Option<i64>) -> String {
    v.map_or_else(|| "-".into(), |ns| format!("{:.6}", secs(ns)))
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    sorted[rank - 1]
}

struct Dist {
    sorted: Vec<f64>,
}

impl Dist {
    fn new(mut v: Vec<f64>) -> Dist {
        v.sort_by(f64::total_cmp);
        Dist { sorted: v }
    }

    fn line(&self) -> String {
        let s = &self.sorted;
        if s.is_empty() {
            return "no samples".into();
        }
        format!(
            "min {:.3}  median {:.3}  p90 {:.3}  p99 {:.3}  max {:.3} s",
            s[0],
            pct(s, 0.5),
            pct(s, 0.9),
            pct(s, 0.99),
            s[s.len() - 1]
        )
    }

    fn median(&self) -> Option<f64> {
        (!self.sorted.is_empty()).then(|| pct(&self.sorted, 0.5))
    }
}

fn report(what: &str, samples: &[Sample], goal: f64) -> String {
    let start = Dist::new(samples.iter().map(|s| secs(s.start)).collect());
    let within = start.sorted.iter().filter(|&&v| v <= goal).count();
    let n = start.sorted.len();
    let part =
        |f: fn(&Sample) -> Option<i64>| Dist::new(samples.iter().filter_map(f).map(secs).collect());
    let create = part(|s| s.create);
    let notice = part(|s| s.drain_notice);
    let die = part(|s| s.old_die);
    let commit = part(|s| s.commit);
    let med = |d: &Dist| d.median().map_or("-".into(), |v| format!("{v:.3}"));
    // Medians of the steps between the marks, per sample.
    let step = |f: fn(&Sample) -> Option<i64>| {
        med(&Dist::new(samples.iter().filter_map(f).map(secs).collect()))
    };
    let mut out = String::new();
    out += &format!("  {what} ({n} samples)\n");
    out += &format!("    nudge -> new container start: {}\n", start.line());
    out += &format!(
        "    within {goal} s: {within}/{n} ({:.1} %)\n",
        if n == 0 {
            0.0
        } else {
            within as f64 * 100.0 / n as f64
        }
    );
    out += &format!(
        "    marks after the nudge (median s): new container created {}, hub told draining {}, old worker died {}, new started {}, committed {}\n",
        med(&create), med(&notice), med(&die), med(&start), med(&commit)
    );
    out += &format!(
        "    steps (median s): nudge->create {} | create->old died {} | old died->new started {}\n",
        step(|s| s.create),
        step(|s| Some(s.old_die? - s.create?)),
        step(|s| Some(s.start - s.old_die?)),
    );
    out += &format!(
        "    nudge -> committed (includes stable_for 1 s): {}\n",
        commit.line()
    );
    out
}

fn closing(name: &str, samples: &[Sample], goal: f64) -> String {
    let d = Dist::new(samples.iter().map(|s| secs(s.start)).collect());
    if d.sorted.is_empty() {
        return format!("{name}: 0 samples");
    }
    let p99 = pct(&d.sorted, 0.99);
    format!(
        "{name}: {} samples, p99 {p99:.2} s, goal <= {goal} s: {}",
        d.sorted.len(),
        if p99 <= goal { "met" } else { "missed" }
    )
}

fn config(a: &Args, dir: &Path, hub: &MockHub, token: &Path) -> String {
    let repo = format!("{}/{}", a.registry, a.repo);
    let port = a.port;
    format!(
        r#"[agent]
id = "{id}"
state_dir = "{state}"
control_socket = "{sock}"

[docker]
host = "{docker}"

[image]
repository = "{repo}"
tag = "{TAG}"
poll_interval = "1h"
poll_jitter = "0s"
insecure = true

[worker]
name = "{id}-worker"
network = "host"
gpus = "none"
stop_timeout = "5s"
env = {{ PORT = "{port}" }}

[worker.health]
http = "http://127.0.0.1:{port}/cgi-bin/health"
timeout = "15s"
stable_for = "1s"

[worker.drain]
http = "http://127.0.0.1:{port}/cgi-bin/drain"
timeout = "60s"

[gpu]
check = false

[hub]
url = "{hub}"
token_file = "{token}"
# Nudges name the digest to deploy (deployed only when the hub decides),
# many times an hour.
desired_from_hub = true
max_swaps_per_hour = 1000
"#,
        id = a.agent_id,
        state = dir.join("state").display(),
        sock = dir.join("agent.sock").display(),
        docker = a.docker_host,
        hub = hub.url(),
        token = token.display(),
    )
}

/// Removes the benchmark's containers (a previous run's too).
async fn remove_containers(docker: &bollard::Docker, id: &str) {
    let filters: HashMap<String, Vec<String>> =
        HashMap::from([("label".into(), vec![format!("{LABEL_AGENT}={id}")])]);
    let opts = bollard::query_parameters::ListContainersOptions {
        all: true,
        filters: Some(filters),
        ..Default::default()
    };
    if let Ok(cs) = docker.list_containers(Some(opts)).await {
        for c in cs {
            if let Some(cid) = c.id {
                let rm = bollard::query_parameters::RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                };
                let _ = docker.remove_container(&cid, Some(rm)).await;
            }
        }
    }
}

async fn run(a: Args) -> Result<()> {
    gpu_agent::init_tls();
    let (dir, _tmp) = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            (std::fs::canonicalize(d)?, None)
        }
        None => {
            let t = tempfile::tempdir()?;
            (t.path().to_owned(), Some(t))
        }
    };
    let _ = std::fs::remove_dir_all(dir.join("state"));
    std::fs::create_dir_all(dir.join("state"))?;
    if !a.agent_bin.is_file() {
        bail!(
            "no gpu-agent binary at {} (build it: cargo build --release -p gpu-agent --bin gpu-agent)",
            a.agent_bin.display()
        );
    }

    let reg = Registry {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
        base: format!("http://{}", a.registry),
        repo: a.repo.clone(),
    };
    let digests = [reg.digest("v1").await?, reg.digest("v2").await?];
    if digests[0] == digests[1] {
        bail!("{}:v1 and :v2 have the same digest", a.repo);
    }
    reg.retag("v1", TAG).await?;

    let engine = BollardEngine::connect(&a.docker_host, &a.agent_id)
        .await
        .map_err(|e| anyhow!("connecting to the engine at {}: {e}", a.docker_host))?;
    let docker = engine.docker().clone();
    remove_containers(&docker, &a.agent_id).await;

    // The engine's container events of this agent, from now on.
    let filters: HashMap<String, Vec<String>> = HashMap::from([
        ("type".into(), vec!["container".into()]),
        (
            "event".into(),
            vec!["create".into(), "start".into(), "die".into()],
        ),
        (
            "label".into(),
            vec![format!("{LABEL_AGENT}={}", a.agent_id)],
        ),
    ]);
    let (tx, events) = mpsc::unbounded_channel();
    let mut stream = docker.events(Some(EventsOptions {
        filters: Some(filters),
        ..Default::default()
    }));
    tokio::spawn(async move {
        while let Some(ev) = stream.next().await {
            let Ok(ev) = ev else { break };
            let attrs = ev.actor.and_then(|a| a.attributes).unwrap_or_default();
            let e = EngineEvent {
                action: ev.action.unwrap_or_default(),
                digest: attrs.get(LABEL_DIGEST).cloned().unwrap_or_default(),
                time_ns: ev.time_nano.unwrap_or_default(),
            };
            if tx.send(e).is_err() {
                break;
            }
        }
    });

    let hub = MockHub::start(Some(TOKEN.into())).await?;
    let token = dir.join("hub-token");
    std::fs::write(&token, format!("{TOKEN}\n"))?;
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let cfg = dir.join("agent.toml");
    std::fs::write(&cfg, config(&a, &dir, &hub, &token))?;

    println!(
        "    agent {} on {}, worker port {}, hub {}, registry {}/{} (v1 {}, v2 {})",
        a.agent_bin.display(),
        a.docker_host,
        a.port,
        hub.url(),
        a.registry,
        a.repo,
        &digests[0][..19],
        &digests[1][..19]
    );
    let agent = AgentProc::spawn(&a.agent_bin, &cfg, &dir.join("agent.log"))?;
    let samples = std::fs::File::create(dir.join("samples.tsv"))?;
    let mut b = Bench {
        a,
        dir: dir.clone(),
        hub,
        agent,
        events,
        samples,
    };
    writeln!(
        b.samples,
        "mode\tround\tstart_s\tcreate_s\tdrain_notice_s\told_die_s\tcommit_s"
    )?;

    // The first deploy and the event stream.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        b.agent.alive()?;
        if !successes(&dir.join("state"), &digests[0]).is_empty()
            && b.hub.stream_count(&b.a.agent_id) >= 1
        {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "no first deploy or no event stream within 120 s; agent log:\n{}",
                b.agent.tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the first deploy's notices and reports go out.
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("    first deploy committed, event stream open");

    let goal = b.a.goal.as_secs_f64();
    let (nudges, plain) = (b.a.nudges, b.a.plain);
    let named = b.run_mode(false, nudges, &reg, &digests).await?;
    let plain_s = if plain > 0 {
        b.run_mode(true, plain, &reg, &digests).await?
    } else {
        Vec::new()
    };
    let id = b.a.agent_id.clone();
    drop(b);
    // The worker stays after the agent stops: remove it.
    remove_containers(&docker, &id).await;

    println!();
    println!("Nudge -> new worker container starting (engine `start` event), poll_interval 1h");
    print!("{}", report("nudge naming the digest", &named, goal));
    if !plain_s.is_empty() {
        print!(
            "{}",
            report(
                "plain nudge after the tag moved (adds the registry HEAD)",
                &plain_s,
                goal
            )
        );
    }
    println!("  raw: {}", dir.join("samples.tsv").display());
    println!();
    println!("{}", closing("nudge->start", &named, goal));
    if !plain_s.is_empty() {
        println!("{}", closing("plain nudge->start", &plain_s, goal));
    }
    Ok(())
}

fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(msg) => return usage(&msg),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nudge_bench: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nudge_bench: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
