//! Recovery and convergence: an update a crash or an error left midway is
//! finished or undone from the journal, and exactly one managed worker runs
//! the current digest. Also the small engine helpers these share (create a
//! pulled image's container, remove one by name).

use tracing::{debug, info, warn};

use super::journal::{Pending, Trigger};
use super::machine::Phase;
use super::outcome::{Blame, Failure, UpdateError};
use super::Updater;
use crate::docker::{Container, Engine};

impl<E: Engine> Updater<E> {
    /// Recovery, once a turn (a poll, a nudge, an operator's action):
    /// [`Updater::reconcile`], remembering whether it succeeded so that the
    /// deploy that may follow does not list the containers again.
    pub(super) async fn converge(&mut self) -> Result<(), UpdateError> {
        self.write_unwritten();
        let r = self.reconcile().await;
        if r.is_ok() && self.state.pending.is_none() {
            if let Some(note) = self.restart_if_idle().await {
                self.last_error = Some(note);
                self.publish();
            }
        }
        if let Err(UpdateError::Engine(e)) = &r {
            if e.is_gpu_unavailable() {
                self.gpu_unavailable = Some(e.to_string());
            }
        }
        self.converged = r.is_ok();
        r
    }

    /// Brings the engine in line with the journal: finishes or rolls back an
    /// interrupted update (after a crash, or an error midway), adopts a running
    /// managed worker, starts the last good digest when nothing runs. Run at
    /// start and before every check.
    pub async fn reconcile(&mut self) -> Result<(), UpdateError> {
        if self.recovered && self.state.pending.is_none() {
            self.verify_unknown_worker().await?;
            self.recovered = false;
        }
        let Some(p) = self.state.pending.clone() else {
            return self.ensure_running().await;
        };
        warn!(from = p.from.as_deref().unwrap_or("-"), to = %p.to, step = ?p.step,
              "resuming an interrupted update");
        let old_running = p.from.is_some()
            && self
                .engine
                .list_managed()
                .await?
                .iter()
                .any(|c| c.running && p.is_old(c));
        match p.step {
            Phase::Swapping if old_running => self.abort_interrupted(&p).await,
            Phase::Swapping | Phase::Verifying => {
                self.go(|m| m.resume(p.step))?;
                self.swap_and_verify(&p).await?;
                Ok(())
            }
            Phase::RollingBack => {
                self.go(|m| m.resume(Phase::RollingBack))?;
                let error = p
                    .error
                    .clone()
                    .unwrap_or_else(|| "interrupted during a rollback".into());
                // The blame was settled (and any mark saved) when the rollback began.
                self.rollback(&p, Failure::new(error, Blame::None), None)
                    .await?;
                Ok(())
            }
            // Pulling or draining: the old worker was never stopped (or came
            // back with a reboot before the swap stopped it): give it back
            // its jobs, drop the new one, retry later.
            _ => self.abort_interrupted(&p).await,
        }
    }

    pub(super) async fn abort_interrupted(&mut self, p: &Pending) -> Result<(), UpdateError> {
        let step = format!("{:?}", p.step).to_lowercase();
        self.abort_prepared(
            p,
            format!("interrupted while {step}; the old worker was kept"),
        )
        .await?;
        // The swap sets the old worker's restart policy to `no` before it stops
        // it: interrupted in between, it runs on without its policy.
        if p.step == Phase::Swapping {
            for c in self.engine.list_managed().await? {
                if c.running && p.is_old(&c) {
                    self.restore_restart(&c.id).await?;
                }
            }
        }
        self.ensure_running().await
    }

    /// After the state was rebuilt from the history: a managed worker that
    /// runs a digest other than the last good one was being verified when
    /// the state was lost. It is not adopted as it is: the verification is
    /// resumed (committed if it passes, rolled back to the last good digest
    /// if not).
    async fn verify_unknown_worker(&mut self) -> Result<(), UpdateError> {
        let Some(good) = self.state.last_good_digest.clone() else {
            return Ok(());
        };
        let running = self.engine.list_managed().await?;
        let Some(other) = running
            .iter()
            .filter(|c| c.running)
            .find_map(|c| c.digest.clone().filter(|d| *d != good))
        else {
            return Ok(());
        };
        warn!(digest = %other, last_good = %good,
              "a worker the history never saw verified runs: verifying it before it is kept");
        self.state.pending = Some(Pending {
            from: Some(good),
            to: other,
            trigger: Trigger::Startup,
            step: Phase::Verifying,
            started_at: self.now(),
            error: None,
            kind: super::Kind::Update,
            pin: None,
            to_spec: None,
            from_spec: None,
            changed: Vec::new(),
        });
        self.save()?;
        Ok(())
    }

    /// Refuses to touch a container holding the worker's name that another
    /// agent (or nobody) manages.
    pub(super) async fn check_name_is_ours(&self, name: &str) -> Result<(), UpdateError> {
        match self.engine.inspect(name).await? {
            Some(c) if c.agent.as_deref() != Some(self.settings.agent.id.as_str()) => {
                Err(UpdateError::NameTaken {
                    name: name.to_string(),
                    label: c.agent.unwrap_or_else(|| "missing".into()),
                    agent_id: self.settings.agent.id.clone(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Makes sure exactly one managed worker runs the current digest (unless drained).
    pub async fn ensure_running(&mut self) -> Result<(), UpdateError> {
        let name = self.name().to_string();
        self.check_name_is_ours(&name).await?;
        if self.state.drained && !self.state.drain_complete {
            warn!("resuming a maintenance drain that a restart interrupted");
            self.finish_drain(self.worker.drain.timeout, Trigger::Startup)
                .await?;
            return Ok(());
        }
        let target = self
            .state
            .current_digest
            .clone()
            .or_else(|| self.state.last_good_digest.clone());
        if let Some(c) = self.keep_one(&name, target.as_deref()).await? {
            self.adopt(&c, &name).await?;
            return self.at_rest();
        }
        if self.state.drained {
            return self.at_rest();
        }
        let Some(target) = target else {
            debug!("no worker yet and no digest known: the first check deploys one");
            return Ok(());
        };
        self.start_stopped(&name, &target).await?;
        self.state.current_digest = Some(target);
        self.save()?;
        self.settle()
    }

    /// Never two: keeps the primary if it runs, else one on `target`, else
    /// any running one; stops (for good) and removes the others. Returns the
    /// one kept.
    async fn keep_one(
        &self,
        name: &str,
        target: Option<&str>,
    ) -> Result<Option<Container>, UpdateError> {
        let cs = self.engine.list_managed().await?;
        let running: Vec<&Container> = cs.iter().filter(|c| c.running || c.restarting).collect();
        let keep = running
            .iter()
            .find(|c| c.name == name)
            .or_else(|| running.iter().find(|c| c.digest.as_deref() == target))
            .or_else(|| running.first())
            .map(|c| (*c).clone());
        for c in &cs {
            if keep.as_ref().is_some_and(|k| k.id == c.id) {
                continue;
            }
            if c.running || c.restarting {
                warn!(container = %c.name, digest = c.digest.as_deref().unwrap_or("-"),
                      "a second managed worker runs; stopping it");
                self.stop_for_good(&c.id).await?;
            }
            if c.name != name || keep.is_some() {
                self.engine.remove(&c.id).await?;
            }
        }
        Ok(keep)
    }

    /// The running managed worker `c` becomes the primary, and its digest
    /// the current one (even with the state file lost).
    async fn adopt(&mut self, c: &Container, name: &str) -> Result<(), UpdateError> {
        if c.name != name {
            self.engine.remove(name).await?;
            self.engine.rename(&c.id, name).await?;
        }
        if c.digest.is_some() && c.digest != self.state.current_digest {
            info!(
                digest = c.digest.as_deref().unwrap_or("-"),
                "adopting the running managed worker"
            );
            self.state.current_digest = c.digest.clone();
            if self.state.last_good_digest.is_none() {
                self.state.last_good_digest = c.digest.clone();
            }
            self.save()?;
        }
        Ok(())
    }

    /// No managed worker runs: starts the stopped primary if it is on
    /// `target` (recreated from the spec if it will not start), else creates
    /// `target`'s container.
    async fn start_stopped(&self, name: &str, target: &str) -> Result<(), UpdateError> {
        // The primary may exist stopped (crash, reboot with restart policy "no").
        match self.engine.inspect(name).await? {
            Some(c) if c.digest.as_deref() == Some(target) => {
                info!(digest = %target, "starting the stopped worker");
                self.restore_restart(&c.id).await?;
                if let Err(e) = self.engine.start(&c.id).await {
                    // Its devices or network may be gone: build it afresh from the spec.
                    warn!(error = %crate::error_chain(&e), "the stopped worker does not start; recreating it");
                    self.engine.remove(&c.id).await?;
                    let id = self.create_pulled(name, target).await?;
                    self.engine.start(&id).await?;
                }
            }
            other => {
                if let Some(c) = other {
                    self.engine.remove(&c.id).await?;
                }
                info!(digest = %target, "no worker runs: starting the last good digest");
                let id = self.create_pulled(name, target).await?;
                self.engine.start(&id).await?;
            }
        }
        Ok(())
    }

    pub(super) async fn pull_if_missing(&self, digest: &str) -> Result<(), UpdateError> {
        let image = self.settings.image.name.pull_ref(digest);
        if self.engine.has_image(&image).await? {
            return Ok(());
        }
        info!(image = %image, "pulling");
        let creds = self
            .registry
            .engine_credentials(&self.settings.image.name)
            .await?;
        self.engine.pull(&image, creds).await?;
        Ok(())
    }

    /// Creates the container for `digest`, pulling the image first if it is
    /// missing. An image removed between the check and the create (a prune by
    /// someone else) is pulled again once instead of failing the update.
    pub(super) async fn create_pulled(
        &self,
        name: &str,
        digest: &str,
    ) -> Result<String, UpdateError> {
        self.pull_if_missing(digest).await?;
        match self.engine.create(name, &self.spec(digest)).await {
            Err(e) if e.is_not_found() => {
                warn!(digest, error = %e, "image vanished before create; pulling it again");
                self.pull_if_missing(digest).await?;
                Ok(self.engine.create(name, &self.spec(digest)).await?)
            }
            r => Ok(r?),
        }
    }

    /// Removes the container called `name` if this agent manages it; a
    /// container of that name that is not ours is left alone (and logged).
    pub(super) async fn remove_named(&self, name: &str) {
        let result = match self.engine.inspect(name).await {
            Ok(None) => Ok(()),
            Ok(Some(c)) if c.agent.as_deref() != Some(self.settings.agent.id.as_str()) => {
                warn!(
                    container = name,
                    "a container of this name is not managed by this agent; left alone"
                );
                Ok(())
            }
            Ok(Some(c)) => self.engine.remove(&c.id).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            warn!(container = name, error = %crate::error_chain(&e), "could not remove");
        }
    }

    pub(super) async fn primary_running(&self) -> Result<Option<Container>, UpdateError> {
        Ok(self
            .engine
            .inspect(self.name())
            .await?
            .filter(|c| c.running))
    }
}
