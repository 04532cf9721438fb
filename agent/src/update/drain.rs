//! The drain protocol: the worker's drain endpoint or the hub's in-flight
//! count, waited for within a timeout; and the hub's drain notices.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::failpoint;
use super::journal::{Kind, Outcome, Trigger};
use super::outcome::{CheckOutcome, UpdateError};
use super::ports::Hub;
use super::Updater;
use crate::config::OnDrainTimeout;
use crate::docker::Engine;
use crate::worker::ProbeError;

/// How often the drain endpoint is asked for the in-flight count.
const DRAIN_POLL: Duration = Duration::from_millis(500);

/// Where the in-flight count of a drain comes from.
enum InFlightSource {
    /// The worker's drain endpoint (`worker.drain.http`).
    Worker(url::Url),
    /// The hub's view of the worker, where it has no drain endpoint.
    Hub(Arc<dyn Hub>),
}

impl<E: Engine> Updater<E> {
    /// Asks the old worker to stop taking jobs and waits for its in-flight jobs.
    /// `Err` means: keep the old worker (the reason is given). The count comes
    /// from the worker's drain endpoint or, where it has none, from the hub
    /// (`in_flight` of `GET /v1/workers/{id}`); with neither, SIGTERM with
    /// `stop_timeout` is the drain.
    pub(super) async fn drain(&self, timeout: Duration) -> Result<(), String> {
        let source = match (&self.worker.drain.http, &self.hub) {
            (Some(url), _) => InFlightSource::Worker(url.clone()),
            (None, Some(hub)) => InFlightSource::Hub(hub.clone()),
            (None, None) => return Ok(()),
        };
        let deadline = Instant::now() + timeout;
        let proceed = self.worker.drain.on_timeout == OnDrainTimeout::Proceed;
        if let Err(msg) = self.start_drain(&source, timeout).await {
            if proceed {
                warn!(error = %msg, "drain.on_timeout = proceed: swapping anyway");
                return Ok(());
            }
            return Err(msg);
        }
        let mut last = None;
        loop {
            match self.in_flight(&source).await {
                Ok(0) => {
                    info!("worker drained");
                    return Ok(());
                }
                Ok(n) => {
                    if last != Some(n) {
                        info!(in_flight = n, "waiting for in-flight jobs");
                    }
                    last = Some(n);
                    failpoint::hit("during-drain").await;
                }
                Err(e) => warn!(error = %e, "in-flight jobs"),
            }
            if Instant::now() >= deadline {
                let msg = format!(
                    "drain timed out after {} with {} jobs still in flight",
                    humantime::format_duration(timeout),
                    last.map_or("an unknown number of".to_string(), |n| n.to_string())
                );
                if proceed {
                    warn!(reason = %msg, "drain.on_timeout = proceed: swapping anyway");
                    return Ok(());
                }
                return Err(msg);
            }
            tokio::select! {
                _ = tokio::time::sleep(DRAIN_POLL) => {}
                _ = self.shutdown.cancelled() => {
                    return Err("the agent is shutting down".into());
                }
            }
            if self.drain_cancel.swap(false, Ordering::SeqCst) {
                return Err("cancelled by agentctl undrain".into());
            }
        }
    }

    /// Tells the worker to stop taking jobs (`POST` on its drain endpoint);
    /// with the hub as the count, its first answer must come, or the agent
    /// cannot know what a stop would kill (the hub was told already).
    async fn start_drain(&self, source: &InFlightSource, timeout: Duration) -> Result<(), String> {
        match source {
            InFlightSource::Worker(url) => {
                info!(url = %url, timeout = ?timeout, "draining the worker");
                self.probe
                    .drain_start(url)
                    .await
                    .map_err(|e| format!("could not start draining: {e}"))
            }
            InFlightSource::Hub(hub) => {
                info!(timeout = ?timeout, "waiting for the worker's in-flight jobs as the hub counts them (no worker.drain.http)");
                match hub.worker().await {
                    Ok(w) if w.in_flight.is_some() => Ok(()),
                    Ok(_) => Err("the hub's answer has no in_flight count, so it cannot tell when the jobs are done (set worker.drain.http, or have the hub send in_flight)".to_string()),
                    Err(e) => Err(format!(
                        "could not learn the in-flight jobs from the hub: {}",
                        crate::error_chain(&e)
                    )),
                }
            }
        }
    }

    /// The worker's in-flight jobs now, as `source` counts them.
    async fn in_flight(&self, source: &InFlightSource) -> Result<u64, String> {
        match source {
            InFlightSource::Worker(url) => {
                self.probe.in_flight(url).await.map_err(|e| e.to_string())
            }
            InFlightSource::Hub(hub) => match hub.worker().await {
                Ok(w) => w
                    .in_flight
                    .ok_or_else(|| "the hub's answer has no in_flight count".to_string()),
                Err(e) => Err(crate::error_chain(&e)),
            },
        }
    }

    /// Gives a worker that was drained but kept running its jobs back:
    /// `DELETE` on its drain endpoint. A worker that does not support it
    /// (404, 405 or 501: an older worker) still refuses jobs: it is restarted
    /// once it has no job in flight (now, or at the start of a later turn),
    /// which starts it afresh. Returns what status must say about it.
    pub(super) async fn give_jobs_back(&mut self) -> Option<String> {
        let url = self.worker.drain.http.clone()?;
        match self.probe.drain_cancel(&url).await {
            Ok(()) => None,
            Err(
                e @ ProbeError::Status {
                    status: 404 | 405 | 501,
                    ..
                },
            ) => {
                self.refuses_jobs = Some(format!(
                    "the worker does not end a drain through DELETE on its drain endpoint ({e}), so it refuses jobs until it is restarted"
                ));
                self.restart_if_idle().await
            }
            Err(e) => {
                warn!(error = %e, "could not tell the worker to take jobs again (DELETE on the drain endpoint); \
                      it keeps running, but may refuse new jobs until it is restarted");
                None
            }
        }
    }

    /// A worker that refuses jobs since a drain it could not be told to end
    /// ([`Updater::give_jobs_back`]) is restarted as soon as it has no job
    /// in flight. Returns what status must say: that it was restarted, or
    /// that it will be.
    pub(super) async fn restart_if_idle(&mut self) -> Option<String> {
        let why = self.refuses_jobs.clone()?;
        let url = self.worker.drain.http.clone()?;
        match self.probe.in_flight(&url).await {
            Ok(0) => match self.restart_primary().await {
                Ok(()) => {
                    self.refuses_jobs = None;
                    let note = format!(
                        "{why}: it was restarted, with no job in flight, and takes jobs again"
                    );
                    warn!(note = %note, "worker restarted");
                    // The worker takes jobs again: an undrain, in the history.
                    self.record_action(
                        Kind::Undrain,
                        Outcome::Success,
                        Trigger::Poll,
                        None,
                        Some(note.clone()),
                    );
                    Some(note)
                }
                Err(e) => Some(format!(
                    "{why}: restarting it failed ({}); it is tried again at the next check",
                    crate::error_chain(&e)
                )),
            },
            Ok(n) => Some(format!(
                "{why}: it is restarted once its {n} in-flight jobs finish"
            )),
            Err(e) => Some(format!(
                "{why}: it is restarted once it says it has no job in flight (asking failed: {e})"
            )),
        }
    }

    /// Stops and starts the primary container (its restart policy kept).
    async fn restart_primary(&self) -> Result<(), UpdateError> {
        if let Some(c) = self.primary_running().await? {
            info!(container = %c.name, "restarting the worker so that it takes jobs again");
            self.engine.stop(&c.id, self.worker.stop_timeout).await?;
            self.engine.start(&c.id).await?;
        }
        Ok(())
    }

    /// Tells the hub to stop or resume sending jobs (best effort: a hub that
    /// does not answer is logged and the update goes on).
    /// `true` is saved (`state.hub_draining`) before it is sent, and
    /// cleared once the hub acknowledged a `false`; a `false` that did not
    /// get through is sent again at the next check ([`Updater::hub_resume_pending`]).
    /// A `false` with no `true` before it is not sent. Returns whether the
    /// hub acknowledged.
    pub(super) async fn hub_drain(&mut self, draining: bool, reason: &str) -> bool {
        let Some(hub) = self.hub.clone() else {
            return true;
        };
        if !draining && !self.state.hub_draining {
            return true;
        }
        if draining && !self.state.hub_draining {
            self.state.hub_draining = true;
            self.save_or_warn("the drain notice");
        }
        let sent = tokio::select! {
            r = hub.drain_notice(draining, reason) => r.is_ok(),
            _ = self.stop_now.cancelled() => false,
        };
        if sent && !draining {
            self.state.hub_draining = false;
            self.save_or_warn("the drain notice");
        }
        sent
    }

    /// After a rollback: the hub may send jobs again once the old worker
    /// serves (not when the rollback failed or was left to the next start).
    pub(super) async fn hub_resume_after(&mut self, out: &CheckOutcome) {
        if matches!(out, CheckOutcome::RolledBack { .. }) {
            self.hub_drain(false, "rolled back; the last good worker serves")
                .await;
        }
    }

    /// A `draining: false` that has not got through (the hub was down at the
    /// commit, the agent was killed before it, a rollback was resumed) is
    /// sent again while the worker serves.
    pub(super) async fn hub_resume_pending(&mut self) {
        if self.state.hub_draining && !self.state.drained && self.state.pending.is_none() {
            info!("telling the hub again that the worker takes jobs");
            self.hub_drain(false, "the worker serves").await;
        }
    }
}
