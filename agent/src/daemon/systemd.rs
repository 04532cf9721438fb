//! systemd integration through `sd_notify`: `READY=1` once the config is
//! loaded and the first reconcile is done, `STATUS=` on every phase change,
//! `WATCHDOG=1` at half of `WATCHDOG_USEC` while the main loop is alive,
//! `STOPPING=1` on shutdown. Outside systemd (no `NOTIFY_SOCKET`) every call
//! is a no-op.

use std::future::Future;
use std::time::Duration;

use sd_notify::NotifyState;
use tracing::debug;

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
/// loop drives something. A loop that stops being polled (a hung thread) stops
/// the pings and systemd restarts the agent; a long update that makes
/// progress (every await in it has a timeout) does not.
pub struct Watchdog {
    tick: Option<tokio::time::Interval>,
}

impl Watchdog {
    /// Reads `WATCHDOG_USEC`; without it (not under systemd) nothing is sent.
    pub fn from_env() -> Watchdog {
        let tick = sd_notify::watchdog_enabled().map(|usec| {
            let mut tick = tokio::time::interval(usec / 2);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        Watchdog { tick }
    }

    pub fn interval(&self) -> Option<Duration> {
        self.tick.as_ref().map(|t| t.period())
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

    /// Runs `f`, pinging on schedule while it is being driven.
    pub async fn alive<F: Future>(&mut self, f: F) -> F::Output {
        let Some(tick) = self.tick.as_mut() else {
            return f.await;
        };
        tokio::pin!(f);
        loop {
            tokio::select! {
                out = &mut f => return out,
                _ = tick.tick() => send(&[NotifyState::Watchdog]),
            }
        }
    }
}
