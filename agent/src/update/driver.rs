//! The update driver: runs the sequence pre-pull → drain → swap → verify →
//! commit or roll back against the [`Engine`], persisting each step in the
//! [`Journal`] before it starts, and converges after a crash.
//!
//! Containers are told apart by their `gpu-agent.digest` label, not by their
//! names, so every step can be re-run after a crash at any point. Names:
//! the worker runs as `worker.name`; during an update the new container is
//! created as `<name>-next` while the old one serves, and the old one waits as
//! `<name>-prev` (stopped, restart policy `no`) until the new one is verified,
//! so a rollback is a rename and a start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::failpoint;
use super::journal::{
    HistoryEntry, Journal, JournalError, Kind, Outcome, Pending, State, Step, Trigger,
};
use super::machine::{Machine, Phase};
use crate::config::{OnDrainTimeout, Settings, WorkerSettings};
use crate::docker::{Container, Engine, EngineError, HealthState, WorkerSpec};
use crate::registry::{RegistryClient, RegistryError};
use crate::worker::WorkerClient;

/// Consecutive pull failures of one digest after which it is marked bad.
const PULL_FAILURES_BEFORE_BAD: u32 = 3;
/// How often verification looks at the new worker before it is first healthy.
const VERIFY_POLL_FAST: Duration = Duration::from_millis(100);
/// ... and while it must stay healthy.
const VERIFY_POLL_STABLE: Duration = Duration::from_millis(500);
/// How often the drain endpoint is asked for the in-flight count.
const DRAIN_POLL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// What one check led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The worker already runs the target digest.
    UpToDate,
    /// The target digest is marked bad; it is not tried again.
    SkippedBad(String),
    /// Updates are held (drained or pinned).
    Held(&'static str),
    /// The worker now runs this digest.
    Updated(String),
    /// The target failed; the worker is back on the old digest.
    RolledBack { target: String, error: String },
    /// The update stopped before the old worker was touched.
    Aborted(String),
    /// The update failed and no good worker could be put back.
    Failed(String),
}

/// The outcome of a swap attempt that did not commit.
struct Failure {
    error: String,
}

pub struct Updater<E: Engine> {
    engine: E,
    registry: RegistryClient,
    probe: WorkerClient,
    settings: Arc<Settings>,
    worker: Arc<WorkerSettings>,
    journal: Journal,
    state: State,
    machine: Machine,
    last_error: Option<String>,
    last_check: Option<OffsetDateTime>,
    pull_failures: HashMap<String, u32>,
    shutdown: CancellationToken,
}

impl<E: Engine> Updater<E> {
    /// Loads the journal. Call [`Updater::reconcile`] before anything else.
    pub fn new(
        engine: E,
        registry: RegistryClient,
        settings: Arc<Settings>,
        shutdown: CancellationToken,
    ) -> Result<Self, UpdateError> {
        let journal = Journal::open(&settings.agent.state_dir)?;
        let (state, _recovered) = journal.load()?;
        Ok(Updater {
            engine,
            registry,
            probe: WorkerClient::new(),
            worker: Arc::new(settings.worker.clone()),
            settings,
            journal,
            state,
            machine: Machine::default(),
            last_error: None,
            last_check: None,
            pull_failures: HashMap::new(),
            shutdown,
        })
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn phase(&self) -> Phase {
        self.machine.phase()
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    pub fn last_check(&self) -> Option<OffsetDateTime> {
        self.last_check
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    fn name(&self) -> &str {
        &self.worker.name
    }

    fn next_name(&self) -> String {
        format!("{}-next", self.worker.name)
    }

    fn prev_name(&self) -> String {
        format!("{}-prev", self.worker.name)
    }

    fn spec(&self, digest: &str) -> WorkerSpec {
        WorkerSpec {
            worker: self.worker.clone(),
            agent_id: self.settings.agent.id.clone(),
            image_ref: self.settings.image.name.pull_ref(digest),
            digest: digest.to_string(),
        }
    }

    fn set_phase(&mut self, p: Phase) {
        if let Err(e) = self.machine.go(p) {
            // A bug, not an operator problem: log it and follow the driver.
            error!(error = %e, "state machine");
            self.machine = Machine::default();
            let _ = self.machine.go(p);
        }
        debug!(phase = %p, "phase");
    }

    fn save(&self) -> Result<(), UpdateError> {
        Ok(self.journal.save(&self.state)?)
    }

    fn set_step(&mut self, step: Step) -> Result<(), UpdateError> {
        if let Some(p) = self.state.pending.as_mut() {
            p.step = step;
        }
        self.save()?;
        self.set_phase(Phase::of_step(step));
        Ok(())
    }

    fn record(&self, entry: HistoryEntry) {
        info!(
            kind = ?entry.kind, outcome = ?entry.outcome, from = entry.from.as_deref().unwrap_or("-"),
            to = entry.to.as_deref().unwrap_or("-"), downtime_ms = ?entry.downtime_ms,
            error = entry.error.as_deref().unwrap_or(""), "history"
        );
        if let Err(e) = self.journal.append(&entry) {
            error!(error = %e, "could not append to the history");
        }
    }

    fn history(
        &self,
        p: &Pending,
        outcome: Outcome,
        error: Option<String>,
        downtime_ms: Option<u64>,
    ) {
        self.record(HistoryEntry {
            at: OffsetDateTime::now_utc(),
            kind: Kind::Update,
            from: p.from.clone(),
            to: Some(p.to.clone()),
            outcome,
            trigger: p.trigger,
            error,
            downtime_ms,
        });
    }

    /// Brings the engine in line with the journal after a start: finishes or
    /// rolls back an interrupted update, adopts a running managed worker,
    /// starts the last good digest when nothing runs.
    pub async fn reconcile(&mut self) -> Result<(), UpdateError> {
        let Some(p) = self.state.pending.clone() else {
            return self.ensure_running().await;
        };
        warn!(from = p.from.as_deref().unwrap_or("-"), to = %p.to, step = ?p.step,
              "resuming an update interrupted by an agent restart");
        match p.step {
            Step::Pulling | Step::Draining => {
                // The old worker was never stopped: give it back its jobs and drop the new one.
                self.abort_prepared(
                    &p,
                    format!(
                        "the agent restarted while {:?}; the old worker was kept",
                        p.step
                    )
                    .to_lowercase(),
                )
                .await?;
                self.ensure_running().await
            }
            Step::Swapping | Step::Verifying => {
                self.set_phase(Phase::of_step(p.step));
                let t0 = Instant::now();
                let outcome = match self.swap(p.from.as_deref(), &p.to).await {
                    Ok(()) => {
                        self.set_step(Step::Verifying)?;
                        self.verify_primary().await
                    }
                    Err(e) => Err(Failure {
                        error: crate::error_chain(&e),
                    }),
                };
                self.finish(&p, t0, outcome).await?;
                Ok(())
            }
            Step::RollingBack => {
                let error = p
                    .error
                    .clone()
                    .unwrap_or_else(|| "the agent restarted during a rollback".into());
                self.rollback(&p, error).await?;
                Ok(())
            }
        }
    }

    /// Makes sure exactly one managed worker runs the current digest (unless drained).
    pub async fn ensure_running(&mut self) -> Result<(), UpdateError> {
        let cs = self.engine.list_managed().await?;
        let name = self.name().to_string();
        let target = self
            .state
            .current_digest
            .clone()
            .or_else(|| self.state.last_good_digest.clone());
        // Never two: keep the primary if it runs, else one on the target digest, else any.
        let running: Vec<&Container> = cs.iter().filter(|c| c.running || c.restarting).collect();
        let keep = running
            .iter()
            .find(|c| c.name == name)
            .or_else(|| running.iter().find(|c| c.digest == target))
            .or_else(|| running.first())
            .map(|c| (*c).clone());
        for c in &cs {
            if keep.as_ref().is_some_and(|k| k.id == c.id) {
                continue;
            }
            if c.running || c.restarting {
                warn!(container = %c.name, digest = c.digest.as_deref().unwrap_or("-"),
                      "a second managed worker runs; stopping it");
                self.engine.set_restart(&c.id, "no", None).await?;
                self.engine.stop(&c.id, self.worker.stop_timeout).await?;
            }
            if c.name != name || keep.is_some() {
                self.engine.remove(&c.id).await?;
            }
        }
        if let Some(c) = keep {
            if c.name != name {
                self.engine.remove(&name).await?;
                self.engine.rename(&c.id, &name).await?;
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
            if !self.state.drained {
                self.set_phase(Phase::Idle);
            }
            return Ok(());
        }
        if self.state.drained {
            self.set_phase(Phase::Drained);
            return Ok(());
        }
        let Some(target) = target else {
            debug!("no worker yet and no digest known: the first check deploys one");
            return Ok(());
        };
        // The primary may exist stopped (crash, reboot with restart policy "no").
        let existing = self.engine.inspect(&name).await?;
        match existing {
            Some(c) if c.digest.as_deref() == Some(target.as_str()) => {
                info!(digest = %target, "starting the stopped worker");
                self.engine
                    .set_restart(&c.id, &self.worker.restart, self.worker.restart_max_retries)
                    .await?;
                self.engine.start(&c.id).await?;
            }
            other => {
                if let Some(c) = other {
                    self.engine.remove(&c.id).await?;
                }
                info!(digest = %target, "no worker runs: starting the last good digest");
                let id = self.create_pulled(&name, &target).await?;
                self.engine.start(&id).await?;
            }
        }
        self.state.current_digest = Some(target);
        self.save()?;
        self.set_phase(Phase::Idle);
        Ok(())
    }

    async fn pull_if_missing(&self, digest: &str) -> Result<(), UpdateError> {
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
    async fn create_pulled(&self, name: &str, digest: &str) -> Result<String, UpdateError> {
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

    /// Resolves the configured tag or range and updates if the digest is new.
    pub async fn check(&mut self, trigger: Trigger) -> Result<CheckOutcome, UpdateError> {
        if self.state.drained {
            return Ok(CheckOutcome::Held("drained"));
        }
        self.set_phase(Phase::Checking);
        let resolved = self
            .registry
            .resolve(&self.settings.image.name, &self.settings.image.policy)
            .await;
        self.last_check = Some(OffsetDateTime::now_utc());
        let resolved = match resolved {
            Ok(r) => r,
            Err(e) => {
                self.last_error = Some(crate::error_chain(&e));
                self.set_phase(Phase::Idle);
                return Err(e.into());
            }
        };
        let target = resolved.digest;
        if self.state.current_digest.as_deref() == Some(target.as_str()) {
            debug!(tag = %resolved.tag, digest = %target, "up to date");
            self.last_error = None;
            self.set_phase(Phase::Idle);
            return Ok(CheckOutcome::UpToDate);
        }
        if self.state.is_bad(&target) {
            debug!(tag = %resolved.tag, digest = %target, "target is marked bad; not trying it again");
            self.set_phase(Phase::Idle);
            return Ok(CheckOutcome::SkippedBad(target));
        }
        info!(tag = %resolved.tag, digest = %target, from = self.state.current_digest.as_deref().unwrap_or("-"),
              "new digest");
        self.update_to(&target, trigger).await
    }

    /// Deploys `target` through pre-pull, drain, swap and verification.
    pub async fn update_to(
        &mut self,
        target: &str,
        trigger: Trigger,
    ) -> Result<CheckOutcome, UpdateError> {
        // The primary might have died since the last tick; make the starting point sound.
        self.ensure_running().await?;
        let p = Pending {
            from: self.state.current_digest.clone(),
            to: target.to_string(),
            trigger,
            step: Step::Pulling,
            started_at: OffsetDateTime::now_utc(),
            error: None,
        };
        self.state.pending = Some(p.clone());
        self.set_step(Step::Pulling)?;

        // 1. Pre-pull and create the new container while the old one serves.
        if let Err(e) = self.prepare(target).await {
            let msg = crate::error_chain(&e);
            let n = self.pull_failures.entry(target.to_string()).or_default();
            *n += 1;
            // An engine or registry that is down says nothing about the image.
            let mark = *n >= PULL_FAILURES_BEFORE_BAD
                && !matches!(e, UpdateError::Engine(EngineError::Unreachable { .. }))
                && !matches!(&e, UpdateError::Registry(r) if r.is_transient());
            warn!(digest = %target, error = %msg, attempt = *n, "could not prepare the new worker; the old one keeps serving");
            self.remove_named(&self.next_name()).await;
            if mark {
                self.state.mark_bad(target, &msg, OffsetDateTime::now_utc());
                self.pull_failures.remove(target);
            }
            self.state.pending = None;
            self.save()?;
            self.history(&p, Outcome::Failed, Some(msg.clone()), None);
            self.last_error = Some(msg.clone());
            self.set_phase(if self.state.current_digest.is_some() {
                Phase::Idle
            } else {
                Phase::Failed
            });
            return Ok(CheckOutcome::Failed(msg));
        }
        self.pull_failures.remove(target);
        failpoint::hit("after-pull").await;

        // 2. Drain the old worker.
        let old = self.primary_running().await?;
        if old.is_some() {
            self.set_step(Step::Draining)?;
            if let Err(reason) = self.drain().await {
                self.abort_prepared(&p, reason.clone()).await?;
                return Ok(CheckOutcome::Aborted(reason));
            }
        }
        failpoint::hit("after-drain").await;

        // 3. Swap, 4. verify, 5. commit or roll back.
        self.set_step(Step::Swapping)?;
        let t0 = Instant::now();
        let outcome = match self.swap(p.from.as_deref(), target).await {
            Ok(()) => {
                failpoint::hit("after-start").await;
                self.set_step(Step::Verifying)?;
                self.verify_primary().await
            }
            Err(e) => Err(Failure {
                error: crate::error_chain(&e),
            }),
        };
        self.finish(&p, t0, outcome).await
    }

    async fn finish(
        &mut self,
        p: &Pending,
        t0: Instant,
        outcome: Result<Instant, Failure>,
    ) -> Result<CheckOutcome, UpdateError> {
        match outcome {
            Ok(healthy_at) => {
                let downtime = healthy_at.saturating_duration_since(t0).as_millis() as u64;
                self.state.commit(&p.to);
                self.state.pending = None;
                self.save()?;
                self.history(p, Outcome::Success, None, Some(downtime));
                self.last_error = None;
                self.set_phase(Phase::Idle);
                self.cleanup_after_commit().await;
                Ok(CheckOutcome::Updated(p.to.clone()))
            }
            Err(f) => self.rollback(p, f.error).await,
        }
    }

    /// Pulls `target` if needed and creates its container as `<name>-next`.
    async fn prepare(&self, target: &str) -> Result<(), UpdateError> {
        let next = self.next_name();
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

    async fn remove_named(&self, name: &str) {
        if let Err(e) = self.engine.remove(name).await {
            warn!(container = name, error = %crate::error_chain(&e), "could not remove");
        }
    }

    async fn primary_running(&self) -> Result<Option<Container>, UpdateError> {
        Ok(self
            .engine
            .inspect(self.name())
            .await?
            .filter(|c| c.running))
    }

    /// Asks the old worker to stop taking jobs and waits for its in-flight jobs.
    /// `Err` means: keep the old worker (the reason is given).
    async fn drain(&self) -> Result<(), String> {
        let Some(url) = self.worker.drain.http.clone() else {
            // Without a drain endpoint, SIGTERM with stop_timeout is the drain.
            return Ok(());
        };
        let deadline = Instant::now() + self.worker.drain.timeout;
        let proceed = self.worker.drain.on_timeout == OnDrainTimeout::Proceed;
        info!(url = %url, timeout = ?self.worker.drain.timeout, "draining the old worker");
        if let Err(e) = self.probe.drain_start(&url).await {
            let msg = format!("could not start draining: {e}");
            if proceed {
                warn!(error = %msg, "drain.on_timeout = proceed: swapping anyway");
                return Ok(());
            }
            return Err(msg);
        }
        let mut last = None;
        loop {
            match self.probe.in_flight(&url).await {
                Ok(0) => {
                    info!("old worker drained");
                    return Ok(());
                }
                Ok(n) => {
                    if last != Some(n) {
                        info!(in_flight = n, "waiting for in-flight jobs");
                    }
                    last = Some(n);
                }
                Err(e) => warn!(error = %e, "drain endpoint"),
            }
            if Instant::now() >= deadline {
                let msg = format!(
                    "drain timed out after {} with {} jobs still in flight",
                    humantime::format_duration(self.worker.drain.timeout),
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
                    return Err("the agent is shutting down; the update will be tried again".into());
                }
            }
        }
    }

    /// Gives the old worker its jobs back and removes the prepared container.
    async fn abort_prepared(&mut self, p: &Pending, reason: String) -> Result<(), UpdateError> {
        warn!(reason = %reason, "update aborted; the old worker keeps serving");
        if let Some(url) = self.worker.drain.http.clone() {
            if let Err(e) = self.probe.drain_cancel(&url).await {
                debug!(error = %e, "drain cancel (not every worker supports it)");
            }
        }
        for c in self.engine.list_managed().await? {
            if c.digest.as_deref() == Some(p.to.as_str()) && !c.running {
                self.engine.remove(&c.id).await?;
            }
        }
        self.state.pending = None;
        self.save()?;
        self.history(p, Outcome::Aborted, Some(reason.clone()), None);
        self.last_error = Some(reason);
        self.set_phase(Phase::Idle);
        Ok(())
    }

    /// Stops the old worker and starts the new one under the primary name.
    /// Idempotent: converges from any point of an interrupted swap.
    async fn swap(&self, from: Option<&str>, to: &str) -> Result<(), UpdateError> {
        let name = self.name().to_string();
        let prev = self.prev_name();
        let cs = self.engine.list_managed().await?;
        for c in &cs {
            if c.digest.as_deref() != Some(to) && (c.running || c.restarting) {
                info!(container = %c.name, digest = c.digest.as_deref().unwrap_or("-"), "stopping the old worker");
                self.engine.set_restart(&c.id, "no", None).await?;
                self.engine.stop(&c.id, self.worker.stop_timeout).await?;
            }
        }
        // Park the old container as <name>-prev for a fast rollback; anything else in the way goes.
        for c in &cs {
            if c.digest.as_deref() == Some(to) {
                continue;
            }
            if from.is_some() && c.digest.as_deref() == from {
                if c.name != prev {
                    self.remove_named(&prev).await;
                    self.engine.rename(&c.id, &prev).await?;
                }
            } else if c.name == name || c.name == prev {
                self.engine.remove(&c.id).await?;
            }
        }
        failpoint::hit("after-stop").await;
        let new = match cs.iter().find(|c| c.digest.as_deref() == Some(to)) {
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
        if !new.running {
            info!(digest = %to, "starting the new worker");
            self.engine.start(&new.id).await?;
        }
        Ok(())
    }

    /// Verifies the worker under the primary name: it runs, does not restart,
    /// becomes healthy within `health.timeout` and stays so for `stable_for`.
    /// Returns when it was first seen healthy.
    async fn verify_primary(&self) -> Result<Instant, Failure> {
        let name = self.name().to_string();
        let h = &self.worker.health;
        let start = Instant::now();
        let mut first_healthy: Option<Instant> = None;
        let mut healthy_since: Option<Instant> = None;
        let mut restarts: Option<i64> = None;
        let mut last_problem = String::from("no answer yet");
        loop {
            let c = match self.engine.inspect(&name).await {
                Ok(Some(c)) => c,
                Ok(None) => {
                    return Err(Failure {
                        error: format!("container {name} vanished"),
                    })
                }
                Err(e) => {
                    return Err(Failure {
                        error: crate::error_chain(&e),
                    })
                }
            };
            let base = *restarts.get_or_insert(c.restart_count);
            if !c.running || c.restarting || c.restart_count > base {
                let logs = self.engine.logs_tail(&c.id, 5).await.unwrap_or_default();
                let mut error = match (c.exit_code, &c.error) {
                    (_, Some(e)) => format!("the new worker failed: {e}"),
                    (Some(code), _) if !c.running || c.restarting => {
                        format!("the new worker exited with code {code}")
                    }
                    _ => "the new worker restarted".to_string(),
                };
                let logs = logs.trim();
                if !logs.is_empty() {
                    error.push_str(&format!("; last output: {}", logs.replace('\n', " | ")));
                }
                return Err(Failure { error });
            }
            let healthy = if let Some(url) = &h.http {
                match self.probe.health(url).await {
                    Ok(()) => true,
                    Err(e) => {
                        last_problem = e.to_string();
                        false
                    }
                }
            } else {
                match c.health {
                    HealthState::None | HealthState::Healthy => true,
                    HealthState::Starting => {
                        last_problem = "HEALTHCHECK still starting".into();
                        false
                    }
                    HealthState::Unhealthy => {
                        return Err(Failure {
                            error: "the new worker's HEALTHCHECK reports unhealthy".into(),
                        })
                    }
                }
            };
            let now = Instant::now();
            if healthy {
                first_healthy.get_or_insert(now);
                let since = *healthy_since.get_or_insert(now);
                if now.duration_since(since) >= h.stable_for {
                    info!(
                        after_ms = now.duration_since(start).as_millis() as u64,
                        "new worker verified"
                    );
                    return Ok(first_healthy.unwrap_or(now));
                }
            } else if let Some(since) = healthy_since.take() {
                warn!(healthy_for_ms = now.duration_since(since).as_millis() as u64, problem = %last_problem,
                      "the new worker was healthy, then not");
            }
            if healthy_since.is_none() && now.duration_since(start) >= h.timeout + h.stable_for {
                return Err(Failure {
                    error: format!(
                        "the new worker was not healthy within {}: {last_problem}",
                        humantime::format_duration(h.timeout)
                    ),
                });
            }
            let pause = if healthy_since.is_some() {
                VERIFY_POLL_STABLE
            } else {
                VERIFY_POLL_FAST
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// Puts the old digest back under the primary name, verifies it, and marks
    /// the failed digest bad. Idempotent.
    async fn rollback(&mut self, p: &Pending, error: String) -> Result<CheckOutcome, UpdateError> {
        warn!(digest = %p.to, error = %error, "the new worker failed; rolling back");
        if let Some(pending) = self.state.pending.as_mut() {
            pending.error = Some(error.clone());
        }
        self.set_step(Step::RollingBack)?;
        let name = self.name().to_string();
        for c in self.engine.list_managed().await? {
            if c.digest.as_deref() == Some(p.to.as_str()) {
                self.engine.remove(&c.id).await?;
            }
        }
        failpoint::hit("during-rollback").await;
        self.state
            .mark_bad(&p.to, &error, OffsetDateTime::now_utc());
        let Some(from) = p.from.clone() else {
            // A first deploy has nothing to go back to.
            self.state.pending = None;
            self.state.current_digest = None;
            self.save()?;
            self.history(p, Outcome::Failed, Some(error.clone()), None);
            self.last_error = Some(error.clone());
            self.set_phase(Phase::Failed);
            return Ok(CheckOutcome::Failed(error));
        };
        let cs = self.engine.list_managed().await?;
        match cs
            .iter()
            .find(|c| c.digest.as_deref() == Some(from.as_str()))
        {
            Some(old) => {
                if old.name != name {
                    self.remove_named(&name).await;
                    self.engine.rename(&old.id, &name).await?;
                }
                self.engine
                    .set_restart(
                        &old.id,
                        &self.worker.restart,
                        self.worker.restart_max_retries,
                    )
                    .await?;
                if !old.running {
                    self.engine.start(&old.id).await?;
                }
            }
            None => {
                self.remove_named(&name).await;
                let id = self.create_pulled(&name, &from).await?;
                self.engine.start(&id).await?;
            }
        }
        let back = self.verify_primary().await;
        self.state.current_digest = Some(from.clone());
        self.state.pending = None;
        self.save()?;
        match back {
            Ok(_) => {
                self.history(p, Outcome::RolledBack, Some(error.clone()), None);
                self.last_error = Some(format!("{} was rolled back: {error}", p.to));
                self.set_phase(Phase::Idle);
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
                self.set_phase(Phase::Failed);
                Ok(CheckOutcome::Failed(msg))
            }
        }
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
