//! kill -9 by time: 50 consecutive updates (the tag moves v1 → v2 → v1 …,
//! `agentctl check` starts each), the agent killed at a random moment of
//! each (0 to 2.5 s after the check is asked for), then started again; after
//! each the host must converge on the tag's digest with the same invariants
//! as the crash-point sweep (one managed worker, healthy, state = engine, no
//! `-next`/`-prev`, journal and history parse, never two workers at once,
//! never none for longer than one swap).
//!
//! `CRASH_RANDOM_SEED` replays a run (the seed is printed first);
//! `CRASH_RANDOM_UPDATES` changes the count. The last line printed counts
//! the kills by the step `state.json` held just before each.
#![cfg(feature = "failpoints")]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};

/// One swap: the old worker's stop (5 s) and the new one's health gate (15 s).
const MAX_GAP: Duration = Duration::from_secs(20);
const MAX_DELAY_MS: u64 = 2500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_at_random_moments_of_50_updates() {
    let seed: u64 = std::env::var("CRASH_RANDOM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    let updates: usize = std::env::var("CRASH_RANDOM_UPDATES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    println!("crash-random seed {seed} (CRASH_RANDOM_SEED={seed} replays it)");
    eprintln!("crash-random seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let s = Setup::new("crash-random");
    let v1 = s.push("v1", "stable");
    // Only the nudges (and the check at each start) start updates.
    let cfg = s
        .config(
            "tag = \"stable\"",
            &s.env("INFLIGHT_JOBS = \"2\", JOB_SECONDS = \"0.5\""),
            &s.drain_table("60s"),
        )
        .replace("poll_interval = \"1s\"", "poll_interval = \"1h\"");
    let mut agent = s.start_agent(&cfg);
    s.assert_converged(&v1, "v1", &agent).await;

    let sock = socket(&s).to_str().unwrap().to_string();
    let started = Instant::now();
    let mut by_step: BTreeMap<String, usize> = BTreeMap::new();
    let mut worst = Duration::ZERO;
    for i in 0..updates {
        let version = if i % 2 == 0 { "v2" } else { "v1" };
        let delay = Duration::from_millis(rng.random_range(0..=MAX_DELAY_MS));
        let watch = Watch::start(&s).await;
        let digest = s.push(version, "stable");
        let sock2 = sock.clone();
        let check =
            tokio::spawn(async move { agentctl(&["--socket", &sock2, "check"], &[]).await });
        tokio::time::sleep(delay).await;
        let st = s.state();
        assert!(!st.is_null(), "state.json parses before the kill");
        let step = match st["pending"]["step"].as_str() {
            Some(step) => step.to_string(),
            None if st["current_digest"] == digest => "done".into(),
            None => "not begun".into(),
        };
        agent.kill9();
        let _ = tokio::time::timeout(Duration::from_secs(10), check).await;

        agent = s.start_agent(&cfg);
        s.assert_converged(&digest, version, &agent).await;
        let gaps = watch.finish().await;
        assert_eq!(
            gaps.most_running, 1,
            "update {i} (seed {seed}, killed {delay:?} in, at {step}): two managed workers ran at once"
        );
        assert!(
            gaps.longest_none < MAX_GAP,
            "update {i} (seed {seed}, killed {delay:?} in, at {step}): no worker for {:?}\n{}",
            gaps.longest_none,
            agent.log()
        );
        worst = worst.max(gaps.longest_none);
        println!(
            "crash-random update {i}: {version} killed after {} ms at {step}; longest gap {} ms",
            delay.as_millis(),
            gaps.longest_none.as_millis()
        );
        *by_step.entry(step).or_default() += 1;
    }
    println!(
        "crash-random seed {seed}: {updates} updates in {:.0} s; kills by step {by_step:?}; longest gap {} ms",
        started.elapsed().as_secs_f64(),
        worst.as_millis()
    );
}
