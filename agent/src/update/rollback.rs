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
        self.settle_blame(&p.to, &failure);
        self.set_step(Machine::roll_back)?;
        let name = self.name().to_string();
        let cs = self.engine.list_managed().await?;
        // An old worker that was never stopped is still drained: it gets its jobs back below.
        let old_kept_running = cs
            .iter()
            .any(|c| c.running && p.from.is_some() && c.digest == p.from);
        for c in &cs {
            if c.digest.as_deref() == Some(p.to.as_str()) {
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
        self.put_back(&name, &from).await?;
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
                self.last_error = Some(match note {
                    Some(n) => format!("{} was rolled back: {error}; {n}", p.to),
                    None => format!("{} was rolled back: {error}", p.to),
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

    /// Settles the blame for `target` in the state, to be saved in the same
    /// write as the rollback's step, so a crash cannot lose it: the image's
    /// fault marks it bad, a strike counts, a GPU fault holds updates.
    fn settle_blame(&mut self, target: &str, failure: &Failure) {
        let error = &failure.error;
        let marked = match failure.blame {
            Blame::Image => {
                let at = self.now();
                self.state.mark_bad(target, error, at);
                true
            }
            Blame::Strike => self.strike(target, error),
            Blame::None | Blame::Stopped | Blame::GpuFault => false,
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

    /// Puts `from`'s container back under the primary name (renamed from
    /// `<name>-prev`, its restart policy restored) and starts it; recreated
    /// from the spec if it is gone.
    async fn put_back(&self, name: &str, from: &str) -> Result<(), UpdateError> {
        let cs = self.engine.list_managed().await?;
        match cs.iter().find(|c| c.digest.as_deref() == Some(from)) {
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
