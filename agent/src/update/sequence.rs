//! The update sequence: pre-pull and create the new container while the old
//! one serves, drain the old worker, swap, verify, then commit or roll back.
//! Each step is saved in the journal before it starts.

use std::sync::atomic::Ordering;

use tokio::time::Instant;
use tracing::{info, warn};

use super::events::Event;
use super::failpoint;
use super::fleet_slot::SlotAnswer;
use super::journal::{Kind, Outcome, Pending, Retry, Trigger};
use super::machine::Machine;
use super::outcome::{Blame, CheckOutcome, Failure, UpdateError};
use super::spec_change::SettingsChange;
use super::Updater;
use crate::config::OnDrainTimeout;
use crate::docker::{Engine, EngineError};
use crate::gpu::Snapshot;

/// Failures of one digest not plainly its own fault (a pull the registry
/// refuses, a container the engine will not create or start) after which it is
/// marked bad anyway, so that a persistent problem does not loop.
pub(super) const STRIKES_BEFORE_BAD: u32 = 3;
/// The first back-off after a rollback that blamed nothing ...
const RETRY_BASE: std::time::Duration = std::time::Duration::from_secs(60);
/// ... doubling up to this.
const RETRY_CAP: std::time::Duration = std::time::Duration::from_secs(3600);

/// Why an update ends before the swap: the old worker keeps serving.
enum Stop {
    /// Not begun: a gate said no (`Failed`), or the target runs already.
    Before(CheckOutcome),
    /// Begun and aborted: the prepared container goes, the old worker gets
    /// its jobs back.
    Abort(String),
    /// A hardware fault during the pull or the drain: aborted, and updates
    /// are held.
    GpuFault(String),
}

/// Why an update stops when the next step could not be saved.
fn unsaved_before(e: &UpdateError) -> String {
    format!(
        "the next step could not be saved ({}); the update is aborted and the old worker keeps serving",
        crate::error_chain(e)
    )
}

const SHUTTING_DOWN: &str = "the agent is shutting down; the update will be tried again";

impl<E: Engine> Updater<E> {
    /// Deploys `target` through pre-pull, drain, swap and verification
    /// (recovery first, as at the start of every turn).
    pub async fn update_to(
        &mut self,
        target: &str,
        trigger: Trigger,
    ) -> Result<CheckOutcome, UpdateError> {
        self.converge().await?;
        self.deploy(target, trigger, Kind::Update, None).await
    }

    /// [`Updater::update_to`] for an update, an operator's rollback or a pin:
    /// `kind` is recorded in the history and decides what the commit also does.
    pub(super) async fn deploy(
        &mut self,
        target: &str,
        trigger: Trigger,
        kind: Kind,
        pin: Option<String>,
    ) -> Result<CheckOutcome, UpdateError> {
        self.deploy_with(target, trigger, kind, pin, None).await
    }

    /// [`Updater::deploy`]; with `change`, the running digest is deployed
    /// again with the config's worker settings (`spec_change.rs`).
    pub(super) async fn deploy_with(
        &mut self,
        target: &str,
        trigger: Trigger,
        kind: Kind,
        pin: Option<String>,
        change: Option<SettingsChange>,
    ) -> Result<CheckOutcome, UpdateError> {
        let snap = match self
            .preflight(target, trigger, kind, change.is_some())
            .await?
        {
            Ok(snap) => snap,
            Err(outcome) => return Ok(outcome),
        };
        let change = change.unwrap_or_default();
        let p = Pending {
            from: self.state.current_digest.clone(),
            to: target.to_string(),
            trigger,
            step: super::Phase::Pulling,
            started_at: self.now(),
            error: None,
            kind,
            pin,
            to_spec: change.to_spec,
            from_spec: change.from_spec,
            changed: change.changed,
        };
        self.state.pending = Some(p.clone());
        if let Err(e) = self.set_step(Machine::pull) {
            // Not written, so not begun (a full disk): nothing is in
            // progress, and the next check or action may try again.
            self.state.pending = None;
            self.publish();
            return Err(e);
        }
        let before_swap = match self.pull_step(&p, snap.as_ref()).await? {
            // The fleet group's slot, between the pull and the drain: the
            // old worker serves while the host waits for one.
            None => match self.take_slot(&p).await? {
                SlotAnswer::Go => self.drain_step(&p).await?,
                SlotAnswer::Wait(why) => return self.wait_for_slot(&p, why).await,
            },
            stop => stop,
        };
        match before_swap {
            Some(Stop::Before(outcome)) => Ok(outcome),
            Some(Stop::Abort(reason)) => {
                let said = self.abort_prepared(&p, reason).await?;
                self.give_slot_back().await;
                Ok(CheckOutcome::Aborted(said))
            }
            Some(Stop::GpuFault(what)) => {
                let said = self.abort_prepared(&p, what.clone()).await?;
                self.give_slot_back().await;
                self.hold_for_gpu_fault(&what, trigger).await?;
                Ok(CheckOutcome::Aborted(said))
            }
            None => {
                // 3. Swap, 4. verify, 5. commit or roll back. The old worker
                // is not stopped unless the step is on disk.
                if let Err(e) = self.set_step(Machine::swap) {
                    let said = self.abort_prepared(&p, unsaved_before(&e)).await?;
                    return Ok(CheckOutcome::Aborted(said));
                }
                self.swap_and_verify(&p).await
            }
        }
    }

    /// Before anything is pulled: the worker runs as it should, the target is
    /// new (or its settings are), and the gates (the engine's GPUs, the GPU
    /// pre-flight, the hub) let an update start. `Ok(Err(outcome))`: it does
    /// not start.
    async fn preflight(
        &mut self,
        target: &str,
        trigger: Trigger,
        kind: Kind,
        settings_only: bool,
    ) -> Result<Result<Option<Snapshot>, CheckOutcome>, UpdateError> {
        // The turn began with recovery; if it failed, the starting point must
        // be made sound now (this also refuses a worker name held by a
        // container not ours).
        if !self.converged {
            self.converge().await?;
        }
        self.settle()?;
        let running = self.state.current_digest.as_deref() == Some(target);
        if running != settings_only {
            return Ok(Err(CheckOutcome::UpToDate));
        }
        // An engine that could not give the last new worker its GPUs would
        // only let the swap stop the old one again.
        if trigger == Trigger::Cli {
            self.gpu_unavailable = None;
        }
        if self.worker.gpus != crate::config::Gpus::None {
            if let Some(why) = &self.gpu_unavailable {
                let msg = format!(
                    "updates from polls wait (agentctl check tries again once the engine is fixed): {why}"
                );
                self.last_error = Some(msg.clone());
                return Ok(Err(CheckOutcome::Failed(msg)));
            }
        }
        // The digest that runs was admitted when it was deployed.
        if !settings_only {
            if let Some(refused) = self.admit(target, trigger, kind).await? {
                return Ok(Err(refused));
            }
        }
        let snap = match self.gpu_gate(target, trigger, kind).await {
            Ok(snap) => snap,
            Err(why) => return Ok(Err(CheckOutcome::Failed(why))),
        };
        if let Err(why) = self.hub_preflight().await {
            warn!(digest = %target, reason = %why, "update waits for the hub");
            self.last_error = Some(why.clone());
            self.settle()?;
            return Ok(Err(CheckOutcome::Failed(why)));
        }
        Ok(Ok(snap))
    }

    /// Step 1: pre-pull and create the new container while the old one serves,
    /// then the CUDA check. A stop of the agent ends a pull at once: the old
    /// worker was not touched.
    async fn pull_step(
        &mut self,
        p: &Pending,
        snap: Option<&Snapshot>,
    ) -> Result<Option<Stop>, UpdateError> {
        let target = p.to.as_str();
        let prepared = tokio::select! {
            r = self.prepare(target) => r,
            _ = self.shutdown.cancelled() => return Ok(Some(Stop::Abort(SHUTTING_DOWN.into()))),
        };
        if let Err(e) = prepared {
            let msg = crate::error_chain(&e);
            // A registry or engine that is down, a rate limit or a full disk say
            // nothing about the image; a registry that has not got it, or an
            // engine that will not create it, does.
            let counts = match &e {
                UpdateError::Engine(e) => {
                    e.is_permanent_pull_failure() || e.is_create_refused_for_the_image()
                }
                UpdateError::Registry(r) => !r.is_transient(),
                _ => false,
            };
            // A container the engine will not create from the new settings
            // of a digest that runs is the settings' fault: they are held.
            let marked = if p.settings_only() {
                if counts {
                    self.hold_settings(p, &msg);
                }
                false
            } else {
                counts && self.strike(target, &msg)
            };
            warn!(digest = %target, error = %msg, counted = counts, marked_bad = marked,
                  "could not prepare the new worker; the old one keeps serving");
            // A digest the hub named that the registry does not have leaves
            // no history line each time (a flood of them would bury the
            // history); its mark, at the third, does.
            let hub_named = matches!(p.trigger, Trigger::Nudge | Trigger::Hub);
            let quiet = hub_named
                && !marked
                && matches!(&e, UpdateError::Engine(x) if x.is_permanent_pull_failure());
            self.end_before_swap(p, msg.clone(), !quiet).await?;
            return Ok(Some(Stop::Before(CheckOutcome::Failed(msg))));
        }
        if let Some(snap) = snap {
            if let Err(msg) = self.cuda_check(target, snap).await {
                warn!(digest = %target, error = %msg, "CUDA version check failed; the old worker keeps serving");
                let at = self.now();
                self.state.mark_bad(target, &msg, at);
                self.end_before_swap(p, msg.clone(), true).await?;
                return Ok(Some(Stop::Before(CheckOutcome::Failed(msg))));
            }
        }
        failpoint::hit("after-pull").await;
        Ok(None)
    }

    /// The update failed before the drain: the prepared container goes, the
    /// history says why, the old worker was never touched.
    async fn end_before_swap(
        &mut self,
        p: &Pending,
        msg: String,
        record: bool,
    ) -> Result<(), UpdateError> {
        self.remove_named(&self.next_name()).await;
        self.state.pending = None;
        self.save_going_on();
        if record {
            self.history(p, Outcome::Failed, Some(msg.clone()), None);
        }
        self.last_error = Some(msg);
        if self.state.current_digest.is_some() {
            self.settle()
        } else {
            self.go(Machine::fail)
        }
    }

    /// Step 2: drain the old worker (if one runs). Then the last moment to stop
    /// with the old worker untouched: a hardware fault during the pull or the
    /// drain, or a stop of the agent.
    async fn drain_step(&mut self, p: &Pending) -> Result<Option<Stop>, UpdateError> {
        if self.primary_running().await?.is_some() {
            if let Err(e) = self.set_step(Machine::drain_old) {
                return Ok(Some(Stop::Abort(unsaved_before(&e))));
            }
            let told = self.hub_drain(true, &format!("update to {}", p.to)).await;
            if !told && self.worker.drain.http.is_none() {
                // The hub counts the jobs, but did not hear to stop sending them.
                let reason = "the hub did not take the drain notice, and without worker.drain.http its in-flight count is the only drain: the update waits".to_string();
                if self.worker.drain.on_timeout != OnDrainTimeout::Proceed {
                    return Ok(Some(Stop::Abort(reason)));
                }
                warn!(reason = %reason, "drain.on_timeout = proceed: swapping anyway");
            }
            self.drain_cancel.store(false, Ordering::SeqCst);
            if let Err(reason) = self.drain(self.worker.drain.timeout).await {
                return Ok(Some(Stop::Abort(reason)));
            }
        }
        failpoint::hit("after-drain").await;
        if let Some(what) = self.hardware_fault_since_good() {
            return Ok(Some(Stop::GpuFault(what)));
        }
        if self.shutdown.is_cancelled() {
            return Ok(Some(Stop::Abort(SHUTTING_DOWN.into())));
        }
        Ok(None)
    }

    /// Counts a strike against `digest`; marks it bad at the third. Returns
    /// whether it is now marked.
    pub(super) fn strike(&mut self, digest: &str, reason: &str) -> bool {
        let n = self.state.strikes.entry(digest.to_string()).or_default();
        *n += 1;
        if *n < STRIKES_BEFORE_BAD {
            return false;
        }
        self.state.strikes.remove(digest);
        let at = self.now();
        self.state.mark_bad(
            digest,
            &format!("{reason} ({STRIKES_BEFORE_BAD} times)"),
            at,
        );
        true
    }

    /// A rollback that blamed nothing (or counted a strike short of a
    /// mark): the digest is tried again only after a back-off (1 minute,
    /// doubling, at most an hour; saved, so a restart keeps it), and marked
    /// bad at `image.max_attempts`, so a cause nobody names does not cost a
    /// drain, a swap and a rollback every poll.
    fn back_off(&mut self, digest: &str, error: &str) {
        if self.state.is_bad(digest) {
            self.state.retry = None;
            self.save_going_on();
            return;
        }
        let attempts = match &self.state.retry {
            Some(r) if r.digest == digest => r.attempts + 1,
            _ => 1,
        };
        let now = self.now();
        if attempts >= self.settings.image.max_attempts {
            let why = format!(
                "rolled back {attempts} times without a clear cause (image.max_attempts); the last time: {error}"
            );
            warn!(
                digest,
                attempts, "marked bad after repeated rollbacks that blamed nothing"
            );
            self.state.mark_bad(digest, &why, now);
            self.state.retry = None;
        } else {
            let wait = RETRY_BASE
                .saturating_mul(1 << (attempts - 1).min(16))
                .min(RETRY_CAP);
            info!(digest, attempts, retry_in = ?wait, "the rollback blamed nothing: the digest is tried again after a back-off");
            self.state.retry = Some(Retry {
                digest: digest.to_string(),
                attempts,
                until: now + wait,
                last_error: error.to_string(),
            });
        }
        self.save_going_on();
    }

    /// Steps 3 to 5, from the swap on (also where a resumed update goes on).
    pub(super) async fn swap_and_verify(
        &mut self,
        p: &Pending,
    ) -> Result<CheckOutcome, UpdateError> {
        let t0 = Instant::now();
        let outcome = match self.swap(p).await {
            Ok(xid_base) => {
                failpoint::hit("after-start").await;
                self.set_step(Machine::verify)?;
                match self.verify_primary(Some(xid_base)).await {
                    Ok(at) => match self.gpu_after_swap().await {
                        Ok(()) => self.verify_registration(&p.to).await.map(|()| at),
                        Err(f) => Err(f),
                    },
                    Err(f) => Err(f),
                }
            }
            Err(e) => {
                if matches!(&e, UpdateError::Engine(x) if x.is_gpu_unavailable()) {
                    self.gpu_unavailable = Some(crate::error_chain(&e));
                }
                Err(Failure::from_error(&e))
            }
        };
        if !matches!(&outcome, Err(f) if f.blame == Blame::Stopped) {
            self.emit(Event::WorkerHealth(outcome.is_ok()));
        }
        let blame = outcome.as_ref().err().map(|f| f.blame);
        let out = self.end_swap(p, outcome, t0).await?;
        self.slot_after_swap(p, &out, blame).await;
        Ok(out)
    }

    /// Step 5: commit the verified worker, or roll back.
    async fn end_swap(
        &mut self,
        p: &Pending,
        outcome: Result<Instant, Failure>,
        t0: Instant,
    ) -> Result<CheckOutcome, UpdateError> {
        match outcome {
            Ok(healthy_at) => {
                let downtime = healthy_at.saturating_duration_since(t0).as_millis() as u64;
                self.commit(p, downtime).await
            }
            Err(f) if f.blame == Blame::Stopped => {
                warn!(digest = %p.to, "the agent stops before the new worker is verified; it runs, and the verification resumes at the next start");
                Ok(CheckOutcome::Suspended(f.error))
            }
            Err(f) if f.blame == Blame::GpuFault => {
                let reason = f.error.clone();
                let out = self.rollback(p, f, Some(t0)).await?;
                // With gpu.drain_on_fault the host stays drained for the hub.
                if !self.settings.gpu.drain_on_fault {
                    self.hub_resume_after(&out).await;
                }
                self.hold_for_gpu_fault(&reason, p.trigger).await?;
                Ok(out)
            }
            Err(f) => {
                let blamed_image = f.blame == Blame::Image;
                let out = self.rollback(p, f, Some(t0)).await?;
                if let CheckOutcome::RolledBack { error, .. } = &out {
                    // Settings that failed are held instead (`rollback`).
                    if !blamed_image && !p.settings_only() {
                        self.back_off(&p.to, error);
                    }
                }
                self.hub_resume_after(&out).await;
                Ok(out)
            }
        }
    }

    /// Step 5: the new worker is verified: its digest becomes current and last
    /// good, in one write with what the update's kind adds (an operator's
    /// rollback marks the digest left bad; a pin holds).
    async fn commit(&mut self, p: &Pending, downtime: u64) -> Result<CheckOutcome, UpdateError> {
        self.state.commit(&p.to);
        match (p.kind, &p.from) {
            // An operator's rollback: the digest left is not tried again.
            (Kind::Rollback, Some(from)) if from != &p.to => {
                let at = self.now();
                self.state
                    .mark_bad(from, "rolled back by an operator (agentctl rollback)", at)
            }
            (Kind::Pin, _) => {
                self.state.pinned = p.pin.clone().or_else(|| Some(p.to.clone()));
                self.state.pinned_digest = Some(p.to.clone());
            }
            _ => {}
        }
        self.state.pending = None;
        // The worker is made of the config's settings now.
        self.state.adopted_spec = None;
        let spec = crate::docker::SpecHash::of(&self.worker).hash;
        if self
            .state
            .config_held
            .as_ref()
            .is_some_and(|h| h.spec == spec)
        {
            self.state.config_held = None;
        }
        failpoint::hit("before-commit-save").await;
        self.save_going_on();
        self.state.strikes.remove(&p.to);
        // Idle before the history line: whoever reads the line (an
        // operator, the hub's report) finds the agent ready for the next action.
        self.last_error = None;
        self.settle()?;
        self.history(p, Outcome::Success, None, Some(downtime));
        failpoint::hit("after-commit-save").await;
        self.hub_drain(false, &format!("{} is verified", p.to))
            .await;
        self.cleanup_after_commit().await;
        Ok(CheckOutcome::Updated(p.to.clone()))
    }

    /// Pulls `target` if needed and creates its container as `<name>-next`.
    async fn prepare(&self, target: &str) -> Result<(), UpdateError> {
        failpoint::hit("during-pull").await;
        let next = self.next_name();
        // A container of that name that is not ours is in the way: say so
        // (it is not the image's fault).
        self.check_name_is_ours(&next).await?;
        self.remove_named(&next).await;
        // A leftover container of the same digest (an earlier failed try) is in the way too.
        for c in self.engine.list_managed().await? {
            if c.digest.as_deref() == Some(target) && c.name != self.name() {
                self.engine.remove(&c.id).await?;
            }
        }
        self.create_pulled(&next, target).await?;
        Ok(())
    }

    /// Gives the old worker its jobs back and removes the prepared container.
    /// Returns the reason as recorded (with what giving the jobs back took).
    pub(super) async fn abort_prepared(
        &mut self,
        p: &Pending,
        reason: String,
    ) -> Result<String, UpdateError> {
        warn!(reason = %reason, "update aborted; the old worker keeps serving");
        self.hub_drain(false, "update aborted").await;
        let reason = match self.give_jobs_back().await {
            Some(note) => format!("{reason}; {note}"),
            None => reason,
        };
        for c in self.engine.list_managed().await? {
            if p.is_new(&c) && !c.running {
                self.engine.remove(&c.id).await?;
            }
        }
        self.state.pending = None;
        self.save_going_on();
        self.history(p, Outcome::Aborted, Some(reason.clone()), None);
        self.last_error = Some(reason.clone());
        self.settle()?;
        Ok(reason)
    }

    /// Stops the old worker and starts the new one under the primary name.
    /// Idempotent: converges from any point of an interrupted swap.
    /// Returns the XID seq from which XIDs are the new worker's (read after
    /// the old one stopped, so its dying XIDs are not held against the image).
    pub(super) async fn swap(&self, p: &Pending) -> Result<u64, UpdateError> {
        let to = p.to.as_str();
        let name = self.name().to_string();
        let prev = self.prev_name();
        let cs = self.engine.list_managed().await?;
        for c in &cs {
            if !p.is_new(c) && (c.running || c.restarting) {
                info!(container = %c.name, digest = c.digest.as_deref().unwrap_or("-"), "stopping the old worker");
                self.engine.set_restart(&c.id, "no", None).await?;
                failpoint::hit("after-restart-no").await;
                self.engine.stop(&c.id, self.worker.stop_timeout).await?;
            }
        }
        failpoint::hit("after-stop").await;
        // Park the old container as <name>-prev for a fast rollback; anything else in the way goes.
        for c in &cs {
            if p.is_new(c) {
                continue;
            }
            if p.is_old(c) {
                if c.name != prev {
                    self.remove_named(&prev).await;
                    self.engine.rename(&c.id, &prev).await?;
                }
            } else if c.name == name || c.name == prev {
                self.engine.remove(&c.id).await?;
            }
        }
        let new = match cs.iter().find(|c| p.is_new(c)) {
            Some(c) => c.clone(),
            None => {
                let id = self.create_pulled(&self.next_name(), to).await?;
                self.engine
                    .inspect(&id)
                    .await?
                    .ok_or_else(|| EngineError::Call {
                        op: "inspect",
                        target: id,
                        message: "the container vanished right after create".into(),
                        status: Some(404),
                    })?
            }
        };
        if new.name != name {
            self.engine.rename(&new.id, &name).await?;
        }
        failpoint::hit("after-rename").await;
        let xid_base = self.gpu.as_ref().map_or(0, |g| g.last_xid_seq());
        if !new.running {
            info!(digest = %to, "starting the new worker");
            self.engine.start(&new.id).await?;
        }
        Ok(xid_base)
    }

    /// After a commit: the parked old container goes; old images are pruned.
    async fn cleanup_after_commit(&self) {
        let prev = self.prev_name();
        self.remove_named(&prev).await;
        let mut keep: Vec<String> = self.state.last_good_digest.iter().cloned().collect();
        keep.extend(self.state.previous_good.last().cloned());
        match self
            .engine
            .prune_images(&self.settings.image.name.to_string(), &keep)
            .await
        {
            Ok(n) if n > 0 => info!(removed = n, "pruned old worker images"),
            Ok(_) => {}
            Err(e) => warn!(error = %crate::error_chain(&e), "could not prune old images"),
        }
    }
}
