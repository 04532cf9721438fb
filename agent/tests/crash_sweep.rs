//! The crash-point sweep: for every named failpoint
//! (`gpu_agent::update::failpoint::POINTS`) and three repetitions, each on a
//! fresh setup: deploy v1, move the tag (to v2, or for the rollback points to
//! an image that fails its verification), kill -9 the agent at the point,
//! start it again and check the host converges: exactly one managed worker,
//! running and healthy, on the old or the new digest as the point implies,
//! the journal and history parse, the state matches the engine, no `-next` or
//! `-prev` left. An engine watcher measures the longest stretch with no
//! managed worker running (from before the tag moves until the host settles)
//! and checks that two never run at once.
//!
//! Each run prints one `crash-sweep` line (point, step on disk at the kill,
//! longest gap, time to converge) and appends it as JSON to
//! `$CARGO_TARGET_TMPDIR/crash-sweep.jsonl`.
#![cfg(feature = "failpoints")]

mod common;

use std::time::{Duration, Instant};

use common::*;
use gpu_agent::update::failpoint::POINTS;

const REPETITIONS: usize = 3;
/// The longest a host may be without a worker: one swap, i.e. the old
/// worker's stop (`stop_timeout` 5 s) and the new one's health gate
/// (`health.timeout` 15 s), as the test config sets them.
const MAX_GAP: Duration = Duration::from_secs(20);

/// The step `state.json` holds when the agent stops at `point` ("none": no
/// update pending), and whether the old worker was still untouched there.
fn step_of(point: &str) -> (&'static str, bool) {
    match point {
        "during-pull" | "after-pull" => ("pulling", true),
        "during-drain" | "after-drain" => ("draining", true),
        "after-restart-no" => ("swapping", true),
        "after-stop" | "after-rename" | "after-start" => ("swapping", false),
        "during-verify" | "before-commit-save" => ("verifying", false),
        "after-commit-save" => ("none", false),
        "during-rollback" | "after-rollback-start" => ("rolling_back", false),
        other => panic!("the sweep does not know the point {other}: add it here"),
    }
}

/// Where the sweep sends the tag, and whether the host must end on the old digest.
fn target_of(point: &str) -> (&'static str, bool) {
    match point {
        // Killed in a rollback: the new image fails its verification (one
        // answers 500 forever, the other exits a second after its start).
        "during-rollback" => ("broken", true),
        "after-rollback-start" => ("crash", true),
        _ => ("v2", false),
    }
}

async fn sweep(point: &str) {
    for rep in 0..REPETITIONS {
        once(point, rep).await;
    }
}

async fn once(point: &str, rep: usize) {
    let (variant, rolls_back) = target_of(point);
    let s = Setup::new(&format!("sw-{point}-{rep}"));
    let v1 = s.push("v1", "stable");
    let cfg = s.config(
        "tag = \"stable\"",
        &s.env("INFLIGHT_JOBS = \"2\", JOB_SECONDS = \"0.5\""),
        &s.drain_table("60s"),
    );
    let first = s.start_agent(&cfg);
    s.wait_running(&v1, "v1", &first).await;
    s.wait_history(&v1, "success", &first).await;
    drop(first);

    let watch = Watch::start(&s).await;
    let mut agent = s.start_agent_env(&cfg, &[("GPU_AGENT_FAILPOINT", point)]);
    let target = s.push(variant, "stable");
    agent.wait_log(&format!("failpoint reached: {point}")).await;
    agent.kill9();
    let killed = Instant::now();
    let killed_log = agent.log();

    // The journal on disk at the kill parses and names the update (or, after
    // the commit was saved, its result).
    let text = std::fs::read_to_string(s.state_dir().join("state.json")).unwrap();
    let st: serde_json::Value = serde_json::from_str(&text).expect("state.json parses");
    let step = st["pending"]["step"].as_str().unwrap_or("none").to_string();
    if point == "after-commit-save" {
        assert!(st["pending"].is_null(), "{st}");
        assert_eq!(st["current_digest"], target, "{st}");
    } else {
        assert_eq!(
            st["pending"]["to"], target,
            "the journal names the update: {st}"
        );
    }
    let (expected_step, old_serves) = step_of(point);
    assert_eq!(step, expected_step, "{point}: the step on disk: {st}");
    let _ = s.history();
    // Before the stop, the old worker serves on while the agent is dead.
    if old_serves {
        let c = s.running().await.expect("the old worker runs");
        assert_eq!(c.digest.as_deref(), Some(v1.as_str()));
        assert_eq!(
            s.health().await.expect("the old worker answers")["version"],
            "v1"
        );
    }

    let agent = s.start_agent(&cfg);
    let (digest, version) = if rolls_back {
        (&v1, "v1")
    } else {
        (&target, "v2")
    };
    s.assert_converged(digest, version, &agent).await;
    let converge = killed.elapsed();
    let gaps = watch.finish().await;

    let h = s.history();
    if rolls_back {
        assert!(s.is_marked_bad(&target), "{}", s.state());
        assert!(
            h.iter()
                .any(|e| e["to"] == target && e["outcome"] == "rolled_back"),
            "{h:#?}"
        );
    } else {
        assert!(
            h.iter()
                .any(|e| e["to"] == target && e["outcome"] == "success"),
            "{h:#?}"
        );
    }
    // Interrupted before the stop: the restart aborted it (the old worker
    // kept), and the check at start did it again.
    if old_serves {
        assert!(
            h.iter()
                .any(|e| e["to"] == target && e["outcome"] == "aborted"),
            "{h:#?}"
        );
    }
    assert_eq!(
        gaps.most_running, 1,
        "two managed workers ran at once: {gaps:?}\n--- killed agent:\n{killed_log}\n--- restarted agent:\n{}\n--- events:\n{:#?}", agent.log(), s.events()
    );
    assert!(
        gaps.longest_none < MAX_GAP,
        "{point}: no worker ran for {:?} (limit {MAX_GAP:?})\n{}",
        gaps.longest_none,
        agent.log()
    );
    let line = serde_json::json!({
        "point": point,
        "rep": rep,
        "step": step,
        "gap_ms": gaps.longest_none.as_millis() as u64,
        "converge_ms": converge.as_millis() as u64,
        "samples": gaps.samples,
    });
    println!("crash-sweep {line}");
    report(&line);
}

fn report(line: &serde_json::Value) {
    use std::io::Write;
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("crash-sweep.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(f, "{line}").unwrap();
}

macro_rules! points {
    ($($test:ident => $point:literal,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                sweep($point).await;
            }
        )*

        /// The sweep covers exactly the points the agent names.
        #[test]
        fn the_sweep_covers_every_point() {
            let swept = [$($point),*];
            assert_eq!(swept.as_slice(), POINTS, "a point is missing from the sweep, or the sweep names one the agent does not");
        }
    };
}

points! {
    kill9_during_pull => "during-pull",
    kill9_after_pull => "after-pull",
    kill9_during_drain => "during-drain",
    kill9_after_drain => "after-drain",
    kill9_after_restart_no => "after-restart-no",
    kill9_after_stop => "after-stop",
    kill9_after_rename => "after-rename",
    kill9_after_start => "after-start",
    kill9_during_verify => "during-verify",
    kill9_before_commit_save => "before-commit-save",
    kill9_after_commit_save => "after-commit-save",
    kill9_during_rollback => "during-rollback",
    kill9_after_rollback_start => "after-rollback-start",
}
