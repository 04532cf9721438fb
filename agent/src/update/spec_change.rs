//! Config changes are updates: the worker's container settings (`env`,
//! `volumes`, `ports`, `gpus`, `command`, ...) are hashed into the container's
//! labels ([`SpecHash`]). When the running worker's differ from the config's
//! (after a reload, at a start, at a poll), the digest that runs is deployed
//! again with the new settings through the same pull, drain, swap, verify
//! and rollback as an image (trigger `config`; the fleet's slot applies), and
//! the history names the keys that changed, never a value.
//!
//! New settings that fail are rolled back to the old container and *held*
//! (`state.config_held`, saved): not tried again, and no image update starts,
//! until the config changes (or an operator's `agentctl check` tries them
//! again). A config changed back to the worker's settings lifts the hold and
//! clears `last_error`. A worker made by a version before the labels is
//! adopted as it is (never restarted on an upgrade): it is taken to have the
//! config's settings of the moment (`state.adopted_spec`), so a later change
//! is still rolled out.

use tracing::{debug, info, warn};

use super::journal::{AdoptedSpec, ConfigHeld, Kind, Pending, Trigger};
use super::outcome::{CheckOutcome, UpdateError};
use super::Updater;
use crate::docker::{Container, Engine, SpecHash};

/// Why checks are held while the config's worker settings are.
pub(super) const CONFIG_HELD: &str = "the worker settings in the config failed verification and were rolled back (status: config_held): updates wait until the config changes; agentctl check tries them again";

/// What a deploy of the running digest with the config's settings carries
/// into its [`Pending`].
#[derive(Debug, Default)]
pub(super) struct SettingsChange {
    pub to_spec: Option<String>,
    pub from_spec: Option<String>,
    pub changed: Vec<String>,
}

impl<E: Engine> Updater<E> {
    /// After a reload: the worker's settings are rolled out now if they
    /// changed (a turn of its own: recovery first, as for a check).
    pub async fn apply_config(&mut self) -> Result<CheckOutcome, UpdateError> {
        Ok(self
            .before_check(Trigger::Config)
            .await?
            .unwrap_or(CheckOutcome::UpToDate))
    }

    /// The running worker's settings against the config's, at the start of
    /// every check: `Some` when they were rolled out (the outcome), or when
    /// the config's are held (checks wait). `trigger` is the turn's: only an
    /// operator's check tries held settings again.
    pub(super) async fn roll_out_settings(
        &mut self,
        trigger: Trigger,
    ) -> Result<Option<CheckOutcome>, UpdateError> {
        if !self.converged {
            return Ok(None);
        }
        let Some(worker) = self.settled_worker().await? else {
            return Ok(None);
        };
        let current = self.state.current_digest.clone().unwrap_or_default();
        let want = SpecHash::of(&self.worker);
        let running = self.running_spec(&worker, &want);
        let changed = running.changes(&want);
        if changed.is_empty() {
            if let Some(h) = self.state.config_held.take() {
                info!(held = ?h.changed, "the config is back to the worker's settings: the held ones are forgotten");
                self.last_error = self.state.gpu_hold.clone();
                self.save_or_warn("the end of the config hold");
            }
            return Ok(None);
        }
        if let Some(h) = self.state.config_held.clone() {
            if self.settings_held(&want) && trigger != Trigger::Cli {
                debug!(changed = ?h.changed, "the config's worker settings are held");
                return Ok(Some(CheckOutcome::Held(CONFIG_HELD)));
            }
            match h.spec == want.hash {
                true => info!("an operator's check tries the held worker settings again"),
                false => info!("the config changed since its worker settings were held"),
            }
            self.state.config_held = None;
            self.save_or_warn("the end of the config hold");
        }
        info!(changed = ?changed, digest = %current,
              "the worker's settings in the config differ from the running worker's: rolling them out");
        let change = SettingsChange {
            to_spec: Some(want.hash),
            from_spec: worker.spec.map(|s| s.hash),
            changed,
        };
        self.deploy_with(&current, Trigger::Config, Kind::Update, None, Some(change))
            .await
            .map(Some)
    }

    /// The settings `worker` was made of as far as they are known, without
    /// adopting it: its labels, else those it was taken to have when adopted.
    pub(super) fn recorded_spec(&self, worker: &Container) -> Option<SpecHash> {
        worker.spec.clone().or_else(|| {
            self.state
                .adopted_spec
                .as_ref()
                .filter(|a| a.container == worker.id)
                .map(|a| a.spec.clone())
        })
    }

    /// Whether the config's settings `want` are the ones held (they failed).
    pub(super) fn settings_held(&self, want: &SpecHash) -> bool {
        self.state
            .config_held
            .as_ref()
            .is_some_and(|h| h.spec == want.hash)
    }

    /// The worker that a settings rollout would replace: the primary, running
    /// the current digest, with nothing pending.
    pub(super) async fn settled_worker(&self) -> Result<Option<Container>, UpdateError> {
        if self.state.pending.is_some() {
            return Ok(None);
        }
        let Some(current) = self.state.current_digest.as_deref() else {
            return Ok(None);
        };
        Ok(self
            .primary_running()
            .await?
            .filter(|c| c.digest.as_deref() == Some(current)))
    }

    /// The settings the running `worker` was made of: [`Self::recorded_spec`],
    /// else (adopted now) `want`.
    fn running_spec(&mut self, worker: &Container, want: &SpecHash) -> SpecHash {
        if let Some(s) = self.recorded_spec(worker) {
            return s;
        }
        info!(container = %worker.id,
              "the worker was made by an earlier version (no gpu-agent.spec label): adopted as it is; a later change of its settings is rolled out");
        self.state.adopted_spec = Some(AdoptedSpec {
            container: worker.id.clone(),
            spec: want.clone(),
        });
        self.save_or_warn("the settings the adopted worker is taken to have");
        want.clone()
    }

    /// The new settings of `p` failed: they are held until the config
    /// changes (saved with the step that follows).
    pub(super) fn hold_settings(&mut self, p: &Pending, error: &str) {
        let Some(spec) = p.to_spec.clone() else {
            return;
        };
        warn!(changed = ?p.changed, "the worker's new settings failed: held until the config changes");
        self.state.config_held = Some(ConfigHeld {
            spec,
            changed: p.changed.clone(),
            error: crate::text::sanitize(error, crate::text::MAX_TEXT * 4),
            at: self.now(),
        });
    }
}
