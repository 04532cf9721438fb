//! Faults under a fleet rollout, with three real agents (the built
//! `gpu-agent`) in one group on a real 3-member etcd, each with its own
//! worker on the private engine, one slot (`max_unavailable = 1`, no canary):
//!
//! 1. one etcd member killed while a host holds the slot: the rollout goes on;
//! 2. an agent killed -9 while it holds the slot: the slot stays held and the
//!    others wait, `gpu-fleet release` frees it; meanwhile one agent is cut
//!    off from etcd (every byte between it and the members stops): it never
//!    drains, although the slot is free, until it reaches etcd again;
//! 3. all of etcd down while a host holds the slot: that host finishes, no
//!    other update starts, workers are kept, status says why; the rollout
//!    resumes when etcd is back.
//!
//! One test, the scenarios in a row on the same hosts: the three agents, the
//! cluster and the proxies take their ports in one place, so no other test of
//! this binary can take a port one of them is about to use.

mod common;
mod common_etcd;
mod common_fleet;
mod proxy;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use common_etcd::EtcdCluster;
use common_fleet::*;
use serde_json::Value;

const GROUP: &str = "fleet-faults";

/// The hosts whose slot is `holding` in `gpu-fleet hosts`.
async fn holders(etcd: &EtcdCluster) -> Vec<String> {
    let l = fleet_json(etcd, GROUP, &["hosts"]).await;
    l["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["slot"] == "holding")
        .map(|h| h["id"].as_str().unwrap().to_string())
        .collect()
}

/// The host's line in `gpu-fleet hosts`.
async fn line(etcd: &EtcdCluster, id: &str) -> Value {
    let l = fleet_json(etcd, GROUP, &["hosts"]).await;
    l["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits until some host has drained since `since`; returns its index.
async fn first_to_drain(hosts: &[Host], since: u64) -> usize {
    wait_for(WAIT, || async {
        hosts.iter().position(|h| !h.drains_since(since).is_empty())
    })
    .await
    .unwrap_or_else(|| {
        let logs: Vec<String> = hosts.iter().map(|h| h.agent.log()).collect();
        panic!("no host drained: {logs:#?}")
    })
}

/// `gpu_agent_fleet_etcd_reachable{group}` from the agent's /metrics.
async fn etcd_reachable(port: u16) -> Option<f64> {
    metric(
        port,
        &format!("gpu_agent_fleet_etcd_reachable{{group=\"{GROUP}\"}}"),
    )
    .await
}

/// `rollout start D` with one slot and no canary, as every rollout here.
fn start(d: &str) -> Vec<&str> {
    vec![
        "rollout",
        "start",
        d,
        "--max-unavailable",
        "1",
        "--canary",
        "0",
    ]
}

async fn rollout_completes(etcd: &EtcdCluster) {
    let (code, text) = fleet(
        etcd,
        GROUP,
        &["rollout", "status", "--wait", "--timeout", "3m"],
    )
    .await;
    assert_eq!(code, 0, "rollout status --wait: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_under_a_rollout_member_lost_agent_killed_holding_a_slot_partition_and_etcd_down() {
    let mut etcd = EtcdCluster::start(3);
    // The third host reaches every member through a proxy that can stop
    // forwarding: a network partition of that host alone.
    let mut proxies = Vec::new();
    let mut cut_off_endpoints = Vec::new();
    for e in etcd.endpoints() {
        let upstream: SocketAddr = e.trim_start_matches("http://").parse().unwrap();
        let (p, addr) = proxy::tcp(upstream).await;
        proxies.push(p);
        cut_off_endpoints.push(format!("http://{addr}"));
    }
    let partition = |on: bool| {
        for p in &proxies {
            p.hang(on);
        }
    };

    let first = Setup::new("ff0");
    let v1 = first.push("v1", "stable");
    let v2 = first.push("v2", "v2");
    let v3 = first.push("v3", "v3");
    let v4 = first.push("hc-good", "hc-good");
    let mut setups = vec![first];
    for i in 1..3 {
        let mut s = Setup::with_registry(&format!("ff{i}"), setups[0].registry.shared());
        s.repo = setups[0].repo.clone();
        setups.push(s);
    }
    let metrics: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let configs: Vec<String> = setups
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let endpoints = if i == 2 {
                cut_off_endpoints.clone()
            } else {
                etcd.endpoints()
            };
            s.config(
                "tag = \"stable\"",
                &s.env(""),
                &format!(
                    "{}\n{}",
                    s.drain_table("30s"),
                    fleet_table(&endpoints, GROUP)
                ),
            )
            // Fleet changes wake the agents through etcd's watches; the poll
            // is the backstop. A new worker is verified after 4 s healthy, so
            // a host holds its slot long enough to be caught holding it (and
            // for all of etcd to be killed before it is done).
            .replace("poll_interval = \"1s\"", "poll_interval = \"3s\"")
            .replace("stable_for = \"1s\"", "stable_for = \"4s\"")
            .replace(
                "[agent]\n",
                &format!("[agent]\nmetrics_listen = \"127.0.0.1:{}\"\n", metrics[i]),
            )
        })
        .collect();
    let mut hosts: Vec<Host> = setups
        .into_iter()
        .zip(&configs)
        .map(|(s, c)| {
            let agent = s.start_agent(c);
            Host { s, agent }
        })
        .collect();
    for h in &hosts {
        h.s.assert_converged(&v1, "v1", &h.agent).await;
    }

    // 1. One member killed while a host holds the slot: the rollout goes on.
    let since = now_ms();
    fleet_ok(&etcd, GROUP, &start(v2.as_str())).await;
    first_to_drain(&hosts, since).await;
    etcd.kill(0);
    // (Two members keep the quorum: gpu-fleet still answers.)
    assert!(
        !holders(&etcd).await.is_empty(),
        "a host held the slot when the member died"
    );
    rollout_completes(&etcd).await;
    for h in &hosts {
        h.s.assert_converged(&v2, "v2", &h.agent).await;
        assert_eq!(h.drains_since(since).len(), 1, "{} drained once", h.id());
    }
    let flat: Vec<(u64, u64)> = all_windows(&hosts, since).into_values().flatten().collect();
    assert_eq!(most_at_once(&flat), 1, "one slot: {flat:?}");
    etcd.restart(0);
    etcd.wait_healthy(Duration::from_secs(30));

    // 2. An agent killed -9 holding the slot. The first host goes alone (the
    // others are stopped, their workers run on) and stops in its verification.
    let (h0_config, h1_config, h2_config) = (&configs[0], &configs[1], &configs[2]);
    hosts[1].agent.terminate();
    hosts[2].agent.terminate();
    hosts[0].agent.terminate();
    hosts[0].agent = hosts[0]
        .s
        .start_agent_env(h0_config, &[("GPU_AGENT_FAILPOINT", "during-verify")]);
    let since = now_ms();
    fleet_ok(&etcd, GROUP, &start(v3.as_str())).await;
    hosts[0]
        .agent
        .wait_log("failpoint reached: during-verify")
        .await;
    let dead = hosts[0].id().to_string();
    assert_eq!(holders(&etcd).await, vec![dead.clone()]);
    hosts[0].agent.kill9();
    // The others come back and queue behind the dead host's slot, the
    // partitioned one last, so it is the one the freed slot could go to
    // second.
    hosts[1].agent = hosts[1].s.start_agent(h1_config);
    wait_fleet_status(&[&hosts[1]], "queued behind the dead host", |f| {
        f["desired"] == v3 && f["waiting"].is_string()
    })
    .await;
    hosts[2].agent = hosts[2].s.start_agent(h2_config);
    wait_fleet_status(&[&hosts[2]], "queued behind the dead host", |f| {
        f["desired"] == v3 && f["waiting"].is_string()
    })
    .await;
    // The rollout waits: nobody else drains while the dead host holds the slot.
    let before: Vec<String> = {
        let mut ids = Vec::new();
        for h in &hosts[1..] {
            ids.push(h.container_id().await);
        }
        ids
    };
    tokio::time::sleep(Duration::from_secs(8)).await;
    for h in &hosts[1..] {
        assert!(
            h.drains_since(since).is_empty(),
            "{} drained while the dead host held the slot:\n{}",
            h.id(),
            h.agent.log()
        );
    }
    assert_eq!(
        holders(&etcd).await,
        vec![dead.clone()],
        "the slot stays held"
    );
    let st = fleet_json(&etcd, GROUP, &["rollout", "status"]).await;
    assert_eq!(st["rollout"]["state"], "rolling", "{st}");

    // Cut the third host off from etcd, then free the dead host's slot.
    let cut_at = now_ms();
    partition(true);
    let out = fleet_ok(&etcd, GROUP, &["release", &dead]).await;
    assert!(out.contains(&dead), "{out}");
    // The second host takes the slot and moves; the third, cut off, does not,
    // though the slot is free once the second is done.
    hosts[1]
        .s
        .wait_history(&v3, "success", &hosts[1].agent)
        .await;
    hosts[1]
        .s
        .assert_converged(&v3, "v3", &hosts[1].agent)
        .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    // The slot is free: nobody holds it, nothing is in progress.
    assert_eq!(holders(&etcd).await, Vec::<String>::new());
    let st = fleet_json(&etcd, GROUP, &["rollout", "status"]).await;
    assert_eq!(st["in_progress"], 0, "{st}");
    assert!(
        hosts[2].drains_since(cut_at).is_empty(),
        "the cut-off host drained without a slot:\n{}",
        hosts[2].agent.log()
    );
    assert_eq!(
        hosts[2].container_id().await,
        before[1],
        "the cut-off host's worker was replaced"
    );
    // Heal it: it reaches etcd again, takes the slot and moves. The dead host
    // comes back and finishes the update it was in.
    partition(false);
    hosts[2]
        .s
        .wait_history(&v3, "success", &hosts[2].agent)
        .await;
    hosts[0].agent = hosts[0].s.start_agent(h0_config);
    rollout_completes(&etcd).await;
    for h in &hosts {
        h.s.assert_converged(&v3, "v3", &h.agent).await;
    }
    let flat: Vec<(u64, u64)> = all_windows(&hosts[1..], since)
        .into_values()
        .flatten()
        .collect();
    assert_eq!(flat.len(), 2, "hosts 1 and 2 drained once each: {flat:?}");
    assert_eq!(most_at_once(&flat), 1, "one slot: {flat:?}");
    wait_fleet_status(&hosts.iter().collect::<Vec<_>>(), "steady", |f| {
        f["slot"].is_null() && f["desired"] == v3
    })
    .await;

    // 3. All of etcd down while a host holds the slot: it finishes, nobody
    // else starts, workers are kept; the rollout resumes when etcd is back.
    let since = now_ms();
    fleet_ok(&etcd, GROUP, &start(v4.as_str())).await;
    let holder = first_to_drain(&hosts, since).await;
    etcd.kill_all();
    let others: Vec<usize> = (0..3).filter(|i| *i != holder).collect();
    let kept: Vec<String> = {
        let mut ids = Vec::new();
        for i in &others {
            ids.push(hosts[*i].container_id().await);
        }
        ids
    };
    // The holder finishes what it started, its outcome waiting for etcd.
    hosts[holder]
        .s
        .wait_history(&v4, "success", &hosts[holder].agent)
        .await;
    let others_ref: Vec<&Host> = others.iter().map(|i| &hosts[*i]).collect();
    wait_fleet_status(&others_ref, "saying etcd is not reachable", |f| {
        f["etcd_reachable"] == false
            && f["waiting"]
                .as_str()
                .is_some_and(|w| w.contains("etcd not reachable"))
    })
    .await;
    // The metric says so too.
    for i in &others {
        let zero = wait_for(WAIT, || async {
            (etcd_reachable(metrics[*i]).await == Some(0.0)).then_some(())
        })
        .await;
        assert!(
            zero.is_some(),
            "{}: gpu_agent_fleet_etcd_reachable never 0",
            hosts[*i].id()
        );
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    for (h, id) in others_ref.iter().zip(&kept) {
        assert!(
            h.drains_since(since).is_empty(),
            "{} drained with etcd down:\n{}",
            h.id(),
            h.agent.log()
        );
        assert_eq!(
            &h.container_id().await,
            id,
            "{}'s worker was replaced",
            h.id()
        );
        let st = h.status().await;
        assert_eq!(st["current_digest"], v3, "{st}");
    }
    etcd.restart_all();
    rollout_completes(&etcd).await;
    for h in &hosts {
        h.s.assert_converged(&v4, "hc-good", &h.agent).await;
    }
    let flat: Vec<(u64, u64)> = all_windows(&hosts, since).into_values().flatten().collect();
    assert_eq!(flat.len(), 3, "every host drained once: {flat:?}");
    assert_eq!(most_at_once(&flat), 1, "one slot: {flat:?}");
    for m in &metrics {
        let one = wait_for(WAIT, || async {
            (etcd_reachable(*m).await == Some(1.0)).then_some(())
        })
        .await;
        assert!(
            one.is_some(),
            "gpu_agent_fleet_etcd_reachable never 1 again on :{m}"
        );
    }
    let out = line(&etcd, hosts[holder].id()).await;
    assert_eq!(out["digest"], v4, "{out}");
}
