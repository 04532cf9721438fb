//! SIGTERM during each phase of an update: the agent stops at a safe point
//! (the old or the new worker running, never none), exits 0, leaves the
//! worker running, and a restart converges. Also a maintenance drain that a
//! stop interrupts, resumed by the next start.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn sigterm(agent: &Agent) {
    Command::new("kill")
        .args(["-TERM", &agent.pid().to_string()])
        .status()
        .unwrap();
}

/// Waits for the agent to exit (after a signal sent elsewhere); its code and how long it took.
async fn exit_of(agent: &mut Agent, within: Duration) -> (Option<i32>, Duration) {
    let t0 = Instant::now();
    let code = wait_for(within, || {
        let c = agent.exited();
        async move { c }
    })
    .await;
    match code {
        Some(c) => (Some(c), t0.elapsed()),
        None => panic!("the agent did not exit within {within:?}:\n{}", agent.log()),
    }
}

fn step(s: &Setup) -> Option<String> {
    s.state()["pending"]["step"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_pull_ends_it_at_once_and_keeps_the_old_worker() {
    let s = Setup::new("sig-pull");
    let v1 = s.push("v1", "stable");
    let cfg = s.config("tag = \"stable\"", &s.env(""), "");
    let agent = s.start_agent(&cfg);
    s.wait_history(&v1, "success", &agent).await;
    drop(agent);
    // The next agent stops inside the pull (a pull that takes long).
    let v2 = s.push("v2", "stable");
    let mut agent = s.start_agent_env(&cfg, &[("GPU_AGENT_FAILPOINT", "during-pull")]);
    agent.wait_log("failpoint reached: during-pull").await;
    sigterm(&agent);
    let (code, took) = exit_of(&mut agent, Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "{}", agent.log());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let e = s.wait_history(&v2, "aborted", &agent).await;
    assert!(
        e["error"].as_str().unwrap().contains("shutting down"),
        "{e}"
    );
    assert_eq!(s.state()["pending"], serde_json::Value::Null);
    let c = s.running().await.expect("the old worker runs");
    assert_eq!(c.digest.as_deref(), Some(v1.as_str()));
    assert_eq!(s.managed().await.len(), 1, "the new container was removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_drain_gives_the_old_worker_its_jobs_back() {
    let s = Setup::new("sig-drain");
    let v1 = s.push("v1", "stable");
    let cfg = s.config(
        "tag = \"stable\"",
        &s.env("INFLIGHT_JOBS = \"5\", JOB_SECONDS = \"4\""),
        &s.drain_table("60s"),
    );
    let mut agent = s.start_agent(&cfg);
    s.wait_history(&v1, "success", &agent).await;
    let v2 = s.push("v2", "stable");
    let draining = wait_for(WAIT, || async {
        (step(&s).as_deref() == Some("draining")).then_some(())
    })
    .await;
    assert!(draining.is_some(), "never drained:\n{}", agent.log());
    tokio::time::sleep(Duration::from_millis(500)).await;
    sigterm(&agent);
    let (code, took) = exit_of(&mut agent, Duration::from_secs(20)).await;
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    s.wait_history(&v2, "aborted", &agent).await;
    let c = s.running().await.expect("the old worker runs");
    assert_eq!(c.digest.as_deref(), Some(v1.as_str()));
    let events: Vec<String> = s.events().into_iter().map(|(_, _, e)| e).collect();
    assert!(
        events.iter().any(|e| e == "undrain"),
        "the old worker was told to take jobs again: {events:?}"
    );
    assert!(
        !events.iter().any(|e| e == "sigterm"),
        "the old worker was not stopped: {events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_swap_finishes_it_and_verifies_the_new_worker() {
    let s = Setup::new("sig-swap");
    // The old worker ignores SIGTERM: stopping it takes the whole stop_timeout (3 s).
    let old = s.push("slowstop", "stable");
    let cfg = s
        .config("tag = \"stable\"", &s.env(""), "")
        .replace("stop_timeout = \"5s\"", "stop_timeout = \"3s\"");
    let mut agent = s.start_agent(&cfg);
    s.wait_history(&old, "success", &agent).await;
    let v2 = s.push("v2", "stable");
    let swapping = wait_for(WAIT, || async {
        (step(&s).as_deref() == Some("swapping")).then_some(())
    })
    .await;
    assert!(swapping.is_some(), "never swapped:\n{}", agent.log());
    sigterm(&agent);
    let (code, _) = exit_of(&mut agent, Duration::from_secs(60)).await;
    assert_eq!(code, Some(0), "{}", agent.log());
    // It did not leave the host between workers: the new one was verified and committed.
    let e = s.wait_history(&v2, "success", &agent).await;
    assert!(e["downtime_ms"].as_u64().unwrap() >= 3000, "{e}");
    assert_eq!(s.state()["pending"], serde_json::Value::Null);
    let c = s.running().await.expect("the new worker runs");
    assert_eq!(c.digest.as_deref(), Some(v2.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verification_longer_than_the_stop_budget_is_resumed_by_the_next_start() {
    let s = Setup::new("sig-verify");
    let v1 = s.push("v1", "stable");
    let cfg = s
        .config("tag = \"stable\"", &s.env(""), "")
        .replace("stable_for = \"1s\"", "stable_for = \"20s\"")
        .replace("[agent]\n", "[agent]\nstop_budget = \"2s\"\n");
    let mut agent = s.start_agent(&cfg);
    s.wait_history(&v1, "success", &agent).await;
    let v2 = s.push("v2", "stable");
    let verifying = wait_for(WAIT, || async {
        (step(&s).as_deref() == Some("verifying")).then_some(())
    })
    .await;
    assert!(verifying.is_some(), "never verified:\n{}", agent.log());
    sigterm(&agent);
    let (code, took) = exit_of(&mut agent, Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "{}", agent.log());
    assert!(
        took < Duration::from_secs(8),
        "the 2 s budget was not kept: {took:?}"
    );
    // The new worker runs; the journal keeps the verification for the next start.
    assert_eq!(step(&s).as_deref(), Some("verifying"));
    let c = s.running().await.expect("a worker runs");
    assert_eq!(c.digest.as_deref(), Some(v2.as_str()));
    assert_eq!(s.managed().await.iter().filter(|c| c.running).count(), 1);

    let fast = cfg.replace("stable_for = \"20s\"", "stable_for = \"1s\"");
    let agent = s.start_agent(&fast);
    s.wait_history(&v2, "success", &agent).await;
    assert_eq!(s.state()["pending"], serde_json::Value::Null);
    s.wait_running(&v2, "v2", &agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_stops_at_once() {
    let s = Setup::new("sig-twice");
    let v1 = s.push("v1", "stable");
    let cfg = s
        .config("tag = \"stable\"", &s.env(""), "")
        .replace("stable_for = \"1s\"", "stable_for = \"60s\"");
    let mut agent = s.start_agent(&cfg);
    let verifying = wait_for(WAIT, || async {
        (step(&s).as_deref() == Some("verifying")).then_some(())
    })
    .await;
    assert!(verifying.is_some(), "never verified:\n{}", agent.log());
    sigterm(&agent);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        agent.exited(),
        None,
        "the first SIGTERM waits for the budget"
    );
    sigterm(&agent);
    let (code, took) = exit_of(&mut agent, Duration::from_secs(20)).await;
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let c = s.running().await.expect("the worker keeps running");
    assert_eq!(c.digest.as_deref(), Some(v1.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maintenance_drain_a_stop_interrupts_is_finished_by_the_next_start() {
    let s = Setup::new("sig-mdrain");
    let v1 = s.push("v1", "stable");
    let cfg = s.config(
        "tag = \"stable\"",
        &s.env("INFLIGHT_JOBS = \"2\", JOB_SECONDS = \"3\""),
        &s.drain_table("60s"),
    );
    let mut agent = s.start_agent(&cfg);
    s.wait_history(&v1, "success", &agent).await;
    let sock = s.dir.path().join("agent.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .args([
            "--socket",
            sock.to_str().unwrap(),
            "drain",
            "--reason",
            "bios update",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let draining = wait_for(WAIT, || async {
        (s.state()["drained"] == true).then_some(())
    })
    .await;
    assert!(draining.is_some(), "{}", agent.log());
    sigterm(&agent);
    let (code, _) = exit_of(&mut agent, Duration::from_secs(20)).await;
    assert_eq!(code, Some(0));
    assert!(s.running().await.is_some(), "the worker still runs");
    assert_eq!(s.state()["drain_complete"], false);

    let agent = s.start_agent(&cfg);
    let stopped = wait_for(WAIT, || async {
        (s.state()["drain_complete"] == true).then_some(())
    })
    .await;
    assert!(stopped.is_some(), "{}", agent.log());
    assert!(s.running().await.is_none(), "the drain stopped the worker");
    let h = s.history();
    let last = h.last().unwrap();
    assert_eq!(
        (
            last["kind"].as_str(),
            last["outcome"].as_str(),
            last["trigger"].as_str()
        ),
        (Some("drain"), Some("success"), Some("startup"))
    );
    assert_eq!(s.state()["drain_reason"], "bios update");
    let events: Vec<String> = s.events().into_iter().map(|(_, _, e)| e).collect();
    let idle = events.iter().position(|e| e == "idle");
    let term = events.iter().position(|e| e == "sigterm");
    assert!(
        idle.is_some() && term.is_some() && idle < term,
        "the jobs finished before the stop: {events:?}"
    );
}
