//! Named pause points for crash tests. Built only with the `failpoints`
//! feature: when `GPU_AGENT_FAILPOINT` names the point, the agent logs
//! `failpoint reached: NAME` and stops there for good, so a test can kill -9
//! it at exactly that moment. Without the feature this is a no-op.
//!
//! The points, in the order an update meets them ([`POINTS`];
//! `agent/tests/crash_sweep.rs` kills the agent at each one and fails if a
//! point is never reached). The step is what `state.json` holds as
//! `pending.step` when the agent stops there:
//!
//! | point | step | where |
//! | --- | --- | --- |
//! | `during-pull` | pulling | before the pull and create (inside the part a SIGTERM cancels, so it also stands for a pull that takes long) |
//! | `after-pull` | pulling | `<name>-next` is created; the old worker serves |
//! | `during-drain` | draining | the drain endpoint was told, jobs are still in flight (a maintenance drain's wait stops here too) |
//! | `after-drain` | draining | no job in flight; the old worker still runs |
//! | `after-restart-no` | swapping | the old worker's restart policy is `no`, it still runs (before the stop) |
//! | `after-stop` | swapping | the old worker is stopped, not yet renamed |
//! | `after-rename` | swapping | the old worker is parked as `<name>-prev`, the new one renamed to `<name>`, not started |
//! | `after-start` | swapping | the new worker was started (before `verifying` is saved) |
//! | `during-verify` | verifying | the new worker answered healthy, `stable_for` has not passed |
//! | `before-commit-save` | verifying | verified; the commit is not saved |
//! | `after-commit-save` | none | the commit and its history line are saved; `<name>-prev` not yet removed |
//! | `during-rollback` | rolling_back | the new container is removed; the old one not yet renamed back or started |
//! | `after-rollback-start` | rolling_back | the old worker runs again under its name, not yet verified |

/// Every point, in the order an update meets them (the rollback ones last).
pub const POINTS: &[&str] = &[
    "during-pull",
    "after-pull",
    "during-drain",
    "after-drain",
    "after-restart-no",
    "after-stop",
    "after-rename",
    "after-start",
    "during-verify",
    "before-commit-save",
    "after-commit-save",
    "during-rollback",
    "after-rollback-start",
];

/// Stops here for good if the `failpoints` feature is on and the point is named.
pub async fn hit(name: &'static str) {
    debug_assert!(POINTS.contains(&name), "failpoint {name} is not in POINTS");
    #[cfg(feature = "failpoints")]
    {
        if std::env::var("GPU_AGENT_FAILPOINT").is_ok_and(|v| v == name) {
            tracing::warn!(failpoint = name, "failpoint reached: {name}");
            eprintln!("failpoint reached: {name}");
            std::future::pending::<()>().await;
        }
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_point_is_named_once_and_hit_in_the_code() {
        let mut seen = std::collections::HashSet::new();
        for p in super::POINTS {
            assert!(seen.insert(p), "{p} is listed twice");
        }
        // Every file of the driver that may hit a point.
        let src = [
            include_str!("sequence.rs"),
            include_str!("rollback.rs"),
            include_str!("verify.rs"),
            include_str!("drain.rs"),
            include_str!("converge.rs"),
            include_str!("operator.rs"),
            include_str!("target.rs"),
            include_str!("gpu_gate.rs"),
            include_str!("updater.rs"),
        ]
        .concat();
        for p in super::POINTS {
            assert!(
                src.contains(&format!("failpoint::hit(\"{p}\")")),
                "{p} is in POINTS but the driver never hits it"
            );
        }
        let hits = src.matches("failpoint::hit(\"").count();
        assert_eq!(hits, super::POINTS.len(), "each point is hit at one place");
    }
}
