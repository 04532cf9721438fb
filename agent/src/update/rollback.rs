//! Rolling back: the blame is settled and saved with the step, then the old
//! digest is put back under the primary name and verified.

use tokio::time::Instant;
use tracing::{error, warn};

use super::events::Event;
use super::failpoint;
use super::journal::{Outcome, Pending};
use super::machine::Machine;
use super::outcome::{Blame, CheckOutcome, Failure, UpdateError};
use super::Updater;
use crate::docker::Engine;

impl<E: Engine> Updater<E> {
    /// Puts the old digest back under the primary name and verifies it; the
    /// failed digest is marked bad or counted first, as its blame says.
    /// Idempotent: a resumed rollback runs it again. `swap_began` (when the
    /// old worker was stopped, if this run saw it) gives the downtime.
    pub(super) async fn rollback(
        &mut self,
        p: &Pending,
        failure: Failure,
        swap_began: Option<Instant>,
    ) -> Result<CheckOutcome, UpdateError> {
        let error = failure.error.clone();
        warn!(digest = %p.to, error = %error, blame = ?failure.blame, "the new worker failed; rolling back");
        self.settle_blame(p, &failure);
        self.set_step(Machine::roll_back)?;
        let name = self.name().to_string();
        let cs = self.engine.list_managed().await?;
        // An old worker that was never stopped is still drained: it gets its jobs back below.
        let old_kept_running = cs.iter().any(|c| c.running && p.is_old(c));
        for c in &cs {
            if p.is_new(c) {
                if c.running {
                    self.engine.stop(&c.id, self.worker.stop_timeout).await?;
                }
                self.engine.remove(&c.id).await?;
            }
        }
        failpoint::hit("during-rollback").await;
        let Some(from) = p.from.clone() else {
            // A first deploy has nothing to go back to.
            self.state.pending = None;
            self.state.current_digest = None;
            self.save_going_on();
            self.history(p, Outcome::Failed, Some(error.clone()), None);
            self.last_error = Some(error.clone());
            self.go(Machine::fail)?;
            return Ok(CheckOutcome::Failed(error));
        };
        self.put_back(&name, p).await?;
        failpoint::hit("after-rollback-start").await;
        let note = match old_kept_running {
            true => self.give_jobs_back().await,
            false => None,
        };
        let back = match self.verify_primary(None).await {
            Err(f) if f.blame == Blame::Stopped => {
                warn!(digest = %from, "the agent stops before the old worker is verified again; it runs, and the rollback resumes at the next start");
                return Ok(CheckOutcome::Suspended(f.error));
            }
            back => back,
        };
        self.emit(Event::WorkerHealth(back.is_ok()));
        self.state.current_digest = Some(from.clone());
        self.state.pending = None;
        self.save_going_on();
        match back {
            Ok(healthy_at) => {
                let downtime = swap_began
                    .map(|t0| healthy_at.saturating_duration_since(t0).as_millis() as u64);
                self.history(p, Outcome::RolledBack, Some(error.clone()), downtime);
                let what = match p.settings_only() {
                    true => format!(
                        "the worker's new settings ({}) were rolled back and are held until the config changes",
                        p.changed.join(", ")
                    ),
                    false => format!("{} was rolled back", p.to),
                };
                self.last_error = Some(match note {
                    Some(n) => format!("{what}: {error}; {n}"),
                    None => format!("{what}: {error}"),
                });
                self.settle()?;
                Ok(CheckOutcome::RolledBack {
                    target: p.to.clone(),
                    error,
                })
            }
            Err(f) => {
                let msg = format!(
                    "{error}; and the old worker {from} did not verify after the rollback: {}",
                    f.error
                );
                error!(error = %msg, "rollback");
                self.history(p, Outcome::Failed, Some(msg.clone()), None);
                self.last_error = Some(msg.clone());
                self.go(Machine::fail)?;
                Ok(CheckOutcome::Failed(msg))
            }
        }
    }

    /// Settles the blame for `p.to` in the state, to be saved in the same
    /// write as the rollback's step, so a crash cannot lose it: the image's
    /// fault marks it bad, a strike counts, a GPU fault holds updates. New
    /// settings of the digest that runs are held instead, whatever failed
    /// (but a GPU fault): the digest ran well before them.
    fn settle_blame(&mut self, p: &Pending, failure: &Failure) {
        let target = p.to.as_str();
        let error = &failure.error;
        let marked = match failure.blame {
            Blame::GpuFault | Blame::Stopped => false,
            _ if p.settings_only() => {
                self.hold_settings(p, error);
                false
            }
            Blame::Image => {
                let at = self.now();
                self.state.mark_bad(target, error, at);
                true
            }
            Blame::Strike => self.strike(target, error),
            Blame::None => false,
        };
        if marked {
            warn!(digest = %target, "marked bad: it is not tried again until the tag moves or an operator deploys it");
        }
        if let Some(pending) = self.state.pending.as_mut() {
            pending.error = Some(error.clone());
        }
        if failure.blame == Blame::GpuFault {
            self.state.gpu_hold = Some(error.clone());
        }
    }

    /// Puts the old container back under the primary name (renamed from
    /// `<name>-prev`, its restart policy restored) and starts it; recreated
    /// from the spec if it is gone.
    async fn put_back(&self, name: &str, p: &Pending) -> Result<(), UpdateError> {
        let from = p.from.as_deref().unwrap_or_default();
        let cs = self.engine.list_managed().await?;
        match cs.iter().find(|c| p.is_old(c)) {
            Some(old) => {
                if old.name != name {
                    self.remove_named(name).await;
                    self.engine.rename(&old.id, name).await?;
                }
                self.restore_restart(&old.id).await?;
                if !old.running {
                    self.engine.start(&old.id).await?;
                }
            }
            None => {
                self.remove_named(name).await;
                let id = self.create_pulled(name, from).await?;
                self.engine.start(&id).await?;
            }
        }
        Ok(())
    }
}
