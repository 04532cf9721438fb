//! A simulated fleet of hosts against a real etcd: each host runs the agent's
//! real update core (`Updater`: check, pull, the fleet slot, drain, swap,
//! verify, commit or roll back, the journal on disk) with the real fleet gate
//! (`EtcdGate`: lease, watches, slot queue, canaries, halts), on a fake engine
//! (`docker::fake`, feature `sim`) whose new worker must stay up for `--swap`
//! (`worker.health.stable_for`) before it is verified; a bad digest's worker
//! exits at start, so it is rolled back for real. Each host loops as the
//! daemon does: a check, then a wait for the gate's `changed()`.
//! Prints, for each `--max-unavailable`: time to roll the fleet, the most hosts
//! ever unavailable at once (draining, swapping, verifying or rolling back),
//! etcd requests per host per minute idle and during the rollout, time from
//! `rollout start` to the first drain, and how many hosts a bad digest reached
//! before the halt (with 1 canary, and with none). A rollout that makes no
//! progress for `--stall` is a failure: the waiting hosts' reasons are printed.
//!
//!     cargo run --release --features sim --example fleet_sim -- --etcd http://127.0.0.1:24791,... --hosts 1000
//!
//! scripts/bench-fleet.sh starts a 3-member etcd and runs it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use gpu_agent::docker::fake::{FakeEngine, OnStart};
use gpu_agent::fleet::gate::GateOptions;
use gpu_agent::fleet::keys::Keys;
use gpu_agent::fleet::{admin, Etcd, EtcdGate, EtcdOptions, FleetGate, Policy, RolloutState};
use gpu_agent::registry::{
    EngineCredentials, ImageName, Policy as TagPolicy, RegistryError, Resolved,
};
use gpu_agent::update::ports::{Registry, SystemClock};
use gpu_agent::update::{Event, Journal, Outcome as Ended, Phase, Ports, State, Trigger, Updater};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    /// etcd client URLs, comma-separated.
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    #[arg(long, default_value_t = 1000)]
    hosts: u32,
    /// max_unavailable settings to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1%,5%,10%")]
    max_unavailable: Vec<String>,
    /// How long a new worker must stay up before it is verified (the swap's length).
    #[arg(long, default_value = "2s")]
    swap: humantime::Duration,
    /// The canaries' bake time in the good rollout.
    #[arg(long, default_value = "5s")]
    bake: humantime::Duration,
    /// How long to measure an idle fleet.
    #[arg(long, default_value = "60s")]
    idle: humantime::Duration,
    /// etcd connections shared by the simulated hosts.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Host lease TTL (keep-alive every third of it).
    #[arg(long, default_value = "60s")]
    lease_ttl: humantime::Duration,
    /// A rollout with no host finishing for this long has stalled (a failure).
    #[arg(long, default_value = "120s")]
    stall: humantime::Duration,
    /// Where the hosts' state folders go (emptied first).
    #[arg(long, default_value = "target/bench-fleet/hosts")]
    state: PathBuf,
}

const REPO: &str = "sim.example/acme/worker";
const GOOD0: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

fn digest(n: u32) -> String {
    format!("sha256:{n:064x}")
}

/// The registry of every host: the tag names the first digest (a group's
/// rollout names the others).
struct SimRegistry;

impl Registry for SimRegistry {
    fn resolve<'a>(
        &'a self,
        _image: &'a ImageName,
        _policy: &'a TagPolicy,
    ) -> BoxFuture<'a, Result<Resolved, RegistryError>> {
        async {
            Ok(Resolved {
                tag: "stable".into(),
                digest: GOOD0.into(),
            })
        }
        .boxed()
    }
    fn engine_credentials<'a>(
        &'a self,
        _image: &'a ImageName,
    ) -> BoxFuture<'a, Result<Option<EngineCredentials>, RegistryError>> {
        async { Ok(None) }.boxed()
    }
}

/// What the whole simulated fleet shares: the measures.
#[derive(Default)]
struct Meter {
    unavailable: AtomicU32,
    max_unavailable: AtomicU32,
    first_drain: Mutex<Option<Instant>>,
    /// (digest, host) of every rollback: the hosts a bad digest reached.
    reached: Mutex<BTreeSet<(String, u32)>>,
    /// The digest each host runs.
    on: Mutex<BTreeMap<u32, String>>,
}

struct Host {
    id: u32,
    gate: Arc<EtcdGate>,
    engine: FakeEngine,
    requests: Arc<AtomicU64>,
}

fn host_config(dir: &Path, id: &str, worker: &str, swap: Duration) -> String {
    format!(
        r#"
[agent]
id = "{id}"
state_dir = "{dir}"
[docker]
host = "unix:///nonexistent/docker.sock"
[image]
repository = "{REPO}"
tag = "stable"
poll_interval = "1h"
[worker]
name = "{worker}"
gpus = "none"
stop_timeout = "1s"
[worker.health]
timeout = "60s"
stable_for = "{swap}ms"
"#,
        dir = dir.display(),
        swap = swap.as_millis()
    )
}

/// One host's agent: the real update core over a fake engine, following its
/// group as the daemon does (a check, then a wait for the gate).
async fn run_host(h: Arc<Host>, meter: Arc<Meter>, dir: PathBuf, swap: Duration) -> Result<()> {
    let id = format!("host-{:04}", h.id);
    let worker = format!("w-{:04}", h.id);
    std::fs::create_dir_all(&dir)?;
    let settings = gpu_agent::config::load_from_strs(&[(
        dir.join("agent.toml"),
        host_config(&dir, &id, &worker, swap),
    )])?;
    let mut state = State::default();
    state.commit(GOOD0);
    Journal::open(&dir)?.save(&state)?;
    h.engine.add_image(&settings.image.name.pull_ref(GOOD0));
    h.engine.add_container(&worker, GOOD0, true);
    let ports = Ports {
        registry: Arc::new(SimRegistry),
        probe: Arc::new(gpu_agent::worker::WorkerClient::new()),
        clock: Arc::new(SystemClock),
        trust: None,
    };
    let mut up = Updater::new(
        h.engine.clone(),
        ports,
        Arc::new(settings),
        CancellationToken::new(),
    )?;
    up.set_fleet(h.gate.clone());
    let disrupted = AtomicBool::new(false);
    let (m, n) = (meter.clone(), h.id);
    up.subscribe(Box::new(move |e| match e {
        Event::Phase(p) => {
            let down = matches!(
                p,
                Phase::Draining | Phase::Swapping | Phase::Verifying | Phase::RollingBack
            );
            if down && !disrupted.swap(true, Ordering::SeqCst) {
                let mut f = m.first_drain.lock().unwrap();
                if f.is_none() {
                    *f = Some(Instant::now());
                }
                let now = m.unavailable.fetch_add(1, Ordering::SeqCst) + 1;
                m.max_unavailable.fetch_max(now, Ordering::SeqCst);
            } else if !down && disrupted.swap(false, Ordering::SeqCst) {
                m.unavailable.fetch_sub(1, Ordering::SeqCst);
            }
        }
        Event::History { entry, .. } => {
            let Some(to) = entry.to.clone() else { return };
            match entry.outcome {
                Ended::Success => {
                    m.on.lock().unwrap().insert(n, to);
                }
                Ended::RolledBack => {
                    m.reached.lock().unwrap().insert((to, n));
                }
                _ => {}
            }
        }
        _ => {}
    }));
    meter.on.lock().unwrap().insert(h.id, GOOD0.into());
    up.reconcile().await?;
    loop {
        if let Err(e) = up.check(Trigger::Poll).await {
            eprintln!("{id}: check failed: {e}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tokio::select! {
            _ = FleetGate::changed(&*h.gate) => {}
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}

fn total(hosts: &[Arc<Host>]) -> u64 {
    hosts
        .iter()
        .map(|h| h.requests.load(Ordering::Relaxed))
        .sum()
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    if a.etcd.is_empty() {
        bail!("give --etcd URL[,URL...]");
    }
    let mut pool = Vec::new();
    for _ in 0..a.connections {
        pool.push(
            Etcd::connect(&EtcdOptions::new(a.etcd.clone()))
                .await
                .context("connecting to etcd")?,
        );
    }
    let admin_etcd = pool[0].with_counter(Arc::new(AtomicU64::new(0)));
    println!(
        "{} simulated hosts, swap {}, bake {}, etcd {}",
        a.hosts,
        a.swap,
        a.bake,
        a.etcd.join(",")
    );
    println!("| max_unavailable | slots | roll the fleet | most unavailable | req/host/min idle | req/host/min rolling | req/host per rollout | start → first drain | bad digest reached (canary 1) | bad digest reached (canary 0) |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut next = 1u32;
    for mu in &a.max_unavailable {
        let group = format!("sim-{}-{}", mu.replace('%', "pct"), std::process::id());
        let keys = Keys::new(&group);
        let max_unavailable = mu.parse().map_err(anyhow::Error::msg)?;
        let policy = Policy {
            max_unavailable,
            canary: 1,
            bake: *a.bake,
            halt_after: 1,
            halt_ratio: 0,
        };
        admin::set_policy(&admin_etcd, &keys, &policy).await?;
        let meter = Arc::new(Meter::default());
        let mut hosts = Vec::new();
        let mut tasks = Vec::new();
        let broken = Arc::new(AtomicU32::new(0));
        // The agent takes absolute state folders only.
        std::fs::create_dir_all(&a.state)?;
        let base = a.state.canonicalize()?.join(&group);
        let _ = std::fs::remove_dir_all(&base);
        for i in 0..a.hosts {
            let requests = Arc::new(AtomicU64::new(0));
            let etcd = pool[i as usize % pool.len()].with_counter(requests.clone());
            let mut o = GateOptions::new(format!("host-{i:04}"), group.clone());
            o.lease_ttl = *a.lease_ttl;
            let h = Arc::new(Host {
                id: i,
                gate: Arc::new(EtcdGate::start(etcd, o)),
                engine: FakeEngine::new(&format!("host-{i:04}")),
                requests,
            });
            hosts.push(h.clone());
            let (m, dir, swap) = (meter.clone(), base.join(format!("host-{i:04}")), *a.swap);
            let failed = broken.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = run_host(h, m, dir, swap).await {
                    eprintln!("host {i}: {e:#}");
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        for h in &hosts {
            if !h.gate.connected(Duration::from_secs(120)).await {
                bail!("host {} did not reach etcd", h.id);
            }
        }
        // Let the joins settle, then measure an idle fleet.
        tokio::time::sleep(Duration::from_secs(3)).await;
        if broken.load(Ordering::SeqCst) > 0 {
            bail!("{} hosts did not start", broken.load(Ordering::SeqCst));
        }
        let r0 = total(&hosts);
        let t0 = Instant::now();
        tokio::time::sleep(*a.idle).await;
        let idle_rate =
            (total(&hosts) - r0) as f64 / f64::from(a.hosts) / t0.elapsed().as_secs_f64() * 60.0;

        // A good rollout.
        let good = digest(next);
        next += 1;
        let r0 = total(&hosts);
        let start = Instant::now();
        admin::start_rollout(&admin_etcd, &keys, &good, "sim").await?;
        let (mut last_done, mut progress) = (0u32, Instant::now());
        loop {
            let done = meter
                .on
                .lock()
                .unwrap()
                .values()
                .filter(|d| **d == good)
                .count() as u32;
            if done == a.hosts {
                break;
            }
            if done != last_done {
                (last_done, progress) = (done, Instant::now());
            }
            if progress.elapsed() > *a.stall {
                stalled(&hosts, &meter, &good);
                bail!(
                    "the rollout stalled: {done} of {} hosts on {good}, none finished for {}",
                    a.hosts,
                    a.stall
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let roll = start.elapsed();
        let per_host = (total(&hosts) - r0) as f64 / f64::from(a.hosts);
        let roll_rate = per_host / roll.as_secs_f64() * 60.0;
        let first = meter
            .first_drain
            .lock()
            .unwrap()
            .map(|t| t.duration_since(start))
            .unwrap_or_default();
        let slots = policy.max_unavailable.slots(a.hosts);
        let most = meter.max_unavailable.load(Ordering::SeqCst);

        // A bad digest, with one canary, then with none.
        let mut reached = Vec::new();
        for canary in [1, 0] {
            let badd = digest(next);
            next += 1;
            for h in &hosts {
                h.engine.on_start(&badd, OnStart::Exits(3));
            }
            admin::set_policy(
                &admin_etcd,
                &keys,
                &Policy {
                    canary,
                    ..policy.clone()
                },
            )
            .await?;
            admin::start_rollout(&admin_etcd, &keys, &badd, "sim-bad").await?;
            let s = Instant::now();
            loop {
                let st = admin::get_rollout(&admin_etcd, &keys)
                    .await?
                    .map(|r| r.0.state);
                if st == Some(RolloutState::Halted) {
                    break;
                }
                if s.elapsed() > Duration::from_secs(600) {
                    bail!("the bad digest never halted");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Give stragglers time to show (none should start after the halt).
            tokio::time::sleep(*a.swap + Duration::from_secs(2)).await;
            reached.push(
                meter
                    .reached
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(d, _)| *d == badd)
                    .count(),
            );
            admin::abort(&admin_etcd, &keys).await?;
        }
        let most = most.max(meter.max_unavailable.load(Ordering::SeqCst));
        println!(
            "| {mu} | {slots} | {:.1} s | {most} | {idle_rate:.2} | {roll_rate:.1} | {per_host:.1} | {:.0} ms | {} | {} |",
            roll.as_secs_f64(),
            first.as_secs_f64() * 1000.0,
            reached[0],
            reached[1]
        );
        if most > slots {
            bail!("{most} hosts were unavailable at once, over the cap of {slots}");
        }
        for t in &tasks {
            t.abort();
        }
        for t in &tasks {
            while !t.is_finished() {
                tokio::task::yield_now().await;
            }
        }
        for h in hosts {
            if let Some(gate) = Arc::try_unwrap(h)
                .ok()
                .and_then(|h| Arc::try_unwrap(h.gate).ok())
            {
                gate.kill().await;
            }
        }
        let _ = std::fs::remove_dir_all(&base);
        // Leave etcd tidy for the next group.
        admin_etcd
            .delete(
                keys.prefix().to_string(),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await?;
    }
    Ok(())
}

/// A stalled rollout: what the hosts not yet on `good` wait for.
fn stalled(hosts: &[Arc<Host>], meter: &Meter, good: &str) {
    let on = meter.on.lock().unwrap();
    let behind: Vec<_> = hosts
        .iter()
        .filter(|h| on.get(&h.id).map(String::as_str) != Some(good))
        .collect();
    eprintln!("{} hosts not on {good}; the first 20:", behind.len());
    for h in behind.iter().take(20) {
        let v = FleetGate::view(&*h.gate);
        eprintln!(
            "  host-{:04}: on {} slot {:?} etcd {} waiting {}",
            h.id,
            on.get(&h.id).map(String::as_str).unwrap_or("-"),
            v.slot,
            if v.etcd_reachable { "up" } else { "down" },
            v.waiting.as_deref().unwrap_or("-")
        );
    }
}
