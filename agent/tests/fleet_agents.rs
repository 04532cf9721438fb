//! Eight real agents (the built `gpu-agent`, as the other integration tests
//! start it) in one fleet group on a real 3-member etcd, each with its own
//! worker on the private engine: a rollout two at a time after one canary, an
//! abort while hosts wait in the slot queue, and a bad image that only the
//! canary tries before the group halts. `gpu-fleet` is the built binary.
//!
//! How "never more than N at once" is measured: for every update a host
//! makes, its window runs from the worker's own `drain` event (the first
//! thing an update does to a worker, and only after the agent took its slot)
//! to the agent's history line for the end of the update (written after the
//! verification, before the slot is given back). Both are stamped when they
//! happen, on the one clock of this machine, so nothing is missed between
//! samples; and each window lies inside the time the host held its slot, so
//! a correct agent can never fail the count. The engine's own events (kill,
//! die, start) would show only the middle of each window: the drain comes
//! before them and the verification after.

mod common;
mod common_etcd;

use std::collections::BTreeMap;

use common::*;
use common_etcd::EtcdCluster;
use serde_json::Value;

const HOSTS: usize = 8;
const GROUP: &str = "fleet-agents";

/// `gpu-fleet --etcd … --group GROUP args`: exit code and output.
async fn fleet(c: &EtcdCluster, args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gpu-fleet"))
        .arg("--etcd")
        .arg(c.endpoints().join(","))
        .args(["--group", GROUP])
        .args(args)
        .output()
        .await
        .expect("running gpu-fleet");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

async fn fleet_ok(c: &EtcdCluster, args: &[&str]) -> String {
    let (code, text) = fleet(c, args).await;
    assert_eq!(code, 0, "gpu-fleet {args:?}: {text}");
    text
}

/// `gpu-fleet args --json`, which must exit `code`.
async fn fleet_json_exit(c: &EtcdCluster, args: &[&str], code: i32) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (got, text) = fleet(c, &all).await;
    assert_eq!(got, code, "gpu-fleet {all:?}: {text}");
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("gpu-fleet {args:?} --json ({e}): {text}"))
}

async fn fleet_json(c: &EtcdCluster, args: &[&str]) -> Value {
    fleet_json_exit(c, args, 0).await
}

/// One host: its setup (worker name, port, state folder) and its agent.
struct Host {
    s: Setup,
    agent: Agent,
}

impl Host {
    fn id(&self) -> &str {
        &self.s.agent_id
    }

    /// Milliseconds of the worker's `drain` events at or after `since`.
    fn drains_since(&self, since: u64) -> Vec<u64> {
        self.s
            .events()
            .into_iter()
            .filter(|(t, _, e)| *t >= since && e == "drain")
            .map(|(t, _, _)| t)
            .collect()
    }

    /// The history's update entries that ended (any outcome), with their time in ms.
    fn ends(&self) -> Vec<(u64, Value)> {
        self.s
            .history()
            .into_iter()
            .filter(|e| e["kind"] == "update")
            .map(|e| (ms(&e["at"]), e))
            .collect()
    }

    /// The updates since `since`: from each drain to the history line that ended it.
    fn windows_since(&self, since: u64) -> Vec<(u64, u64)> {
        let ends = self.ends();
        self.drains_since(since)
            .into_iter()
            .map(|d| {
                let end = ends
                    .iter()
                    .map(|(t, _)| *t)
                    .find(|t| *t >= d)
                    .unwrap_or_else(|| {
                        panic!(
                            "{}: a drain at {d} with no history line after it: {:#?}\n{}",
                            self.id(),
                            self.s.history(),
                            self.agent.log()
                        )
                    });
                (d, end)
            })
            .collect()
    }

    async fn status(&self) -> Value {
        status(&self.s).await
    }

    async fn container_id(&self) -> String {
        self.s.running().await.expect("a worker runs").id
    }
}

/// RFC 3339 → unix milliseconds.
fn ms(v: &Value) -> u64 {
    let t = time::OffsetDateTime::parse(
        v.as_str().expect("a time"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("an RFC 3339 time");
    (t.unix_timestamp_nanos() / 1_000_000) as u64
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The most windows open at one moment (an end and a start in the same
/// millisecond do not overlap: the next host drains only after the last one
/// gave its slot back).
fn most_at_once(windows: &[(u64, u64)]) -> usize {
    let mut edges: Vec<(u64, i32)> = windows
        .iter()
        .flat_map(|&(s, e)| [(s, 1), (e, -1)])
        .collect();
    edges.sort();
    let (mut n, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        n += d;
        most = most.max(n);
    }
    most as usize
}

/// Every host's windows since `since`, by host.
fn all_windows(hosts: &[Host], since: u64) -> BTreeMap<String, Vec<(u64, u64)>> {
    hosts
        .iter()
        .map(|h| (h.id().to_string(), h.windows_since(since)))
        .collect()
}

/// Waits until every agent's `fleet` status object passes `ok`.
async fn wait_fleet_status(hosts: &[Host], what: &str, ok: impl Fn(&Value) -> bool) {
    for h in hosts {
        let seen = wait_for(WAIT, || async {
            let st = h.status().await;
            ok(&st["fleet"]).then_some(())
        })
        .await;
        if seen.is_none() {
            panic!(
                "{}: fleet status never {what}: {}\n{}",
                h.id(),
                h.status().await,
                h.agent.log()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_agents_roll_out_within_max_unavailable_abort_and_halt_at_the_canary() {
    let etcd = EtcdCluster::start(3);
    let endpoints = etcd
        .endpoints()
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");

    // Eight hosts on one registry and one repository, each with its own
    // worker name, port and state folder; all started at once.
    let first = Setup::new("fla0");
    let v1 = first.push("v1", "stable");
    let v2 = first.push("v2", "v2");
    let v3 = first.push("v3", "v3");
    let bad = first.push("crash", "crash");
    let mut setups = vec![first];
    for i in 1..HOSTS {
        let mut s = Setup::with_registry(&format!("fla{i}"), setups[0].registry.shared());
        s.repo = setups[0].repo.clone();
        setups.push(s);
    }
    let hosts: Vec<Host> = setups
        .into_iter()
        .map(|s| {
            let config = s
                .config(
                    "tag = \"stable\"",
                    &s.env(""),
                    &format!(
                        "{}\n[fleet]\netcd = [{endpoints}]\ngroup = \"{GROUP}\"\n",
                        s.drain_table("30s")
                    ),
                )
                // Fleet changes wake the agents through etcd's watches; the
                // poll is only the backstop (a waiting host's check creates
                // and removes the prepared container each time).
                .replace("poll_interval = \"1s\"", "poll_interval = \"3s\"");
            let agent = s.start_agent(&config);
            Host { s, agent }
        })
        .collect();
    // With no rollout yet, every host follows the registry; a first deploy
    // disrupts nothing and takes no slot.
    for h in &hosts {
        h.s.assert_converged(&v1, "v1", &h.agent).await;
    }
    let listed = fleet_json(&etcd, &["hosts"]).await;
    assert_eq!(listed["hosts"].as_array().unwrap().len(), HOSTS, "{listed}");

    // 1. v2, one canary, then two at a time.
    fleet_ok(
        &etcd,
        &[
            "policy",
            "set",
            "--max-unavailable",
            "2",
            "--canary",
            "1",
            "--bake",
            "2s",
        ],
    )
    .await;
    let since = now_ms();
    fleet_ok(&etcd, &["rollout", "start", &v2]).await;
    let (code, text) = fleet(&etcd, &["rollout", "status", "--wait", "--timeout", "4m"]).await;
    assert_eq!(code, 0, "rollout status --wait: {text}");
    for h in &hosts {
        h.s.assert_converged(&v2, "v2", &h.agent).await;
        let e = h.s.wait_history(&v2, "success", &h.agent).await;
        assert_eq!(e["trigger"], "fleet", "{}: {e}", h.id());
        assert_eq!(e["from"], v1, "{}: {e}", h.id());
    }
    let windows = all_windows(&hosts, since);
    for (id, w) in &windows {
        assert_eq!(w.len(), 1, "{id} drained once: {windows:?}");
    }
    let flat: Vec<(u64, u64)> = windows.values().flatten().copied().collect();
    let most = most_at_once(&flat);
    eprintln!("v2: at most {most} hosts disrupted at once; windows {windows:?}");
    assert!(most <= 2, "{most} hosts disrupted at once: {windows:?}");
    // The canary went alone: every other host drained after it committed.
    let canary = *flat.iter().min().unwrap();
    for w in flat.iter().filter(|w| **w != canary) {
        assert!(
            w.0 >= canary.1,
            "{w:?} began before the canary {canary:?} ended"
        );
    }
    let st = fleet_json(&etcd, &["rollout", "status"]).await;
    assert_eq!(st["rollout"]["state"], "complete", "{st}");
    assert_eq!(st["done"], HOSTS, "{st}");
    wait_fleet_status(&hosts, "settled on the complete rollout", |f| {
        f["rollout_state"] == "complete" && f["desired"] == v2 && f["slot"].is_null()
    })
    .await;

    // 2. An abort while hosts wait in the slot queue: v3 one at a time, and
    // abort as soon as one host holds the slot and another queues. Hosts that
    // moved go back to v2 (through the slots); the others stay.
    let since = now_ms();
    fleet_ok(
        &etcd,
        &[
            "rollout",
            "start",
            &v3,
            "--max-unavailable",
            "1",
            "--canary",
            "0",
        ],
    )
    .await;
    let queued = wait_for(WAIT, || async {
        let l = fleet_json(&etcd, &["hosts"]).await;
        let slots: Vec<&str> = l["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|h| h["slot"].as_str())
            .collect();
        (slots.contains(&"holding") && slots.contains(&"queued")).then_some(l)
    })
    .await
    .expect("one host holding the slot for v3 and others queued");
    fleet_ok(&etcd, &["rollout", "abort"]).await;
    let (code, text) = fleet(&etcd, &["rollout", "status", "--wait", "--timeout", "1m"]).await;
    assert_eq!(code, 1, "rollout status --wait after an abort: {text}");
    for h in &hosts {
        h.s.assert_converged(&v2, "v2", &h.agent).await;
    }
    let moved: Vec<&Host> = hosts
        .iter()
        .filter(|h| h.s.history().iter().any(|e| e["to"] == v3))
        .collect();
    assert!(!moved.is_empty(), "the slot holder moved to v3: {queued}");
    for h in &moved {
        let back = h.s.history().into_iter().last().unwrap();
        assert_eq!(
            (&back["to"], &back["outcome"], &back["trigger"]),
            (
                &Value::from(v2.clone()),
                &Value::from("success"),
                &Value::from("fleet")
            ),
            "{}: {:#?}",
            h.id(),
            h.s.history()
        );
    }
    let windows = all_windows(&hosts, since);
    let flat: Vec<(u64, u64)> = windows.values().flatten().copied().collect();
    assert_eq!(
        flat.len(),
        2 * moved.len(),
        "only the hosts that moved drained, twice each: {windows:?}"
    );
    assert!(most_at_once(&flat) <= 1, "max_unavailable 1: {windows:?}");
    // No host is left waiting, nor in the queue.
    wait_fleet_status(&hosts, "back on v2 with nothing to wait for", |f| {
        f["rollout_state"] == "aborted"
            && f["desired"] == v2
            && f["slot"].is_null()
            && f["waiting"].is_null()
    })
    .await;
    let l = fleet_json(&etcd, &["hosts"]).await;
    assert!(
        l["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["slot"].is_null()),
        "{l}"
    );

    // 3. A bad image with one canary: the canary alone tries it, rolls back,
    // and the digest halts for the group; nobody else drains.
    let before: Vec<String> = {
        let mut ids = Vec::new();
        for h in &hosts {
            ids.push(h.container_id().await);
        }
        ids
    };
    let since = now_ms();
    fleet_ok(
        &etcd,
        &[
            "rollout",
            "start",
            &bad,
            "--max-unavailable",
            "2",
            "--canary",
            "1",
            "--bake",
            "10m",
        ],
    )
    .await;
    let (code, text) = fleet(&etcd, &["rollout", "status", "--wait", "--timeout", "4m"]).await;
    assert_eq!(code, 1, "rollout status --wait of a halted rollout: {text}");
    // Without --wait, status of a halted rollout exits 1 too.
    let st = fleet_json_exit(&etcd, &["rollout", "status"], 1).await;
    assert_eq!(st["rollout"]["state"], "halted", "{st}");
    assert_eq!(st["failed"], 1, "{st}");
    let tried: Vec<&Host> = hosts
        .iter()
        .filter(|h| h.s.history().iter().any(|e| e["to"] == bad))
        .collect();
    assert_eq!(tried.len(), 1, "exactly one host tried {bad}");
    let canary = tried[0];
    canary
        .s
        .wait_history(&bad, "rolled_back", &canary.agent)
        .await;
    for (h, id) in hosts.iter().zip(&before) {
        if h.id() == canary.id() {
            assert_eq!(h.drains_since(since).len(), 1, "the canary drained once");
            continue;
        }
        assert!(
            h.drains_since(since).is_empty(),
            "{} drained during the halted rollout",
            h.id()
        );
        assert_eq!(
            &h.container_id().await,
            id,
            "{}'s worker was replaced",
            h.id()
        );
    }
    canary.s.assert_converged(&v2, "v2", &canary.agent).await;
    // The others say why they wait.
    let others: Vec<&Host> = hosts.iter().filter(|h| h.id() != canary.id()).collect();
    for h in &others {
        let seen = wait_for(WAIT, || async {
            let f = h.status().await["fleet"].clone();
            (f["rollout_state"] == "halted"
                && f["waiting"].as_str().is_some_and(|w| w.contains("halted")))
            .then_some(())
        })
        .await;
        assert!(seen.is_some(), "{}: {}", h.id(), h.status().await);
    }
    fleet_ok(&etcd, &["hosts"]).await;

    // Abort: every host stays on v2, and nobody waits any more; resume of an
    // aborted rollout is refused (4).
    fleet_ok(&etcd, &["rollout", "abort"]).await;
    wait_fleet_status(&hosts, "on v2 after the abort", |f| {
        f["rollout_state"] == "aborted" && f["desired"] == v2 && f["waiting"].is_null()
    })
    .await;
    let (code, text) = fleet(&etcd, &["rollout", "resume"]).await;
    assert_eq!(code, 4, "resume after an abort: {text}");
    for (h, id) in hosts.iter().zip(&before) {
        h.s.assert_converged(&v2, "v2", &h.agent).await;
        if h.id() != canary.id() {
            assert!(h.drains_since(since).is_empty(), "{} drained", h.id());
            assert_eq!(
                &h.container_id().await,
                id,
                "{}'s worker was replaced",
                h.id()
            );
        }
    }
}
