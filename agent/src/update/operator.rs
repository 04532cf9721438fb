//! An operator's actions beyond an update: a maintenance drain and undrain,
//! a rollback to the digest before, a pin and its release.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{error, info, warn};

use super::journal::{HistoryEntry, Kind, Outcome, Trigger};
use super::machine::Machine;
use super::outcome::{Blame, CheckOutcome, UpdateError};
use super::Updater;
use crate::docker::{Container, Engine};

impl<E: Engine> Updater<E> {
    /// An operator deploys `digest` on purpose: its bad mark and strikes go.
    /// Its mark goes with the commit (in the same write), so a deploy that
    /// is aborted or fails for another reason leaves the mark in place.
    pub fn forgive(&mut self, digest: &str) -> Result<(), UpdateError> {
        self.state.strikes.remove(digest);
        if self
            .state
            .retry
            .as_ref()
            .is_some_and(|r| r.digest == digest)
        {
            self.state.retry = None;
        }
        if self.state.is_bad(digest) {
            info!(
                digest,
                "an operator deploys a digest marked bad: the mark goes once it is verified"
            );
        }
        Ok(())
    }

    /// A history entry for an operator's action on the worker as it is.
    /// A drain entry carries the drain's reason.
    pub(super) fn record_action(
        &self,
        kind: Kind,
        outcome: Outcome,
        trigger: Trigger,
        error: Option<String>,
        reason: Option<String>,
    ) {
        self.record(HistoryEntry {
            at: self.now(),
            kind,
            from: self.state.current_digest.clone(),
            to: None,
            outcome,
            trigger,
            error,
            downtime_ms: None,
            reason,
            user: None,
            marked_bad: None,
            gpu_hold: None,
            changed: Vec::new(),
            spec: None,
        });
    }

    /// Maintenance: the worker stops taking jobs, its in-flight jobs finish
    /// (up to `timeout`, default `worker.drain.timeout`), then it is stopped
    /// with restart policy `no`, so neither dockerd nor a reboot brings it
    /// back; updates are held until [`Updater::undrain`]. The drain is saved
    /// before it starts: a restart of the agent resumes it.
    pub async fn drain_for_maintenance(
        &mut self,
        reason: Option<String>,
        timeout: Option<Duration>,
    ) -> Result<CheckOutcome, UpdateError> {
        self.converge().await?;
        self.drain_for_maintenance_by(reason, timeout, Trigger::Cli)
            .await
    }

    /// [`Updater::drain_for_maintenance`] with what asked for it.
    pub(super) async fn drain_for_maintenance_by(
        &mut self,
        reason: Option<String>,
        timeout: Option<Duration>,
        trigger: Trigger,
    ) -> Result<CheckOutcome, UpdateError> {
        if self.state.drained && self.state.drain_complete {
            return Ok(CheckOutcome::Drained);
        }
        // A flag left from an earlier drain must not cancel this one.
        self.drain_cancel.store(false, Ordering::SeqCst);
        self.state.drained = true;
        self.state.drain_complete = false;
        // An operator's text: escaped and capped before it is kept.
        self.state.drain_reason = reason.map(|r| crate::text::sanitize(&r, crate::text::MAX_TEXT));
        self.state.drained_at = Some(self.now());
        self.save()?;
        info!(
            reason = self.state.drain_reason.as_deref().unwrap_or("-"),
            "maintenance drain"
        );
        self.finish_drain(timeout.unwrap_or(self.worker.drain.timeout), trigger)
            .await
    }

    /// Drains and stops the worker for maintenance (also where a drain a
    /// restart interrupted is resumed).
    pub(super) async fn finish_drain(
        &mut self,
        timeout: Duration,
        trigger: Trigger,
    ) -> Result<CheckOutcome, UpdateError> {
        self.go(Machine::drain)?;
        let running: Vec<Container> = self
            .engine
            .list_managed()
            .await?
            .into_iter()
            .filter(|c| c.running || c.restarting)
            .collect();
        if !running.is_empty() {
            let why = self.state.drain_reason.clone();
            self.hub_drain(true, why.as_deref().unwrap_or("maintenance"))
                .await;
            let drained = match self.drain(timeout).await {
                // An undrain that came as the last job ended still wins.
                Ok(()) if self.drain_cancel.swap(false, Ordering::SeqCst) => {
                    Err("cancelled by agentctl undrain".to_string())
                }
                r => r,
            };
            if let Err(reason) = drained {
                if self.shutdown.is_cancelled() {
                    info!("the agent stops during a maintenance drain; it resumes when the agent starts again");
                    return Ok(CheckOutcome::Aborted(
                        "the agent is shutting down; the drain resumes when it starts again".into(),
                    ));
                }
                return self
                    .abort_maintenance_drain(&running, reason, trigger)
                    .await;
            }
            for c in &running {
                info!(container = %c.name, "stopping the worker for maintenance");
                self.stop_for_good(&c.id).await?;
            }
        }
        self.state.drain_complete = true;
        self.save()?;
        self.record_action(
            Kind::Drain,
            Outcome::Success,
            trigger,
            None,
            self.state.drain_reason.clone(),
        );
        self.go(Machine::drained)?;
        Ok(CheckOutcome::Drained)
    }

    /// A maintenance drain that timed out (with `on_timeout = "abort"`) or
    /// was cancelled: the worker keeps serving, with its jobs and restart
    /// policy back, and the drain is cleared.
    async fn abort_maintenance_drain(
        &mut self,
        running: &[Container],
        reason: String,
        trigger: Trigger,
    ) -> Result<CheckOutcome, UpdateError> {
        let reason = format!("{reason}; the worker keeps serving and is not drained");
        warn!(reason = %reason, "maintenance drain aborted");
        // A drain a crash interrupted may have set it to `no` already.
        for c in running {
            self.restore_restart(&c.id).await?;
        }
        let reason = match self.give_jobs_back().await {
            Some(note) => format!("{reason}; {note}"),
            None => reason,
        };
        self.hub_drain(false, "maintenance drain aborted").await;
        self.state.drained = false;
        let why = self.state.drain_reason.take();
        self.state.drained_at = None;
        self.save()?;
        self.record_action(
            Kind::Drain,
            Outcome::Aborted,
            trigger,
            Some(reason.clone()),
            why,
        );
        self.last_error = Some(reason.clone());
        self.settle()?;
        Ok(CheckOutcome::Aborted(reason))
    }

    /// Ends a maintenance drain: the worker starts again (its restart policy
    /// restored, recreated from the spec if it will not start) and must pass
    /// the health gate (`worker.health`); updates resume.
    pub async fn undrain(&mut self) -> Result<CheckOutcome, UpdateError> {
        let was_running = self.primary_running().await?.is_some();
        self.state.drained = false;
        self.state.drain_complete = false;
        self.state.drain_reason = None;
        self.state.drained_at = None;
        self.save()?;
        info!("undrain: starting the worker again");
        self.go(Machine::undrain)?;
        let started = self.ensure_running().await;
        // It never stopped: it only needs its jobs back, and is not
        // "undrained" while it still refuses them.
        let refuses = match was_running {
            true => self
                .give_jobs_back()
                .await
                .filter(|_| self.refuses_jobs.is_some()),
            false => None,
        };
        let verified = match started {
            Err(e) => Err(crate::error_chain(&e)),
            Ok(()) if refuses.is_some() => Err(refuses.unwrap_or_default()),
            Ok(()) if self.state.current_digest.is_none() => Ok(()),
            Ok(()) => {
                self.go(Machine::undrain)?;
                match self.verify_primary(None).await {
                    Ok(_) => Ok(()),
                    Err(f) if f.blame == Blame::Stopped => {
                        return Ok(CheckOutcome::Suspended(f.error));
                    }
                    Err(f) => Err(f.error),
                }
            }
        };
        self.emit(super::Event::WorkerHealth(verified.is_ok()));
        match verified {
            Ok(()) => {
                self.hub_drain(false, "undrained").await;
                self.record_action(Kind::Undrain, Outcome::Success, Trigger::Cli, None, None);
                self.last_error = None;
                self.settle()?;
                Ok(CheckOutcome::Undrained)
            }
            Err(error) => {
                let msg = format!("the worker did not pass its health gate after undrain: {error}");
                error!(error = %msg, "undrain");
                self.record_action(
                    Kind::Undrain,
                    Outcome::Failed,
                    Trigger::Cli,
                    Some(msg.clone()),
                    None,
                );
                self.last_error = Some(msg.clone());
                self.go(Machine::fail)?;
                Ok(CheckOutcome::Failed(msg))
            }
        }
    }

    /// An operator's rollback: back to the good digest before the current
    /// one, through the same drain/verify path; once it is verified, the
    /// digest left is marked bad so polling does not bring it back.
    pub async fn rollback_to_previous(&mut self) -> Result<CheckOutcome, UpdateError> {
        let Some(target) = self.state.rollback_target().map(str::to_string) else {
            return Ok(CheckOutcome::Failed(
                "there is no earlier good digest to roll back to".into(),
            ));
        };
        info!(to = %target, from = self.state.current_digest.as_deref().unwrap_or("-"), "operator rollback");
        self.converge().await?;
        self.forgive(&target)?;
        self.deploy(&target, Trigger::Cli, Kind::Rollback, None)
            .await
    }

    /// Deploys the digest `reference` names (a digest, or a tag resolved
    /// now) and holds the worker there: checks are skipped until
    /// [`Updater::unpin`]. An operator's pin clears the digest's bad mark.
    /// A pin whose digest does not verify is rolled back and not held.
    pub async fn pin(&mut self, reference: &str) -> Result<CheckOutcome, UpdateError> {
        self.converge().await?;
        let digest = if crate::registry::is_sha256_digest(reference) {
            reference.to_string()
        } else {
            self.go(Machine::check)?;
            let policy = crate::registry::Policy::Tag(reference.to_string());
            let resolved = tokio::select! {
                r = self.registry.resolve(&self.settings.image.name, &policy) => r,
                _ = self.shutdown.cancelled() => {
                    self.settle()?;
                    return Ok(CheckOutcome::Aborted("the agent is shutting down".into()));
                }
            };
            self.settle()?;
            resolved?.digest
        };
        self.forgive(&digest)?;
        if self.state.current_digest.as_deref() == Some(digest.as_str()) {
            self.state.bad_digests.retain(|b| b.digest != digest);
            self.state.pinned = Some(reference.to_string());
            self.state.pinned_digest = Some(digest.clone());
            self.save()?;
            self.record(HistoryEntry {
                at: self.now(),
                kind: Kind::Pin,
                from: Some(digest.clone()),
                to: Some(digest),
                outcome: Outcome::Success,
                trigger: Trigger::Cli,
                error: None,
                downtime_ms: None,
                reason: None,
                user: None,
                marked_bad: None,
                gpu_hold: None,
                changed: Vec::new(),
                spec: None,
            });
            return Ok(CheckOutcome::UpToDate);
        }
        self.deploy(
            &digest,
            Trigger::Cli,
            Kind::Pin,
            Some(reference.to_string()),
        )
        .await
    }

    /// Releases the pin: the next check follows the registry (or hub) again.
    pub fn unpin(&mut self) -> Result<CheckOutcome, UpdateError> {
        if self.state.pinned.take().is_some() {
            let digest = self.state.pinned_digest.take();
            self.save()?;
            self.record(HistoryEntry {
                at: self.now(),
                kind: Kind::Unpin,
                from: digest,
                to: None,
                outcome: Outcome::Success,
                trigger: Trigger::Cli,
                error: None,
                downtime_ms: None,
                reason: None,
                user: None,
                marked_bad: None,
                gpu_hold: None,
                changed: Vec::new(),
                spec: None,
            });
        }
        Ok(CheckOutcome::Unpinned)
    }
}
