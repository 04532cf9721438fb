//! The update state machine: the agent's phase as one enum, and the only
//! transitions allowed between phases. The driver (`driver.rs`) does the I/O
//! and moves the machine; this file does none, so it is tested as a value.
//!
//! ```text
//!            ┌──────────── up to date / bad / held ───────────┐
//!            │                                                 │
//!  Idle ─► Checking ─► Pulling ─► Draining ─► Swapping ─► Verifying ─► Idle (commit)
//!   ▲  ╲       │          │  ╲        │           │           │
//!   │   ╲      └─ error ──┤   ╲──(no old worker)──►┘           │
//!   │    ╲                ▼         ▼ abort        ▼ failure   ▼ failure
//!   │     ╲            Failed ◄── Idle         RollingBack ◄───┘
//!   │      ╲                                      │
//!   │       └─► Draining ─► Drained ─► Verifying ─► Idle / Failed   (maintenance:
//!   │                                                   drain, then undrain)
//!   └── Draining ─► Idle (a maintenance drain aborted: the worker keeps serving)
//! ```

use std::fmt;

use serde::Serialize;

use super::journal::Step;

/// What the agent is doing now (the SPEC's `phase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Idle,
    Checking,
    Pulling,
    Draining,
    Swapping,
    Verifying,
    RollingBack,
    Drained,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Checking => "checking",
            Phase::Pulling => "pulling",
            Phase::Draining => "draining",
            Phase::Swapping => "swapping",
            Phase::Verifying => "verifying",
            Phase::RollingBack => "rolling_back",
            Phase::Drained => "drained",
            Phase::Failed => "failed",
        }
    }

    /// The phase in which a persisted update step runs.
    pub fn of_step(step: Step) -> Phase {
        match step {
            Step::Pulling => Phase::Pulling,
            Step::Draining => Phase::Draining,
            Step::Swapping => Phase::Swapping,
            Step::Verifying => Phase::Verifying,
            Step::RollingBack => Phase::RollingBack,
        }
    }

    /// Whether an update is under way (the worker may be changing).
    pub fn is_updating(self) -> bool {
        matches!(
            self,
            Phase::Pulling
                | Phase::Draining
                | Phase::Swapping
                | Phase::Verifying
                | Phase::RollingBack
        )
    }

    /// Whether `self → next` is a transition of the machine.
    pub fn can_go_to(self, next: Phase) -> bool {
        use Phase::*;
        match (self, next) {
            // Recovery after a restart may resume any step; the driver enters it from Idle.
            (Idle, _) => true,
            (Failed, Idle | Checking | Pulling | Draining | Drained | Swapping | RollingBack) => {
                true
            }
            (Checking, Idle | Pulling | Failed | Drained) => true,
            (Pulling, Draining | Swapping | Idle | Failed) => true,
            // A maintenance drain ends in Drained (the worker stopped).
            (Draining, Swapping | Idle | Failed | Drained) => true,
            (Swapping, Verifying | RollingBack | Failed) => true,
            // Failed: the worker an undrain started did not pass the health gate.
            (Verifying, Idle | RollingBack | Failed) => true,
            (RollingBack, Idle | Failed) => true,
            // Undrain: the worker starts again behind the health gate.
            (Drained, Idle | Verifying) => true,
            _ => false,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The phase, moved only along [`Phase::can_go_to`].
#[derive(Debug, Clone)]
pub struct Machine {
    phase: Phase,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("no transition from {from} to {to}")]
pub struct InvalidTransition {
    pub from: Phase,
    pub to: Phase,
}

impl Default for Machine {
    fn default() -> Self {
        Machine { phase: Phase::Idle }
    }
}

impl Machine {
    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn go(&mut self, next: Phase) -> Result<(), InvalidTransition> {
        if self.phase == next {
            return Ok(());
        }
        if !self.phase.can_go_to(next) {
            return Err(InvalidTransition {
                from: self.phase,
                to: next,
            });
        }
        self.phase = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Phase::*;
    use super::*;

    fn walk(path: &[Phase]) -> Result<Machine, InvalidTransition> {
        let mut m = Machine::default();
        for &p in path {
            m.go(p)?;
        }
        Ok(m)
    }

    #[test]
    fn state_machine_happy_path() {
        let m = walk(&[Checking, Pulling, Draining, Swapping, Verifying, Idle]).unwrap();
        assert_eq!(m.phase(), Idle);
    }

    #[test]
    fn failed_verification_rolls_back() {
        walk(&[
            Checking,
            Pulling,
            Draining,
            Swapping,
            Verifying,
            RollingBack,
            Idle,
        ])
        .unwrap();
        walk(&[Checking, Pulling, Swapping, RollingBack, Failed]).unwrap();
    }

    #[test]
    fn no_step_is_skipped_into_commit() {
        assert_eq!(
            walk(&[Checking, Pulling, Verifying]).unwrap_err(),
            InvalidTransition {
                from: Pulling,
                to: Verifying
            }
        );
        // Verification cannot be left for a new update without commit or rollback.
        assert!(walk(&[Checking, Pulling, Swapping, Verifying, Pulling]).is_err());
        // A drain abort keeps the old worker: back to idle, never to swapping from checking.
        assert!(walk(&[Checking, Swapping]).is_err());
        walk(&[Checking, Pulling, Draining, Idle]).unwrap();
    }

    #[test]
    fn maintenance_drains_then_undrains_behind_the_health_gate() {
        walk(&[Draining, Drained, Verifying, Idle]).unwrap();
        walk(&[Draining, Drained, Verifying, Failed]).unwrap();
        walk(&[Draining, Idle]).unwrap();
        // An update never starts from a drained worker.
        assert!(walk(&[Draining, Drained, Checking]).is_err());
        assert!(walk(&[Draining, Drained, Pulling]).is_err());
    }

    #[test]
    fn names_match_the_spec() {
        let names: Vec<&str> = [
            Idle,
            Checking,
            Pulling,
            Draining,
            Swapping,
            Verifying,
            RollingBack,
            Drained,
            Failed,
        ]
        .iter()
        .map(|p| p.as_str())
        .collect();
        assert_eq!(
            names,
            [
                "idle",
                "checking",
                "pulling",
                "draining",
                "swapping",
                "verifying",
                "rolling_back",
                "drained",
                "failed"
            ]
        );
        assert_eq!(
            serde_json::to_string(&RollingBack).unwrap(),
            "\"rolling_back\""
        );
    }
}
