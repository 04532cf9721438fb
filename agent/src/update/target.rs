//! Choosing the target: a check resolves the registry's tag or range, or
//! takes the hub's desired digest; a nudge may name one. A digest that runs
//! already, or is marked bad, goes no further.

use tracing::{debug, info, warn};

use super::events::Event;
use super::journal::Trigger;
use super::machine::{held, Machine};
use super::outcome::{CheckOutcome, UpdateError};
use super::Updater;
use crate::docker::Engine;

impl<E: Engine> Updater<E> {
    /// What every check does first (a poll, a nudge): recovery (an
    /// interrupted update finished, the worker made to run), the GPU fault
    /// watch, a missed resume notice sent again, new worker settings rolled
    /// out. `Some`: that rollout's outcome, or updates are held (drained,
    /// pinned, or the config's worker settings failed).
    pub(super) async fn before_check(
        &mut self,
        trigger: Trigger,
    ) -> Result<Option<CheckOutcome>, UpdateError> {
        // Recovery, once a turn: an update an error left midway is resumed,
        // else the worker is made to run. A failure with nothing pending is
        // logged (the deploy tries again before it touches anything).
        if let Err(e) = self.converge().await {
            if self.state.pending.is_some() {
                return Err(e);
            }
            warn!(error = %crate::error_chain(&e), "could not reconcile the worker with the journal");
        }
        self.gpu_fault_watch(trigger).await?;
        if self.state.pending.is_some() {
            // Resumed, but left to the next start (the agent stops).
            return Ok(Some(CheckOutcome::Aborted(
                "the agent is shutting down".into(),
            )));
        }
        self.release_if_steady().await;
        self.hub_resume_pending().await;
        // New worker settings in the config are rolled out first (also
        // while pinned: a pin holds the digest, not the settings).
        if !self.state.drained {
            if let Some(out) = self.roll_out_settings(trigger).await? {
                return Ok(Some(out));
            }
        }
        let held = held(&self.state).map(CheckOutcome::Held);
        if held.is_some() {
            self.leave_queue().await;
        }
        Ok(held)
    }

    /// Resolves the configured tag or range and updates if the digest is new;
    /// then, at rest, reads the worker's health once (whatever the outcome:
    /// up to date, held, waiting for the fleet, a registry error).
    pub async fn check(&mut self, trigger: Trigger) -> Result<CheckOutcome, UpdateError> {
        let out = self.check_turn(trigger).await;
        self.read_worker_health().await;
        out
    }

    async fn check_turn(&mut self, trigger: Trigger) -> Result<CheckOutcome, UpdateError> {
        if let Some(held) = self.before_check(trigger).await? {
            return Ok(held);
        }
        self.go(Machine::check)?;
        // A fleet group's rollout names the digest for every host in it.
        if let Some(target) = self.fleet.desired() {
            self.checked(true);
            let trigger = match trigger {
                Trigger::Poll | Trigger::Startup | Trigger::Nudge => Trigger::Fleet,
                t => t,
            };
            return self.go_to(target, "fleet", trigger).await;
        }
        let from_hub = match self.hub_desired().await {
            Ok(d) => d,
            Err(msg) => {
                self.checked(true);
                warn!(error = %msg, "the hub's desired digest is refused; the worker is left as it is");
                self.last_error = Some(msg.clone());
                self.settle()?;
                return Ok(CheckOutcome::Failed(msg));
            }
        };
        if let Some(target) = from_hub {
            self.checked(true);
            // The hub decided it (an operator's check stays `cli`).
            let trigger = match trigger {
                Trigger::Poll | Trigger::Startup => Trigger::Hub,
                t => t,
            };
            return self.go_to(target, "hub", trigger).await;
        }
        let resolved = tokio::select! {
            r = self.registry.resolve(&self.settings.image.name, &self.settings.image.policy) => r,
            _ = self.shutdown.cancelled() => {
                self.settle()?;
                return Ok(CheckOutcome::Aborted("the agent is shutting down".into()));
            }
        };
        self.checked(resolved.is_ok());
        let resolved = match resolved {
            Ok(r) => r,
            Err(e) => {
                self.last_error = Some(crate::error_chain(&e));
                self.settle()?;
                return Err(e.into());
            }
        };
        self.go_to(resolved.digest, &format!("tag {}", resolved.tag), trigger)
            .await
    }

    /// A check asked which digest to run now: `ok` when it was answered.
    fn checked(&mut self, ok: bool) {
        let at = self.now();
        self.last_check = Some(at);
        self.emit(Event::Checked { ok, at });
    }

    /// A check found `target` (named by `source`: a tag, the hub, a nudge):
    /// deploys it unless it runs already or is marked bad.
    pub(super) async fn go_to(
        &mut self,
        target: String,
        source: &str,
        trigger: Trigger,
    ) -> Result<CheckOutcome, UpdateError> {
        if self.state.current_digest.as_deref() == Some(target.as_str()) {
            debug!(source, digest = %target, "up to date");
            self.leave_queue().await;
            self.last_error = self.state.gpu_hold.clone();
            self.settle()?;
            return Ok(CheckOutcome::UpToDate);
        }
        if self.state.is_bad(&target) {
            debug!(source, digest = %target, "target is marked bad; not trying it again");
            self.leave_queue().await;
            self.settle()?;
            return Ok(CheckOutcome::SkippedBad(target));
        }
        if let Some(r) = self.state.retry.as_ref().filter(|r| r.digest == target) {
            let now = self.now();
            if now < r.until && trigger != Trigger::Cli {
                let why = format!(
                    "{target} was rolled back {} time(s) without a clear cause (last: {}); it is tried again after {} (agentctl check tries it now)",
                    r.attempts,
                    r.last_error,
                    r.until.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
                );
                debug!(source, reason = %why, "backing off");
                self.leave_queue().await;
                self.settle()?;
                return Ok(CheckOutcome::Deferred(why));
            }
        }
        if source == "hub" || source == "nudge" {
            if let Some(later) = self.hub_swap_budget(&target) {
                self.leave_queue().await;
                self.settle()?;
                return Ok(later);
            }
        }
        info!(source, digest = %target, from = self.state.current_digest.as_deref().unwrap_or("-"),
              "new digest");
        self.deploy(&target, trigger, super::Kind::Update, None)
            .await
    }

    /// A nudge from the hub: check now; a nudge naming a digest means that
    /// digest. Like a poll, it respects a drain, a pin and bad marks.
    pub async fn nudged(&mut self, nudge: &hub_client::Nudge) -> Result<CheckOutcome, UpdateError> {
        let decides = self
            .hub
            .as_ref()
            .is_some_and(|h| h.settings().desired_from_hub);
        // While the fleet group's rollout names the digest, a nudge is a check.
        let rollout = self.fleet.desired().is_some();
        let Some(digest) = nudge.digest.clone().filter(|_| decides && !rollout) else {
            if nudge.digest.is_some() && rollout {
                info!("a nudge names a digest, but the fleet group's rollout decides the digest: checking instead");
            } else if nudge.digest.is_some() {
                info!("a nudge names a digest, but the hub does not decide the digest (hub.desired_from_hub = false): checking the registry instead");
            }
            return self.check(Trigger::Nudge).await;
        };
        if let Some(held) = self.before_check(Trigger::Nudge).await? {
            return Ok(held);
        }
        self.last_check = Some(self.now());
        // The hub named it (and decides the digest): it is the desired
        // digest now (followed while the hub cannot be asked).
        if self.state.hub_desired.as_deref() != Some(digest.as_str()) {
            self.state.hub_desired = Some(digest.clone());
            self.save_or_warn("the hub's desired digest");
        }
        self.go_to(digest, "nudge", Trigger::Nudge).await
    }

    /// With `hub.desired_from_hub`: the digest the hub wants now or, while it
    /// cannot be asked, the one it named last. `Ok(None)`: follow the
    /// registry (the hub answered 204, or was never heard). `Err`: the hub
    /// named something the agent will not deploy.
    async fn hub_desired(&mut self) -> Result<Option<String>, String> {
        let Some(hub) = self.hub.clone().filter(|h| h.settings().desired_from_hub) else {
            return Ok(None);
        };
        let asked = tokio::select! {
            r = hub.desired() => r,
            _ = self.shutdown.cancelled() => return Ok(None),
        };
        match asked {
            Ok(Some(d)) => {
                let same_repo = crate::registry::ImageName::parse(&d.repository)
                    .is_ok_and(|n| n == self.settings.image.name);
                if !same_repo {
                    return Err(format!(
                        "the hub asks for {}@{}, but this agent runs {} (image.repository); \
                         not deploying it: fix the hub's answer or the config",
                        d.repository, d.digest, self.settings.image.name
                    ));
                }
                if self.state.hub_desired.as_deref() != Some(d.digest.as_str()) {
                    self.state.hub_desired = Some(d.digest.clone());
                    self.save_or_warn("the hub's desired digest");
                }
                Ok(Some(d.digest))
            }
            Ok(None) => {
                if self.state.hub_desired.take().is_some() {
                    info!("the hub has no opinion now; following the registry");
                    self.save_or_warn("the hub's desired digest");
                }
                Ok(None)
            }
            Err(e) => {
                match &self.state.hub_desired {
                    Some(d) => {
                        debug!(digest = %d, error = %e, "hub unreachable: following the digest it named last")
                    }
                    None => {
                        debug!(error = %e, "hub unreachable and never named a digest: following the registry")
                    }
                }
                Ok(self.state.hub_desired.clone())
            }
        }
    }
}
