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
mod common_fleet;

use common::*;
use common_etcd::EtcdCluster;
use common_fleet::*;
use serde_json::Value;

const HOSTS: usize = 8;
const GROUP: &str = "fleet-agents";

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
    let listed = fleet_json(&etcd, GROUP, &["hosts"]).await;
    assert_eq!(listed["hosts"].as_array().unwrap().len(), HOSTS, "{listed}");

    // 1. v2, one canary, then two at a time.
    fleet_ok(
        &etcd,
        GROUP,
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
    fleet_ok(&etcd, GROUP, &["rollout", "start", &v2]).await;
    let (code, text) = fleet(
        &etcd,
        GROUP,
        &["rollout", "status", "--wait", "--timeout", "4m"],
    )
    .await;
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
    let st = fleet_json(&etcd, GROUP, &["rollout", "status"]).await;
    assert_eq!(st["rollout"]["state"], "complete", "{st}");
    assert_eq!(st["done"], HOSTS, "{st}");
    wait_fleet_status(
        &hosts.iter().collect::<Vec<_>>(),
        "settled on the complete rollout",
        |f| f["rollout_state"] == "complete" && f["desired"] == v2 && f["slot"].is_null(),
    )
    .await;

    // 2. An abort while hosts wait in the slot queue: v3 one at a time, and
    // abort as soon as one host holds the slot and another queues. Hosts that
    // moved go back to v2 (through the slots); the others stay.
    let since = now_ms();
    fleet_ok(
        &etcd,
        GROUP,
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
        let l = fleet_json(&etcd, GROUP, &["hosts"]).await;
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
    fleet_ok(&etcd, GROUP, &["rollout", "abort"]).await;
    let (code, text) = fleet(
        &etcd,
        GROUP,
        &["rollout", "status", "--wait", "--timeout", "1m"],
    )
    .await;
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
    wait_fleet_status(
        &hosts.iter().collect::<Vec<_>>(),
        "back on v2 with nothing to wait for",
        |f| {
            f["rollout_state"] == "aborted"
                && f["desired"] == v2
                && f["slot"].is_null()
                && f["waiting"].is_null()
        },
    )
    .await;
    let l = fleet_json(&etcd, GROUP, &["hosts"]).await;
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
        GROUP,
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
    let (code, text) = fleet(
        &etcd,
        GROUP,
        &["rollout", "status", "--wait", "--timeout", "4m"],
    )
    .await;
    assert_eq!(code, 1, "rollout status --wait of a halted rollout: {text}");
    // Without --wait, status of a halted rollout exits 1 too.
    let st = fleet_json_exit(&etcd, GROUP, &["rollout", "status"], 1).await;
    assert_eq!(st["rollout"]["state"], "halted", "{st}");
    assert_eq!(st["failed"], 1, "{st}");
    assert_eq!(
        st["waiting"],
        HOSTS - 1,
        "the canary failed, the others wait: {st}"
    );
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
    fleet_ok(&etcd, GROUP, &["hosts"]).await;

    // Abort: every host stays on v2, and nobody waits any more; resume of an
    // aborted rollout is refused (4).
    fleet_ok(&etcd, GROUP, &["rollout", "abort"]).await;
    wait_fleet_status(
        &hosts.iter().collect::<Vec<_>>(),
        "on v2 after the abort",
        |f| f["rollout_state"] == "aborted" && f["desired"] == v2 && f["waiting"].is_null(),
    )
    .await;
    let (code, text) = fleet(&etcd, GROUP, &["rollout", "resume"]).await;
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
