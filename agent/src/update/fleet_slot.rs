//! The fleet group's side of an update (`[fleet]`, docs/fleet.md): a slot is
//! taken after the pull and before the drain (the old worker serves while the
//! host waits for one), the outcome is reported after the swap, and the slot is
//! given back once the worker is steady again. A host alone has
//! [`crate::fleet::LoneHost`], which is never asked.

use tracing::{debug, info, warn};

use super::journal::Pending;
use super::outcome::{Blame, CheckOutcome, UpdateError};
use super::Updater;
use crate::docker::Engine;
use crate::fleet::{Decision, Outcome as FleetOutcome};

/// What the group said to an update that wants to disrupt the worker.
pub(super) enum SlotAnswer {
    /// Go on: the host holds a slot (or needs none).
    Go,
    /// Not now (no slot free, canaries baking, paused, halted, etcd away):
    /// the prepared container goes, the old worker serves, the update is
    /// asked for again when the group changes.
    Wait(String),
}

impl<E: Engine> Updater<E> {
    /// Asks the group for a slot to disrupt the worker for `p.to`. A host with
    /// no worker running (its first deploy) disrupts nothing and takes none.
    pub(super) async fn take_slot(&mut self, p: &Pending) -> Result<SlotAnswer, UpdateError> {
        if !self.fleet.grouped() || self.primary_running().await?.is_none() {
            return Ok(SlotAnswer::Go);
        }
        let fleet = self.fleet.clone();
        let decision = tokio::select! {
            d = fleet.decide(&p.to) => d,
            _ = self.shutdown.cancelled() => return Ok(SlotAnswer::Wait("the agent is shutting down".into())),
        };
        Ok(match decision {
            Decision::Go { slot } => {
                info!(digest = %p.to, slot, "fleet: slot taken; the update goes on");
                SlotAnswer::Go
            }
            Decision::Wait { why } => SlotAnswer::Wait(format!("waiting for the fleet: {why}")),
            Decision::Halted { why } => SlotAnswer::Wait(format!("halted by the fleet: {why}")),
        })
    }

    /// The group said not now: nothing was disrupted. The prepared container
    /// goes, nothing is written to the history (a host may wait a long time),
    /// and status says why (`fleet.waiting`).
    pub(super) async fn wait_for_slot(
        &mut self,
        p: &Pending,
        why: String,
    ) -> Result<CheckOutcome, UpdateError> {
        info!(digest = %p.to, reason = %why, "the update waits; the old worker keeps serving");
        self.remove_named(&self.next_name()).await;
        self.state.pending = None;
        self.save_going_on();
        self.settle()?;
        Ok(CheckOutcome::Deferred(why))
    }

    /// After a swap: the group hears how it ended. A verified worker or a
    /// rollback that put the old one back gives the slot back; a host whose
    /// rollback failed too keeps it (it is unavailable, and counts so until
    /// an operator frees it with `gpu-fleet release`); an update left to the
    /// next start keeps it for the resumed verification.
    pub(super) async fn slot_after_swap(
        &mut self,
        p: &Pending,
        out: &CheckOutcome,
        blame: Option<Blame>,
    ) {
        if !self.fleet.grouped() {
            return;
        }
        let digest = p.to.as_str();
        let (outcome, detail, release) = match out {
            CheckOutcome::Updated(_) => (FleetOutcome::Verified, String::new(), true),
            CheckOutcome::RolledBack { error, .. } => {
                // A GPU fault is the host's, not the image's; so are the
                // host's own worker settings (a change of them alone).
                let o = if blame == Some(Blame::GpuFault) || p.settings_only() {
                    FleetOutcome::HostFault
                } else {
                    FleetOutcome::RolledBack
                };
                (o, error.clone(), true)
            }
            CheckOutcome::Failed(why) => (FleetOutcome::HostFault, why.clone(), false),
            _ => return,
        };
        if let Err(e) = self.fleet.report_outcome(digest, outcome, &detail).await {
            warn!(%digest, error = %e, "fleet: the outcome is sent when etcd answers");
        }
        if release {
            self.give_slot_back().await;
        }
    }

    /// Gives the fleet slot back, if this host holds one (after an abort, a
    /// commit, a verified rollback, or at rest after a restart).
    pub(super) async fn give_slot_back(&self) {
        if self.fleet.view().slot.is_none() {
            return;
        }
        if let Err(e) = self.fleet.release().await {
            warn!(error = %e, "fleet: the slot is given back when etcd answers");
        }
    }

    /// The host wants no update now (it runs the digest the group wants, the
    /// target is marked bad or backs off, updates are held): a place it took
    /// in the slot queue while it waited is given up, so that it does not
    /// stand ahead of the hosts that still wait (after an abort, those that
    /// moved go back through the queue), and status no longer says why it
    /// waited. A slot it holds is left to [`Updater::release_if_steady`].
    pub(super) async fn leave_queue(&self) {
        if !self.fleet.grouped() {
            return;
        }
        let v = self.fleet.view();
        if v.slot.is_some() || v.waiting.is_none() {
            return;
        }
        match self.fleet.release().await {
            Ok(()) => info!("fleet: no update wanted now; left the slot queue"),
            Err(e) => {
                debug!(error = %e, "fleet: the slot queue is left at the next check")
            }
        }
    }

    /// At the start of a check: a slot still held with nothing in progress
    /// and the worker reconciled (an update that ended while etcd was away, or
    /// before a restart) goes back to the group.
    pub(super) async fn release_if_steady(&self) {
        if self.converged && self.state.pending.is_none() && self.fleet.view().slot.is_some() {
            info!("fleet: no update in progress; giving the slot back");
            self.give_slot_back().await;
        }
    }
}
