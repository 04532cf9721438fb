//! A simulated fleet of hosts against a real etcd: each host runs the real
//! fleet gate (`EtcdGate`: lease, watches, slot queue, canaries, halts) with a
//! fake engine whose swap takes `--swap`, and follows the group's rollouts as
//! the agent does (desired digest → decide → swap → report outcome → release).
//! Prints, for each `--max-unavailable`: time to roll the fleet, the most hosts
//! ever unavailable at once, etcd requests per host per minute idle and during
//! the rollout, time from `rollout start` to the first drain, and how many hosts
//! a bad digest reached before the halt (with 1 canary, and with none).
//!
//!     cargo run --release --example fleet_sim -- --etcd http://127.0.0.1:24791,... --hosts 1000
//!
//! scripts/bench-fleet.sh starts a 3-member etcd and runs it.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use gpu_agent::fleet::gate::GateOptions;
use gpu_agent::fleet::keys::Keys;
use gpu_agent::fleet::{
    admin, Decision, Etcd, EtcdGate, EtcdOptions, FleetGate, HostReport, Outcome, Policy,
    RolloutState,
};

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
    /// How long a fake swap (drain, swap, verify) takes.
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
}

const GOOD0: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

fn digest(n: u32) -> String {
    format!("sha256:{n:064x}")
}

/// What the whole simulated fleet shares: the measures.
#[derive(Default)]
struct Meter {
    unavailable: AtomicU32,
    max_unavailable: AtomicU32,
    first_drain: Mutex<Option<Instant>>,
    reached: Mutex<BTreeSet<(String, u32)>>,
    on: Mutex<std::collections::BTreeMap<u32, String>>,
}

struct Host {
    id: u32,
    gate: EtcdGate,
    requests: Arc<AtomicU64>,
}

async fn run_host(
    h: Arc<Host>,
    meter: Arc<Meter>,
    bad: Arc<Mutex<BTreeSet<String>>>,
    swap: Duration,
) {
    let mut current = GOOD0.to_string();
    let mut failed: BTreeSet<String> = BTreeSet::new();
    h.gate
        .report_host(HostReport {
            digest: Some(current.clone()),
            phase: "idle".into(),
            gpu: "ok".into(),
            last_event: None,
        })
        .await;
    loop {
        let want = h.gate.desired();
        let todo = want.filter(|w| *w != current && !failed.contains(w));
        let Some(want) = todo else {
            h.gate.changed().await;
            continue;
        };
        match h.gate.decide(&want).await {
            Decision::Go { .. } => {
                {
                    let mut f = meter.first_drain.lock().unwrap();
                    if f.is_none() {
                        *f = Some(Instant::now());
                    }
                }
                let n = meter.unavailable.fetch_add(1, Ordering::SeqCst) + 1;
                meter.max_unavailable.fetch_max(n, Ordering::SeqCst);
                meter.reached.lock().unwrap().insert((want.clone(), h.id));
                tokio::time::sleep(swap).await;
                let is_bad = bad.lock().unwrap().contains(&want);
                meter.unavailable.fetch_sub(1, Ordering::SeqCst);
                let outcome = if is_bad {
                    failed.insert(want.clone());
                    Outcome::RolledBack
                } else {
                    current = want.clone();
                    meter.on.lock().unwrap().insert(h.id, want.clone());
                    Outcome::Verified
                };
                h.gate
                    .report_host(HostReport {
                        digest: Some(current.clone()),
                        phase: "idle".into(),
                        gpu: "ok".into(),
                        last_event: None,
                    })
                    .await;
                let mut tries = 0;
                while let Err(e) = h.gate.report_outcome(&want, outcome, "simulated").await {
                    tries += 1;
                    if tries > 20 {
                        eprintln!("host {}: outcome not recorded: {e}", h.id);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                while h.gate.release().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            Decision::Halted { .. } => {
                failed.insert(want);
            }
            Decision::Wait { .. } => h.gate.changed().await,
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
        let bad = Arc::new(Mutex::new(BTreeSet::new()));
        let mut hosts = Vec::new();
        let mut tasks = Vec::new();
        for i in 0..a.hosts {
            let requests = Arc::new(AtomicU64::new(0));
            let etcd = pool[i as usize % pool.len()].with_counter(requests.clone());
            let mut o = GateOptions::new(format!("host-{i:04}"), group.clone());
            o.lease_ttl = *a.lease_ttl;
            let h = Arc::new(Host {
                id: i,
                gate: EtcdGate::start(etcd, o),
                requests,
            });
            hosts.push(h.clone());
            tasks.push(tokio::spawn(run_host(
                h,
                meter.clone(),
                bad.clone(),
                *a.swap,
            )));
        }
        for h in &hosts {
            if !h.gate.connected(Duration::from_secs(120)).await {
                bail!("host {} did not reach etcd", h.id);
            }
        }
        // Let the joins settle, then measure an idle fleet.
        tokio::time::sleep(Duration::from_secs(3)).await;
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
            if start.elapsed() > Duration::from_secs(3600) {
                bail!("the rollout did not finish in an hour ({done} done)");
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
            bad.lock().unwrap().insert(badd.clone());
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
        for t in tasks {
            t.abort();
        }
        for h in hosts {
            if let Ok(h) = Arc::try_unwrap(h) {
                h.gate.kill().await;
            }
        }
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
