//! Named pause points for crash tests. Built only with the `failpoints`
//! feature: when `GPU_AGENT_FAILPOINT` names the point, the agent logs
//! `failpoint reached: NAME` and stops there for good, so a test can kill -9
//! it at exactly that step. Without the feature this is a no-op.
//!
//! Points: `during-pull` (before the pull, inside the step a SIGTERM cancels,
//! so it also stands for a pull that takes long), `after-pull`, `after-drain`,
//! `after-stop`, `after-start`, `during-rollback`.

/// Stops here for good if the `failpoints` feature is on and the point is named.
pub async fn hit(name: &'static str) {
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
