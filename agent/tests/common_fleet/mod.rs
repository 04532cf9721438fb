//! Shared by the suites that run real agents in a fleet group
//! (`fleet_agents.rs`, `fleet_faults.rs`): the built `gpu-fleet` against a
//! test cluster, one host (its setup and its agent), and the timing of the
//! hosts' updates from the worker's own events and the agent's history.
#![allow(dead_code)]

use std::collections::BTreeMap;

use serde_json::Value;

use crate::common::*;
use crate::common_etcd::EtcdCluster;

/// `gpu-fleet --etcd … --group GROUP args`: exit code and output.
pub async fn fleet(c: &EtcdCluster, group: &str, args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gpu-fleet"))
        .arg("--etcd")
        .arg(c.endpoints().join(","))
        .args(["--group", group])
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

pub async fn fleet_ok(c: &EtcdCluster, group: &str, args: &[&str]) -> String {
    let (code, text) = fleet(c, group, args).await;
    assert_eq!(code, 0, "gpu-fleet {args:?}: {text}");
    text
}

/// `gpu-fleet args --json`, which must exit `code`.
pub async fn fleet_json_exit(c: &EtcdCluster, group: &str, args: &[&str], code: i32) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (got, text) = fleet(c, group, &all).await;
    assert_eq!(got, code, "gpu-fleet {all:?}: {text}");
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("gpu-fleet {args:?} --json ({e}): {text}"))
}

pub async fn fleet_json(c: &EtcdCluster, group: &str, args: &[&str]) -> Value {
    fleet_json_exit(c, group, args, 0).await
}

/// `[fleet]` for a config: these endpoints, this group.
pub fn fleet_table(endpoints: &[String], group: &str) -> String {
    let list = endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!("[fleet]\netcd = [{list}]\ngroup = \"{group}\"\n")
}

/// One host: its setup (worker name, port, state folder) and its agent.
pub struct Host {
    pub s: Setup,
    pub agent: Agent,
}

impl Host {
    pub fn id(&self) -> &str {
        &self.s.agent_id
    }

    /// Milliseconds of the worker's `drain` events at or after `since`.
    pub fn drains_since(&self, since: u64) -> Vec<u64> {
        self.s
            .events()
            .into_iter()
            .filter(|(t, _, e)| *t >= since && e == "drain")
            .map(|(t, _, _)| t)
            .collect()
    }

    /// The history's update entries that ended (any outcome), with their time in ms.
    pub fn ends(&self) -> Vec<(u64, Value)> {
        self.s
            .history()
            .into_iter()
            .filter(|e| e["kind"] == "update")
            .map(|e| (ms(&e["at"]), e))
            .collect()
    }

    /// The updates since `since`: from each drain to the history line that ended it.
    pub fn windows_since(&self, since: u64) -> Vec<(u64, u64)> {
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

    pub async fn status(&self) -> Value {
        status(&self.s).await
    }

    pub async fn container_id(&self) -> String {
        self.s.running().await.expect("a worker runs").id
    }
}

/// RFC 3339 → unix milliseconds.
pub fn ms(v: &Value) -> u64 {
    let t = time::OffsetDateTime::parse(
        v.as_str().expect("a time"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("an RFC 3339 time");
    (t.unix_timestamp_nanos() / 1_000_000) as u64
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The most windows open at one moment (an end and a start in the same
/// millisecond do not overlap: the next host drains only after the last one
/// gave its slot back).
pub fn most_at_once(windows: &[(u64, u64)]) -> usize {
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
pub fn all_windows(hosts: &[Host], since: u64) -> BTreeMap<String, Vec<(u64, u64)>> {
    hosts
        .iter()
        .map(|h| (h.id().to_string(), h.windows_since(since)))
        .collect()
}

/// Waits until every agent's `fleet` status object passes `ok`.
pub async fn wait_fleet_status(hosts: &[&Host], what: &str, ok: impl Fn(&Value) -> bool) {
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
