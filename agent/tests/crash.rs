//! kill -9 of the agent at each step of an update, then a restart: the host
//! converges to exactly one healthy worker on the old or the new digest, with
//! the journal and history intact. Needs the `failpoints` feature, which
//! `scripts/test.sh` turns on.
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
        &format!(
            "[worker.drain]\nhttp = \"{}\"\ntimeout = \"60s\"\n",
            s.drain_url()
        ),
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

async fn converged(s: &Setup, agent: &Agent, digest: &str, version: &str) {
    s.wait_running(digest, version, agent).await;
    let settled = wait_for(WAIT, || async {
        let st = s.state();
        (st["pending"].is_null() && st["current_digest"] == digest).then_some(())
    })
    .await;
    assert!(
        settled.is_some(),
        "journal never settled: {}\n{}",
        s.state(),
        agent.log()
    );
    // The parked old container goes right after the commit.
    let one = wait_for(WAIT, || async {
        (s.managed().await.len() == 1).then_some(())
    })
    .await;
    assert!(
        one.is_some(),
        "left over containers: {:#?}",
        s.managed().await
    );
    // Every history line still parses (Setup::history panics otherwise).
    assert!(!s.history().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_after_pull_converges() {
    let (s, agent, _v1, v2) = crash_at("after-pull", "crash-pull", "v2").await;
    converged(&s, &agent, &v2, "v2").await;
    let h = s.history();
    assert!(
        h.iter().any(|e| e["to"] == v2 && e["outcome"] == "aborted"),
        "{h:#?}"
    );
    assert!(
        h.iter().any(|e| e["to"] == v2 && e["outcome"] == "success"),
        "{h:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_drain_converges() {
    let s = Setup::new("crash-drain");
    let v1 = s.push("v1", "stable");
    let cfg = s.config(
        "tag = \"stable\"",
        &s.env("INFLIGHT_JOBS = \"4\", JOB_SECONDS = \"2\""),
        &format!(
            "[worker.drain]\nhttp = \"{}\"\ntimeout = \"60s\"\n",
            s.drain_url()
        ),
    );
    let mut agent = s.start_agent(&cfg);
    s.wait_running(&v1, "v1", &agent).await;
    s.wait_history(&v1, "success", &agent).await;
    let v2 = s.push("v2", "stable");
    agent.wait_log("waiting for in-flight jobs").await;
    agent.kill9();
    assert_eq!(s.state()["pending"]["step"], "draining");
    // The old worker still serves while the agent is dead.
    assert_eq!(
        s.running().await.unwrap().digest.as_deref(),
        Some(v1.as_str())
    );
    let agent = s.start_agent(&cfg);
    converged(&s, &agent, &v2, "v2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_after_drain_converges() {
    let (s, agent, _v1, v2) = crash_at("after-drain", "crash-drained", "v2").await;
    converged(&s, &agent, &v2, "v2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_after_stop_converges() {
    let (s, agent, _v1, v2) = crash_at("after-stop", "crash-stop", "v2").await;
    converged(&s, &agent, &v2, "v2").await;
    assert!(s
        .history()
        .iter()
        .any(|e| e["to"] == v2 && e["outcome"] == "success"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_after_start_converges() {
    let (s, agent, _v1, v2) = crash_at("after-start", "crash-start", "v2").await;
    converged(&s, &agent, &v2, "v2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_after_a_bad_start_rolls_back() {
    let (s, agent, v1, bad) = crash_at("after-start", "crash-badstart", "crash").await;
    converged(&s, &agent, &v1, "v1").await;
    let st = s.state();
    assert!(s.is_marked_bad(&bad), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_rollback_converges() {
    let (s, agent, v1, bad) = crash_at("during-rollback", "crash-rollback", "broken").await;
    converged(&s, &agent, &v1, "v1").await;
    let h = s.history();
    assert!(
        h.iter()
            .any(|e| e["to"] == bad && e["outcome"] == "rolled_back"),
        "{h:#?}"
    );
}
