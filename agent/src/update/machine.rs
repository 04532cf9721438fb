//! The update state machine, as a value: the agent's phase as one enum, one
//! method per transition that names the phases it may start from (anything
//! else is an [`InvalidTransition`], and nothing moves), and the one table of
//! which operator [`Action`] each state allows ([`allows`]), used by the
//! control server before it queues an action and by the loop before it runs
//! one. The driver does the I/O and calls the transitions; this file does
//! none, so it is tested as a plain value.
//!
//! The update in progress (its target, step, kind and trigger) is
//! `journal::Pending`, saved before each step; its `step` is the [`Phase`]
//! the update is in. `ARCHITECTURE.md`'s diagram is checked against
//! [`Machine::ARCS`] by a test here.
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

use std::time::Duration;

use time::format_description::well_known::Rfc3339;

use super::journal::State;
pub use super::phase::Phase;
use Phase::*;

impl Phase {
    /// Whether `self → next` is a transition of the machine.
    pub fn can_go_to(self, next: Phase) -> bool {
        Machine::ARCS
            .iter()
            .any(|(_, from, to)| from.contains(&self) && *to == next)
    }
}

/// The phase, moved only by the transitions below.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    phase: Phase,
}

#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
#[error("{transition}: no transition from {from} (a bug: please report it with the log)")]
pub struct InvalidTransition {
    pub transition: &'static str,
    pub from: Phase,
    pub to: Phase,
}

impl Default for Machine {
    fn default() -> Self {
        Machine { phase: Idle }
    }
}

type Moved = Result<(), InvalidTransition>;

/// Where a check, an update or an operator's action may start.
const AT_REST: &[Phase] = &[Idle, Failed];
/// ... and where an update may: from a check, or an operator's action at rest.
const UPDATE_FROM: &[Phase] = &[Idle, Failed, Checking];

impl Machine {
    /// Every transition: its name, the phases it starts from, where it goes.
    pub const ARCS: &'static [(&'static str, &'static [Phase], Phase)] = &[
        ("check", AT_REST, Checking),
        ("pull", UPDATE_FROM, Pulling),
        ("drain_old", &[Pulling], Draining),
        ("swap", &[Pulling, Draining], Swapping),
        ("verify", &[Swapping], Verifying),
        ("roll_back", &[Swapping, Verifying], RollingBack),
        // A restart (or an error midway) resumes the step the journal saved.
        ("resume", UPDATE_FROM, Pulling),
        ("resume", UPDATE_FROM, Draining),
        ("resume", UPDATE_FROM, Swapping),
        ("resume", UPDATE_FROM, Verifying),
        ("resume", UPDATE_FROM, RollingBack),
        // Commit, up to date, an abort with the old worker kept, a rollback
        // that put it back, a worker that runs again after a failure.
        (
            "settle",
            &[
                Idle,
                Checking,
                Pulling,
                Draining,
                Verifying,
                RollingBack,
                Failed,
            ],
            Idle,
        ),
        (
            "fail",
            &[Checking, Pulling, Verifying, RollingBack, Failed],
            Failed,
        ),
        // Maintenance: drain, then undrain behind the health gate.
        ("drain", &[Idle, Failed, Checking], Draining),
        ("drained", &[Draining, Idle, Failed, Drained], Drained),
        ("undrain", &[Drained, Idle, Failed], Verifying),
    ];

    pub fn phase(&self) -> Phase {
        self.phase
    }

    fn go(&mut self, transition: &'static str, to: Phase) -> Moved {
        if self.phase == to {
            return Ok(());
        }
        let allowed = Self::ARCS
            .iter()
            .any(|(name, from, t)| *name == transition && *t == to && from.contains(&self.phase));
        if !allowed {
            return Err(InvalidTransition {
                transition,
                from: self.phase,
                to,
            });
        }
        self.phase = to;
        Ok(())
    }

    /// A check asks the registry or the hub which digest to run.
    pub fn check(&mut self) -> Moved {
        self.go("check", Checking)
    }
    /// An update begins: the new image is pulled and its container created.
    pub fn pull(&mut self) -> Moved {
        self.go("pull", Pulling)
    }
    /// The old worker is drained.
    pub fn drain_old(&mut self) -> Moved {
        self.go("drain_old", Draining)
    }
    /// The old worker stops and the new one starts.
    pub fn swap(&mut self) -> Moved {
        self.go("swap", Swapping)
    }
    /// The new worker runs and is verified.
    pub fn verify(&mut self) -> Moved {
        self.go("verify", Verifying)
    }
    /// The new worker failed: the old one is put back.
    pub fn roll_back(&mut self) -> Moved {
        self.go("roll_back", RollingBack)
    }
    /// The journal's `step` is resumed after a restart or an error midway.
    pub fn resume(&mut self, step: Phase) -> Moved {
        self.go("resume", step)
    }
    /// Nothing is in progress and the worker serves.
    pub fn settle(&mut self) -> Moved {
        self.go("settle", Idle)
    }
    /// Something failed and no good worker could be put back (or checked).
    pub fn fail(&mut self) -> Moved {
        self.go("fail", Failed)
    }
    /// A maintenance drain waits for the worker's jobs.
    pub fn drain(&mut self) -> Moved {
        self.go("drain", Draining)
    }
    /// The worker is drained and stopped; updates are held.
    pub fn drained(&mut self) -> Moved {
        self.go("drained", Drained)
    }
    /// The drained worker starts again and must pass the health gate.
    pub fn undrain(&mut self) -> Moved {
        self.go("undrain", Verifying)
    }
    /// At rest after the worker was made to run: drained or idle.
    pub fn at_rest(&mut self, drained: bool) -> Moved {
        if drained {
            self.drained()
        } else {
            self.settle()
        }
    }
}

/// An operator's action (the control socket's calls that change something).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Check,
    Update {
        digest: String,
    },
    Drain {
        reason: Option<String>,
        timeout: Option<Duration>,
    },
    Undrain,
    Rollback,
    Pin {
        reference: String,
    },
    Unpin,
}

/// Why nothing else can start now (an update or a check runs), if so.
fn busy(phase: Phase, st: &State) -> Option<String> {
    if let Some(p) = &st.pending {
        return Some(format!(
            "an update to {} is in progress (phase: {phase}); try again when it ends",
            p.to
        ));
    }
    match phase {
        Checking => Some("the agent is checking the registry; try again in a moment".into()),
        Draining if st.drained => Some(
            "a maintenance drain is waiting for in-flight jobs; agentctl undrain cancels it".into(),
        ),
        p if p.is_step() => Some(format!(
            "an update is in progress (phase: {p}); try again when it ends"
        )),
        _ => None,
    }
}

/// Whether a dry run (`agentctl check --dry-run`, `update --dry-run`) can be
/// answered now: not while an update or a maintenance drain runs (it would
/// describe a state about to change); a check in progress only delays it.
/// Drained and pinned are no reason: the dry run says what they hold.
pub fn allows_dry_run(phase: Phase, st: &State) -> Result<(), String> {
    match busy(phase, st) {
        Some(_) if phase == Checking && st.pending.is_none() => Ok(()),
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// Why updates are held now (drained or pinned), if they are: a poll or a
/// nudge does nothing while this says something.
pub fn held(st: &State) -> Option<&'static str> {
    if st.drained {
        Some("drained")
    } else if st.pinned.is_some() {
        Some("pinned")
    } else {
        None
    }
}

/// The one table of which operator action each state allows: `Err` says
/// why not, in words for the operator.
pub fn allows(action: &Action, phase: Phase, st: &State) -> Result<(), String> {
    let drained = || {
        st.drained.then(|| {
            "the worker is drained for maintenance: run `agentctl undrain` first".to_string()
        })
    };
    let pinned = || {
        st.pinned.as_ref().map(|p| {
            format!(
                "the worker is pinned to {p}: run `agentctl unpin` first, or `agentctl pin` the digest you want"
            )
        })
    };
    let busy = || busy(phase, st);
    let refusal = match action {
        Action::Check | Action::Pin { .. } => drained().or_else(busy),
        Action::Update { .. } => drained().or_else(busy).or_else(pinned),
        Action::Rollback => drained().or_else(busy).or_else(pinned).or_else(|| {
            st.rollback_target().is_none().then(|| {
                "there is no earlier good digest to roll back to (agentctl history shows what ran)"
                    .to_string()
            })
        }),
        Action::Drain { .. } if st.drained && !st.drain_complete => Some(
            "a maintenance drain is already in progress; agentctl status shows when it ends".into(),
        ),
        Action::Drain { .. } if st.drained => Some(format!(
            "the worker is already drained{}{}; `agentctl undrain` ends it",
            st.drained_at
                .and_then(|t| t.format(&Rfc3339).ok())
                .map(|t| format!(" since {t}"))
                .unwrap_or_default(),
            st.drain_reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        )),
        Action::Drain { .. } => busy(),
        Action::Undrain if !st.drained => {
            Some("the worker is not drained; nothing to undrain".into())
        }
        Action::Undrain => busy(),
        Action::Unpin if st.pinned.is_none() => {
            Some("the worker is not pinned; nothing to unpin".into())
        }
        Action::Unpin => busy(),
    };
    refusal.map_or(Ok(()), Err)
}

impl Machine {
    /// The transitions as a markdown table (`ARCHITECTURE.md` carries it; a
    /// test keeps the two the same).
    pub fn table() -> String {
        let mut out = String::from("| transition | from | to |\n| --- | --- | --- |\n");
        for (name, from, to) in Self::ARCS {
            let from: Vec<&str> = from.iter().map(|p| p.as_str()).collect();
            out.push_str(&format!("| `{name}` | {} | {to} |\n", from.join(", ")));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Step = fn(&mut Machine) -> Moved;

    fn walk(path: &[Step]) -> Result<Machine, InvalidTransition> {
        let mut m = Machine::default();
        for t in path {
            t(&mut m)?;
        }
        Ok(m)
    }

    #[test]
    fn state_machine_happy_path() {
        let m = walk(&[
            Machine::check,
            Machine::pull,
            Machine::drain_old,
            Machine::swap,
            Machine::verify,
            Machine::settle,
        ])
        .unwrap();
        assert_eq!(m.phase(), Idle);
    }

    #[test]
    fn failed_verification_rolls_back() {
        let m = walk(&[
            Machine::check,
            Machine::pull,
            Machine::drain_old,
            Machine::swap,
            Machine::verify,
            Machine::roll_back,
            Machine::settle,
        ])
        .unwrap();
        assert_eq!(m.phase(), Idle);
        let m = walk(&[
            Machine::pull,
            Machine::swap,
            Machine::roll_back,
            Machine::fail,
        ])
        .unwrap();
        assert_eq!(m.phase(), Failed);
    }

    #[test]
    fn no_step_is_skipped_into_commit() {
        let e = walk(&[Machine::check, Machine::pull, Machine::verify]).unwrap_err();
        assert_eq!((e.from, e.to, e.transition), (Pulling, Verifying, "verify"));
        // Verification cannot be left for a new update without commit or rollback.
        assert!(walk(&[Machine::pull, Machine::swap, Machine::verify, Machine::pull]).is_err());
        // A drain abort keeps the old worker: back to idle, never to swapping from checking.
        assert!(walk(&[Machine::check, Machine::swap]).is_err());
        // Swapping only ends in the verification or a rollback.
        assert!(walk(&[Machine::pull, Machine::swap, Machine::settle]).is_err());
        assert!(walk(&[Machine::pull, Machine::swap, Machine::fail]).is_err());
        walk(&[
            Machine::check,
            Machine::pull,
            Machine::drain_old,
            Machine::settle,
        ])
        .unwrap();
    }

    #[test]
    fn a_refused_transition_moves_nothing() {
        let mut m = walk(&[Machine::pull, Machine::swap]).unwrap();
        assert!(m.check().is_err());
        assert!(m.drain().is_err());
        assert_eq!(m.phase(), Swapping);
        // The same phase again is no move, so never refused.
        m.swap().unwrap();
        assert_eq!(m.phase(), Swapping);
    }

    #[test]
    fn a_restart_resumes_the_saved_step_only_from_rest() {
        for step in [Pulling, Draining, Swapping, Verifying, RollingBack] {
            let mut m = Machine::default();
            m.resume(step).unwrap();
            assert_eq!(m.phase(), step);
            let mut failed = walk(&[Machine::check, Machine::fail]).unwrap();
            failed.resume(step).unwrap();
        }
        let mut verifying = walk(&[Machine::pull, Machine::swap, Machine::verify]).unwrap();
        assert!(verifying.resume(Pulling).is_err());
        assert!(Machine::default().resume(Drained).is_err());
        assert!(walk(&[Machine::check, Machine::fail])
            .unwrap()
            .resume(Idle)
            .is_err());
    }

    #[test]
    fn maintenance_drains_then_undrains_behind_the_health_gate() {
        walk(&[
            Machine::drain,
            Machine::drained,
            Machine::undrain,
            Machine::settle,
        ])
        .unwrap();
        walk(&[
            Machine::drain,
            Machine::drained,
            Machine::undrain,
            Machine::fail,
        ])
        .unwrap();
        walk(&[Machine::drain, Machine::settle]).unwrap();
        // An update never starts from a drained worker.
        assert!(walk(&[Machine::drain, Machine::drained, Machine::check]).is_err());
        assert!(walk(&[Machine::drain, Machine::drained, Machine::pull]).is_err());
    }

    #[test]
    fn every_phase_is_reached_and_left() {
        for p in Phase::ALL {
            let reached = Machine::ARCS.iter().any(|(_, _, to)| *to == p) || p == Idle;
            let left = Machine::ARCS.iter().any(|(_, from, _)| from.contains(&p));
            assert!(reached && left, "{p}: reached {reached}, left {left}");
        }
        assert!(Phase::Idle.can_go_to(Checking));
        assert!(!Phase::Drained.can_go_to(Pulling));
    }

    #[test]
    fn the_architecture_page_carries_the_table() {
        let page = include_str!("../../../ARCHITECTURE.md");
        assert!(
            page.contains(&Machine::table()),
            "ARCHITECTURE.md's transition table differs from machine.rs; paste this:\n{}",
            Machine::table()
        );
    }

    fn committed() -> State {
        let mut s = State::default();
        s.commit("sha256:1111111111111111111111111111111111111111111111111111111111111111");
        s
    }

    #[test]
    fn the_action_table_refuses_with_a_reason() {
        let st = committed();
        assert_eq!(allows(&Action::Check, Idle, &st), Ok(()));
        assert!(allows(&Action::Check, Checking, &st)
            .unwrap_err()
            .contains("checking the registry"));
        assert!(allows(&Action::Undrain, Idle, &st)
            .unwrap_err()
            .contains("not drained"));
        assert!(allows(&Action::Unpin, Idle, &st)
            .unwrap_err()
            .contains("not pinned"));
        assert!(allows(&Action::Rollback, Idle, &st)
            .unwrap_err()
            .contains("no earlier good digest"));
        let drained = State {
            drained: true,
            drain_complete: true,
            ..committed()
        };
        for a in [
            Action::Check,
            Action::Update { digest: "d".into() },
            Action::Rollback,
            Action::Pin {
                reference: "v1".into(),
            },
        ] {
            assert!(allows(&a, Drained, &drained)
                .unwrap_err()
                .contains("agentctl undrain"));
        }
        assert_eq!(allows(&Action::Undrain, Drained, &drained), Ok(()));
        assert!(allows(
            &Action::Drain {
                reason: None,
                timeout: None
            },
            Drained,
            &drained
        )
        .unwrap_err()
        .contains("already drained"));
        let pinned = State {
            pinned: Some("v1".into()),
            ..committed()
        };
        assert!(
            allows(&Action::Update { digest: "d".into() }, Idle, &pinned)
                .unwrap_err()
                .contains("agentctl unpin")
        );
        assert_eq!(held(&pinned), Some("pinned"));
        assert_eq!(held(&drained), Some("drained"));
        assert_eq!(held(&st), None);
    }

    #[test]
    fn names_match_the_spec() {
        let names: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
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
        for p in Phase::ALL {
            let back: Phase = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
            assert_eq!(back, p);
        }
    }
}
