//! The agent's phase (the SPEC's `phase`): what the status shows, and the
//! step `pending.step` saves. The transitions between phases are the state
//! machine's (`machine.rs`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// What the agent is doing now (the SPEC's `phase`). The five update steps
/// (`Pulling` to `RollingBack`) are also what `pending.step` saves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Idle,
    Checking,
    /// Pulling the new image and creating its container; the old one serves.
    Pulling,
    /// Draining the old worker (an update's, or a maintenance drain); it still runs.
    Draining,
    /// Stopping the old container and starting the new one.
    Swapping,
    /// The new container runs and is being verified.
    Verifying,
    /// Going back to the old digest.
    RollingBack,
    Drained,
    Failed,
}

use Phase::*;

impl Phase {
    pub const ALL: [Phase; 9] = [
        Idle,
        Checking,
        Pulling,
        Draining,
        Swapping,
        Verifying,
        RollingBack,
        Drained,
        Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Idle => "idle",
            Checking => "checking",
            Pulling => "pulling",
            Draining => "draining",
            Swapping => "swapping",
            Verifying => "verifying",
            RollingBack => "rolling_back",
            Drained => "drained",
            Failed => "failed",
        }
    }

    /// Whether this is one of the update's steps (the worker may be
    /// changing), the ones `pending.step` saves.
    pub fn is_step(self) -> bool {
        matches!(
            self,
            Pulling | Draining | Swapping | Verifying | RollingBack
        )
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
