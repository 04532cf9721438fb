//! systemd integration through `sd_notify`: `READY=1` once the config is
//! loaded and the control socket listens (never waiting for the engine), `STATUS=` on every phase change,
//! `WATCHDOG=1` at half of `WATCHDOG_USEC` while the main loop is alive and
//! advances (a turn stuck in one phase past its bound stops the pings),
//! `STOPPING=1` on shutdown. Outside systemd (no `NOTIFY_SOCKET`) every call
//! is a no-op.

use std::future::Future;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, error};

use crate::config::Settings;
use crate::update::{Phase, View};

fn send(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        debug!(error = %e, "sd_notify");
    }
}

pub fn ready() {
    send(&[NotifyState::Ready]);
}

pub fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Pings the systemd watchdog at half of `WATCHDOG_USEC` while the main
/// loop drives something, as long as it advances: a turn that stays in one
/// phase longer than that phase may take ([`Bounds`]) is hung on an await
/// (every await in an update has a timeout, so this is a bug or a stuck
/// thread), and the pings stop so that systemd restarts the agent. A loop
/// that stops being polled stops the pings too.
pub struct Watchdog {
    tick: Option<tokio::time::Interval>,
    view: Option<watch::Receiver<View>>,
    bounds: Bounds,
}

/// How long the loop may stay in each phase of a turn before the watchdog
/// takes it as hung: the longest wait that phase may make by the config,
/// plus [`Bounds::MARGIN`] for the engine calls around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub pulling: Duration,
    pub draining: Duration,
    pub swapping: Duration,
    pub verifying: Duration,
    /// Checking, converging, and anything else.
    pub other: Duration,
}

impl Bounds {
    /// Room for the engine and registry calls of a phase (each has its own
    /// timeout, up to 2 min for an engine call).
    pub const MARGIN: Duration = Duration::from_secs(10 * 60);

    pub fn from_settings(s: &Settings) -> Bounds {
        // Test builds only: a hang can be shown without waiting minutes
        // (agent/tests/hangs.rs).
        #[cfg(feature = "failpoints")]
        if let Some(secs) = std::env::var("GPU_AGENT_TEST_WATCHDOG_BOUND_S")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            let d = Duration::from_secs(secs);
            return Bounds {
                pulling: d,
                draining: d,
                swapping: d,
                verifying: d,
                other: d,
            };
        }
        let w = &s.worker;
        let verify = w.health.timeout + w.health.stable_for;
        Bounds {
            pulling: s.image.pull_timeout + Self::MARGIN,
            draining: w.drain.timeout + w.stop_timeout + Self::MARGIN,
            swapping: w.stop_timeout + verify + Self::MARGIN,
            verifying: verify + Self::MARGIN,
            other: w.stop_timeout + verify + Self::MARGIN,
        }
    }

    /// With a drain that may wait `wait` (an operator's `drain --timeout`).
    pub fn with_drain(mut self, wait: Duration) -> Bounds {
        self.draining = self.draining.max(wait + Self::MARGIN);
        self
    }

    pub fn of(&self, phase: Phase) -> Duration {
        match phase {
            Phase::Pulling => self.pulling,
            Phase::Draining => self.draining,
            Phase::Swapping | Phase::RollingBack => self.swapping,
            Phase::Verifying => self.verifying,
            _ => self.other,
        }
    }
}

impl Watchdog {
    /// Reads `WATCHDOG_USEC`; without it (not under systemd) nothing is sent.
    /// `view` is the updater's: its phase changes are the loop's progress.
    pub fn from_env(view: watch::Receiver<View>, bounds: Bounds) -> Watchdog {
        let tick = sd_notify::watchdog_enabled().map(|usec| {
            let mut tick = tokio::time::interval(usec / 2);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        Watchdog {
            tick,
            view: Some(view),
            bounds,
        }
    }

    pub fn interval(&self) -> Option<Duration> {
        self.tick.as_ref().map(|t| t.period())
    }

    /// New bounds (a config reload).
    pub fn set_bounds(&mut self, bounds: Bounds) {
        self.bounds = bounds;
    }

    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// Resolves when the next ping is due (never without a watchdog).
    pub async fn due(&mut self) {
        match self.tick.as_mut() {
            Some(t) => {
                t.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    pub fn ping(&self) {
        send(&[NotifyState::Watchdog]);
    }

    /// Runs `f`, pinging on schedule while it is being driven and advances.
    pub async fn alive<F: Future>(&mut self, f: F) -> F::Output {
        let bounds = self.bounds;
        self.alive_within(f, bounds).await
    }

    /// [`Watchdog::alive`] with other bounds for this turn.
    pub async fn alive_within<F: Future>(&mut self, f: F, bounds: Bounds) -> F::Output {
        let Some(tick) = self.tick.as_mut() else {
            return f.await;
        };
        let mut progress = Progress::new(self.view.as_mut(), bounds);
        tokio::pin!(f);
        loop {
            tokio::select! {
                out = &mut f => return out,
                _ = tick.tick() => {
                    if progress.advancing(self.view.as_mut(), Instant::now()) {
                        send(&[NotifyState::Watchdog]);
                    }
                }
            }
        }
    }
}

/// Where the loop is in a turn: the phase and since when.
struct Progress {
    phase: Phase,
    since: Instant,
    bounds: Bounds,
    stalled: bool,
}

impl Progress {
    fn new(view: Option<&mut watch::Receiver<View>>, bounds: Bounds) -> Progress {
        let phase = view.map_or(Phase::Idle, |v| v.borrow_and_update().phase);
        Progress {
            phase,
            since: Instant::now(),
            bounds,
            stalled: false,
        }
    }

    /// Whether the loop still advances at `now`: it moved to another phase,
    /// or has been in this one for less than its bound.
    fn advancing(&mut self, view: Option<&mut watch::Receiver<View>>, now: Instant) -> bool {
        if let Some(v) = view {
            if v.has_changed().unwrap_or(false) {
                let phase = v.borrow_and_update().phase;
                if phase != self.phase {
                    self.phase = phase;
                    self.since = now;
                    self.stalled = false;
                }
            }
        }
        let bound = self.bounds.of(self.phase);
        let stuck = now.saturating_duration_since(self.since);
        if stuck <= bound {
            return true;
        }
        if !self.stalled {
            self.stalled = true;
            error!(phase = %self.phase, stuck = ?stuck, bound = ?bound,
                   "the update has not advanced past its bound: an await hangs; no longer pinging systemd's watchdog, which restarts the agent");
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(secs: u64) -> Bounds {
        let d = Duration::from_secs(secs);
        Bounds {
            pulling: d * 3,
            draining: d * 2,
            swapping: d,
            verifying: d,
            other: d,
        }
    }

    #[test]
    fn the_bound_is_per_phase_and_a_phase_change_is_progress() {
        let (tx, mut rx) = watch::channel(View::default());
        let t0 = Instant::now();
        let mut p = Progress::new(Some(&mut rx), bounds(10));
        assert!(p.advancing(Some(&mut rx), t0 + Duration::from_secs(9)));
        tx.send_modify(|v| v.phase = Phase::Pulling);
        // Pulling may take 30 s from when it began.
        assert!(p.advancing(Some(&mut rx), t0 + Duration::from_secs(11)));
        assert!(p.advancing(Some(&mut rx), t0 + Duration::from_secs(40)));
        assert!(!p.advancing(Some(&mut rx), t0 + Duration::from_secs(42)));
        assert!(p.stalled);
        // A view change that is no phase change is not progress.
        tx.send_modify(|v| v.last_error = Some("x".into()));
        assert!(!p.advancing(Some(&mut rx), t0 + Duration::from_secs(43)));
        tx.send_modify(|v| v.phase = Phase::Draining);
        assert!(p.advancing(Some(&mut rx), t0 + Duration::from_secs(44)));
        assert!(p.advancing(Some(&mut rx), t0 + Duration::from_secs(63)));
        assert!(!p.advancing(Some(&mut rx), t0 + Duration::from_secs(65)));
    }

    #[test]
    fn bounds_follow_the_config_and_an_operators_drain() {
        let b = bounds(10).with_drain(Duration::from_secs(3600));
        assert_eq!(
            b.of(Phase::Draining),
            Duration::from_secs(3600) + Bounds::MARGIN
        );
        assert_eq!(b.of(Phase::Pulling), Duration::from_secs(30));
        assert_eq!(b.of(Phase::Checking), Duration::from_secs(10));
        assert_eq!(b.of(Phase::RollingBack), Duration::from_secs(10));
    }
}
