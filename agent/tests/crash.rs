//! kill -9 of the agent at a step of an update, then a restart: the host
//! converges to exactly one healthy worker on the old or the new digest, with
//! the journal and history intact. Needs the `failpoints` feature, which
//! `scripts/test.sh` turns on. The sweep over every crash point is
//! `crash_sweep.rs`, kills at random moments `crash_random.rs`; this file
//! keeps the cases they do not: a new worker that crashes after its start.
#![cfg(feature = "failpoints")]

mod common;

use common::*;

/// Deploys v1, then pushes `next` and kills the agent at `point`; restarts it
/// and returns the setup, the new agent and the two digests.
async fn crash_at(point: &str, name: &str, next: &str) -> (Setup, Agent, String, String) {
    let s = Setup::new(name);
    let v1 = s.push("v1", "stable");
    let cfg = s.config(
        "tag = \"stable\"",
        &s.env("INFLIGHT_JOBS = \"2\", JOB_SECONDS = \"1\""),
        &s.drain_table("60s"),
    );
    let first = s.start_agent(&cfg);
    s.wait_running(&v1, "v1", &first).await;
    s.wait_history(&v1, "success", &first).await;
    drop(first);

    let mut agent = s.start_agent_env(&cfg, &[("GPU_AGENT_FAILPOINT", point)]);
    let target = s.push(next, "stable");
    agent.wait_log(&format!("failpoint reached: {point}")).await;
    agent.kill9();
    let pending = &s.state()["pending"];
    assert_eq!(
        pending["to"],
        target,
        "the journal names the update: {}",
        s.state()
    );

    let agent = s.start_agent(&cfg);
    (s, agent, v1, target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_after_a_bad_start_rolls_back() {
    let (s, agent, v1, bad) = crash_at("after-start", "crash-badstart", "crash").await;
    s.assert_converged(&v1, "v1", &agent).await;
    let st = s.state();
    assert!(s.is_marked_bad(&bad), "{st}");
}
