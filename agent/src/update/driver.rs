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
use std::sync::atomic::{AtomicBool, Ordering};
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
use crate::gpu::{self, GpuProbe, Snapshot, Xid, XidClass};
use crate::hub::Hub;
use crate::registry::{RegistryClient, RegistryError};
use crate::worker::WorkerClient;

/// Failures of one digest not plainly its own fault (a pull the registry
/// refuses, a container the engine will not create or start) after which it is
/// marked bad anyway, so that a persistent problem does not loop.
const STRIKES_BEFORE_BAD: u32 = 3;
/// How often verification looks at the new worker before it is first healthy.
const VERIFY_POLL_FAST: Duration = Duration::from_millis(100);
/// ... and while it must stay healthy.
const VERIFY_POLL_STABLE: Duration = Duration::from_millis(500);
/// How often the drain endpoint is asked for the in-flight count.
const DRAIN_POLL: Duration = Duration::from_millis(500);
/// How often the hub is asked whether the new worker has registered.
const REGISTRATION_POLL: Duration = Duration::from_millis(250);

/// Where the in-flight count of a drain comes from.
enum InFlightSource {
    /// The worker's drain endpoint (`worker.drain.http`).
    Worker(url::Url),
    /// The hub's view of the worker, where it has no drain endpoint.
    Hub(Arc<Hub>),
}

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("a container named {name} exists that this agent does not manage (its gpu-agent.agent label is {label}, this agent is {agent_id}); it was left alone: remove or rename it, or set worker.name to another name")]
    NameTaken {
        name: String,
        label: String,
        agent_id: String,
    },
}

/// What the updater shows of itself to watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub phase: Phase,
    pub state: State,
    pub last_error: Option<String>,
    pub last_check: Option<OffsetDateTime>,
    pub next_check: Option<OffsetDateTime>,
}

impl Default for View {
    fn default() -> Self {
        View {
            phase: Phase::Idle,
            state: State::default(),
            last_error: None,
            last_check: None,
            next_check: None,
        }
    }
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
    /// Maintenance: the worker is drained and stopped.
    Drained,
    /// The worker runs again after a maintenance drain and passed its health gate.
    Undrained,
    /// The pin is released.
    Unpinned,
    /// The worker now runs this digest.
    Updated(String),
    /// The target failed; the worker is back on the old digest.
    RolledBack { target: String, error: String },
    /// The update stopped before the old worker was touched.
    Aborted(String),
    /// The update failed and no good worker could be put back.
    Failed(String),
    /// The agent stopped mid-update with a worker running but not yet
    /// verified; the journal resumes the verification at the next start.
    Suspended(String),
}

/// Whose fault a failed swap was, which decides whether the digest is marked bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blame {
    /// The new worker itself failed (exited, restarted, unhealthy): mark it bad now.
    Image,
    /// Something went wrong around it (an engine call refused): count a strike;
    /// three in a row mark it bad, so a persistent problem does not loop.
    Strike,
    /// The engine was unreachable or timed out: says nothing about the image.
    None,
    /// Not a failure: the agent's stop budget ran out before the worker was
    /// verified. The journal keeps the step; the next start resumes it.
    Stopped,
    /// A hardware-class XID on the worker's GPUs: not the image's fault. The
    /// digest is not marked; after the rollback updates are held and, with
    /// `gpu.drain_on_fault`, the worker is drained.
    GpuFault,
}

/// The outcome of a swap attempt that did not commit.
struct Failure {
    error: String,
    blame: Blame,
}

impl Failure {
    fn image(error: String) -> Self {
        Failure {
            error,
            blame: Blame::Image,
        }
    }

    fn from_error(e: &UpdateError) -> Self {
        let blame = match e {
            UpdateError::Engine(e) if e.is_engine_down() || e.is_gpu_unavailable() => Blame::None,
            UpdateError::Registry(r) if r.is_transient() => Blame::None,
            UpdateError::Journal(_) => Blame::None,
            _ => Blame::Strike,
        };
        Failure {
            error: crate::error_chain(e),
            blame,
        }
    }
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
    next_check: Option<OffsetDateTime>,
    view: tokio::sync::watch::Sender<View>,
    strikes: HashMap<String, u32>,
    shutdown: CancellationToken,
    /// Set by `agentctl undrain` to end a maintenance drain's wait.
    drain_cancel: Arc<AtomicBool>,
    /// Why the engine could not give a worker its GPUs, last time it tried:
    /// polls do not try again (a swap would stop the old worker for nothing,
    /// poll after poll) until an operator asks (`agentctl check`/`update`),
    /// the config is reloaded or the agent restarts.
    gpu_unavailable: Option<String>,
    /// The GPUs, when `gpu.check` is on.
    gpu: Option<Arc<dyn GpuProbe>>,
    /// XIDs up to this seq were seen before the last good GPU check (or
    /// acknowledged by an operator's action).
    good_xid_seq: u64,
    /// XIDs up to this seq were looked at by the fault watch.
    seen_xid_seq: u64,
    /// The last reason the GPU pre-flight gave (its history line is written once).
    gate_blocked: Option<String>,
    /// Cancelled when the stop budget after SIGTERM is spent: verification
    /// stops looking and leaves its step to the journal.
    stop_now: CancellationToken,
    /// The hub, with `[hub]` in the config: desired digests, drain notices,
    /// the registration check, reports.
    hub: Option<Arc<Hub>>,
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
        let (mut state, recovered) = journal.load()?;
        if recovered {
            // Keep what the history knows: the good digests and the bad marks.
            state.rebuild_from(&journal.history()?);
            journal.save(&state)?;
            warn!(
                last_good = state.last_good_digest.as_deref().unwrap_or("-"),
                bad = state.bad_digests.len(),
                "state rebuilt from the history"
            );
        }
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
            next_check: None,
            view: tokio::sync::watch::Sender::new(View::default()),
            strikes: HashMap::new(),
            shutdown,
            drain_cancel: Arc::default(),
            gpu_unavailable: None,
            gpu: None,
            good_xid_seq: 0,
            seen_xid_seq: 0,
            gate_blocked: None,
            stop_now: CancellationToken::new(),
            hub: None,
        })
    }

    /// The hub to follow, tell and report to.
    pub fn set_hub(&mut self, hub: Option<Arc<Hub>>) {
        self.hub = hub;
    }

    /// Takes a reloaded config: the registry policy applies from the next
    /// check, the worker settings to the next container created.
    pub fn reload(&mut self, settings: Arc<Settings>, registry: RegistryClient) {
        self.gpu_unavailable = None;
        if !settings.gpu.check && self.gpu.take().is_some() {
            info!("gpu.check is off now: updates no longer wait on the GPU gate");
        }
        if settings.gpu.check && self.gpu.is_none() {
            warn!("gpu.check is on in the reloaded config: the GPU gate starts with the next restart of the agent");
        }
        self.worker = Arc::new(settings.worker.clone());
        self.settings = settings;
        self.registry = registry;
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
        self.publish();
    }

    /// An error that ended a check or an action (a state write that failed,
    /// an engine that cannot be asked): `agentctl status` shows it as
    /// `last_error` until something succeeds.
    pub fn note_error(&mut self, e: &UpdateError) {
        self.last_error = Some(crate::error_chain(e));
        self.publish();
    }

    fn save(&self) -> Result<(), UpdateError> {
        self.journal.save(&self.state)?;
        self.publish();
        Ok(())
    }

    /// Sends the current view to its watchers (the control socket).
    fn publish(&self) {
        self.view.send_replace(View {
            phase: self.machine.phase(),
            state: self.state.clone(),
            last_error: self.last_error.clone(),
            last_check: self.last_check,
            next_check: self.next_check,
        });
    }

    /// A live view of the updater, for status answers that must not wait on an update.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<View> {
        self.publish();
        self.view.subscribe()
    }

    /// When the daemon plans the next check (shown in status).
    pub fn set_next_check(&mut self, at: Option<OffsetDateTime>) {
        self.next_check = at;
        self.publish();
    }

    /// An operator deploys `digest` on purpose: its bad mark and strikes go.
    /// Its mark goes with the commit (in the same write), so a deploy that
    /// is aborted or fails for another reason leaves the mark in place.
    pub fn forgive(&mut self, digest: &str) -> Result<(), UpdateError> {
        self.strikes.remove(digest);
        if self.state.is_bad(digest) {
            info!(
                digest,
                "an operator deploys a digest marked bad: the mark goes once it is verified"
            );
        }
        Ok(())
    }

    /// The GPUs to gate updates on (`gpu.check`).
    pub fn set_gpu(&mut self, gpu: Arc<dyn GpuProbe>) {
        self.good_xid_seq = gpu.last_xid_seq();
        self.seen_xid_seq = self.good_xid_seq;
        self.gpu = Some(gpu);
    }

    /// Reads the GPUs on a blocking thread.
    async fn gpu_snapshot(&self) -> Option<Result<Snapshot, gpu::GpuError>> {
        Some(gpu::read(self.gpu.clone()?).await)
    }

    /// Whether an XID concerns the GPUs the worker is given.
    fn on_worker_gpus(&self, x: &Xid) -> bool {
        use crate::config::Gpus;
        match &self.worker.gpus {
            Gpus::None => false,
            Gpus::All => true,
            Gpus::Count(n) => x.gpu_index.is_none_or(|i| i < *n),
            Gpus::Uuids(ids) => ids.iter().any(|id| {
                x.gpu_uuid.as_deref() == Some(id.as_str())
                    || x.gpu_index.is_some_and(|i| i.to_string() == *id)
            }),
        }
    }

    /// The GPU gate before an update pulls or drains anything: the GPUs are
    /// all there and sound, and no hardware-class XID came since the last good
    /// check. `Err` says why the update waits. An operator's action
    /// (`trigger` cli) acknowledges the XIDs seen so far.
    async fn gpu_preflight(&mut self, trigger: Trigger) -> Result<Option<Snapshot>, String> {
        let Some(probe) = self.gpu.clone() else {
            return Ok(None);
        };
        if trigger == Trigger::Cli {
            if probe.last_xid_seq() > self.good_xid_seq {
                info!("an operator's action acknowledges the XIDs seen so far");
                self.good_xid_seq = probe.last_xid_seq();
            }
            if let Some(hold) = self.state.gpu_hold.take() {
                warn!(hold = %hold, "an operator's action lifts the hold after a GPU fault");
                self.save().map_err(|e| crate::error_chain(&e))?;
            }
        }
        if let Some(hold) = &self.state.gpu_hold {
            return Err(format!(
                "updates are held after a GPU fault: {hold}; once the GPU is reset or the host rebooted, agentctl check goes on"
            ));
        }
        let upto = probe.last_xid_seq();
        let snap = match self.gpu_snapshot().await {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                crate::metrics::global().gpus_unreadable();
                return Err(format!(
                    "GPU pre-flight: {e}; the update waits (install or repair the NVIDIA driver, or set gpu.check = false to update without the GPU gate)"
                ));
            }
            None => return Ok(None),
        };
        let xids: Vec<Xid> = probe
            .xids_since(self.good_xid_seq)
            .into_iter()
            .filter(|x| x.seq <= upto && self.on_worker_gpus(x))
            .collect();
        let a = gpu::assess(&snap, &gpu::Limits::of(&self.settings.gpu), &xids);
        crate::metrics::global().observe_gpus(&snap, &a);
        if !a.healthy {
            let why: Vec<&str> = a
                .problems
                .iter()
                .filter(|p| p.blocks_update)
                .map(|p| p.what.as_str())
                .collect();
            return Err(format!(
                "GPU pre-flight: {}; the worker is left as it is",
                why.join("; ")
            ));
        }
        self.good_xid_seq = upto;
        Ok(Some(snap))
    }

    /// Hardware-class XIDs on the worker's GPUs since the last look: reported,
    /// and with `gpu.drain_on_fault` the worker is drained (updates are held
    /// by the pre-flight until an operator acts).
    async fn gpu_fault_watch(&mut self, trigger: Trigger) -> Result<(), UpdateError> {
        let Some(probe) = self.gpu.clone() else {
            return Ok(());
        };
        let all = probe.xids_since(self.seen_xid_seq);
        for x in &all {
            crate::metrics::global().observe_xid(x);
        }
        self.seen_xid_seq = all.iter().map(|x| x.seq).fold(self.seen_xid_seq, u64::max);
        let Some(x) = all
            .iter()
            .find(|x| x.class == XidClass::Hardware && self.on_worker_gpus(x))
        else {
            return Ok(());
        };
        let what = format!("GPU fault: {}", xid_text(x));
        self.hold_for_gpu_fault(&what, trigger).await
    }

    /// A hardware fault: updates are held (saved, so a restart keeps the
    /// hold) until an operator acts, and with `gpu.drain_on_fault` the worker
    /// is drained.
    async fn hold_for_gpu_fault(
        &mut self,
        what: &str,
        trigger: Trigger,
    ) -> Result<(), UpdateError> {
        error!("{what}; updates are held until an operator runs agentctl check");
        self.state.gpu_hold = Some(what.to_string());
        self.save()?;
        self.last_error = Some(what.to_string());
        if self.settings.gpu.drain_on_fault && !self.state.drained {
            warn!("gpu.drain_on_fault: draining the worker");
            self.drain_for_maintenance_by(Some(what.to_string()), None, trigger)
                .await?;
        }
        Ok(())
    }

    /// An image that asks for a newer CUDA than the driver supports
    /// (`NVIDIA_REQUIRE_CUDA`) cannot run here. `Err` says both versions.
    async fn cuda_check(&self, target: &str, snap: &Snapshot) -> Result<(), String> {
        let Some(have) = &snap.cuda_version else {
            return Ok(());
        };
        let env = match self
            .engine
            .image_env(&self.settings.image.name.pull_ref(target))
            .await
        {
            Ok(env) => env,
            Err(e) => {
                warn!(error = %e, "could not read the image's environment; CUDA compatibility not checked");
                return Ok(());
            }
        };
        // Images with forward-compatibility libraries turn the check off, as
        // the NVIDIA toolkit honours it.
        let disabled = |v: &str| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false");
        if env
            .iter()
            .filter_map(|e| e.strip_prefix("NVIDIA_DISABLE_REQUIRE="))
            .chain(
                self.worker
                    .env
                    .get("NVIDIA_DISABLE_REQUIRE")
                    .map(String::as_str),
            )
            .any(disabled)
        {
            return Ok(());
        }
        let Some(require) = env
            .iter()
            .find_map(|e| e.strip_prefix("NVIDIA_REQUIRE_CUDA="))
        else {
            return Ok(());
        };
        let Some(need) = required_cuda(require) else {
            return Ok(());
        };
        if &need > have {
            return Err(format!(
                "the image needs CUDA {need} (NVIDIA_REQUIRE_CUDA={require}) but the driver {} supports CUDA {have}: upgrade the driver, then deploy it with agentctl update --digest",
                snap.driver_version
            ));
        }
        Ok(())
    }

    /// `stop_now` is cancelled when the agent must stop now: a verification
    /// in progress stops looking and leaves its step in the journal for the
    /// next start.
    pub fn set_stop_token(&mut self, stop_now: CancellationToken) {
        self.stop_now = stop_now;
    }

    /// The flag `agentctl undrain` sets to end a maintenance drain's wait.
    pub fn drain_cancel(&self) -> Arc<AtomicBool> {
        self.drain_cancel.clone()
    }

    /// A history entry for an operator's action on the worker as it is.
    /// A drain entry carries the drain's reason.
    fn record_action(
        &self,
        kind: Kind,
        outcome: Outcome,
        trigger: Trigger,
        error: Option<String>,
        reason: Option<String>,
    ) {
        self.record(HistoryEntry {
            at: OffsetDateTime::now_utc(),
            kind,
            from: self.state.current_digest.clone(),
            to: None,
            outcome,
            trigger,
            error,
            downtime_ms: None,
            reason,
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
        self.drain_for_maintenance_by(reason, timeout, Trigger::Cli)
            .await
    }

    /// [`Updater::drain_for_maintenance`] with what asked for it.
    async fn drain_for_maintenance_by(
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
        self.state.drain_reason = reason;
        self.state.drained_at = Some(OffsetDateTime::now_utc());
        self.save()?;
        info!(
            reason = self.state.drain_reason.as_deref().unwrap_or("-"),
            "maintenance drain"
        );
        self.finish_drain(timeout.unwrap_or(self.worker.drain.timeout), trigger)
            .await
    }

    async fn finish_drain(
        &mut self,
        timeout: Duration,
        trigger: Trigger,
    ) -> Result<CheckOutcome, UpdateError> {
        self.set_phase(Phase::Draining);
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
                let reason = format!("{reason}; the worker keeps serving and is not drained");
                warn!(reason = %reason, "maintenance drain aborted");
                // A drain a crash interrupted may have set it to `no` already.
                for c in &running {
                    self.engine
                        .set_restart(&c.id, &self.worker.restart, self.worker.restart_max_retries)
                        .await?;
                }
                if let Some(url) = self.worker.drain.http.clone() {
                    if let Err(e) = self.probe.drain_cancel(&url).await {
                        warn!(error = %e, "could not tell the worker to take jobs again (DELETE on the drain endpoint)");
                    }
                }
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
                self.set_phase(Phase::Idle);
                return Ok(CheckOutcome::Aborted(reason));
            }
            for c in &running {
                info!(container = %c.name, "stopping the worker for maintenance");
                self.engine.set_restart(&c.id, "no", None).await?;
                self.engine.stop(&c.id, self.worker.stop_timeout).await?;
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
        self.set_phase(Phase::Drained);
        Ok(CheckOutcome::Drained)
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
        self.set_phase(Phase::Verifying);
        let started = self.ensure_running().await;
        if was_running {
            // It never stopped: it only needs its jobs back.
            if let Some(url) = self.worker.drain.http.clone() {
                if let Err(e) = self.probe.drain_cancel(&url).await {
                    warn!(error = %e, "could not tell the worker to take jobs again (DELETE on the drain endpoint)");
                }
            }
        }
        let verified = match started {
            Err(e) => Err(crate::error_chain(&e)),
            Ok(()) if self.state.current_digest.is_none() => Ok(()),
            Ok(()) => {
                self.set_phase(Phase::Verifying);
                match self.verify_primary(None).await {
                    Ok(_) => Ok(()),
                    Err(f) if f.blame == Blame::Stopped => {
                        return Ok(CheckOutcome::Suspended(f.error));
                    }
                    Err(f) => Err(f.error),
                }
            }
        };
        match verified {
            Ok(()) => {
                self.hub_drain(false, "undrained").await;
                self.record_action(Kind::Undrain, Outcome::Success, Trigger::Cli, None, None);
                self.last_error = None;
                self.set_phase(Phase::Idle);
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
                self.set_phase(Phase::Failed);
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
        self.forgive(&target)?;
        self.deploy(&target, Trigger::Cli, Kind::Rollback, None)
            .await
    }

    /// Deploys the digest `reference` names (a digest, or a tag resolved
    /// now) and holds the worker there: checks are skipped until
    /// [`Updater::unpin`]. An operator's pin clears the digest's bad mark.
    /// A pin whose digest does not verify is rolled back and not held.
    pub async fn pin(&mut self, reference: &str) -> Result<CheckOutcome, UpdateError> {
        let digest = if crate::registry::is_sha256_digest(reference) {
            reference.to_string()
        } else {
            self.set_phase(Phase::Checking);
            let policy = crate::registry::Policy::Tag(reference.to_string());
            let resolved = tokio::select! {
                r = self.registry.resolve(&self.settings.image.name, &policy) => r,
                _ = self.shutdown.cancelled() => {
                    self.set_phase(Phase::Idle);
                    return Ok(CheckOutcome::Aborted("the agent is shutting down".into()));
                }
            };
            self.set_phase(Phase::Idle);
            resolved?.digest
        };
        self.forgive(&digest)?;
        self.ensure_running().await?;
        if self.state.current_digest.as_deref() == Some(digest.as_str()) {
            self.state.bad_digests.retain(|b| b.digest != digest);
            self.state.pinned = Some(reference.to_string());
            self.state.pinned_digest = Some(digest.clone());
            self.save()?;
            self.record(HistoryEntry {
                at: OffsetDateTime::now_utc(),
                kind: Kind::Pin,
                from: Some(digest.clone()),
                to: Some(digest),
                outcome: Outcome::Success,
                trigger: Trigger::Cli,
                error: None,
                downtime_ms: None,
                reason: None,
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
                at: OffsetDateTime::now_utc(),
                kind: Kind::Unpin,
                from: digest,
                to: None,
                outcome: Outcome::Success,
                trigger: Trigger::Cli,
                error: None,
                downtime_ms: None,
                reason: None,
            });
        }
        Ok(CheckOutcome::Unpinned)
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
        self.record_since(entry, None);
    }

    /// Appends `entry` to the history and counts it; `started` is when its update began.
    fn record_since(&self, entry: HistoryEntry, started: Option<OffsetDateTime>) {
        crate::metrics::global().observe(&entry, started);
        info!(
            kind = ?entry.kind, outcome = ?entry.outcome, from = entry.from.as_deref().unwrap_or("-"),
            to = entry.to.as_deref().unwrap_or("-"), downtime_ms = ?entry.downtime_ms,
            error = entry.error.as_deref().unwrap_or(""), "history"
        );
        if let Err(e) = self.journal.append(&entry) {
            error!(error = %e, "could not append to the history");
        }
        if let Some(hub) = &self.hub {
            hub.report_event(&entry);
        }
    }

    fn history(
        &self,
        p: &Pending,
        outcome: Outcome,
        error: Option<String>,
        downtime_ms: Option<u64>,
    ) {
        self.record_since(
            HistoryEntry {
                at: OffsetDateTime::now_utc(),
                kind: p.kind,
                from: p.from.clone(),
                to: Some(p.to.clone()),
                outcome,
                trigger: p.trigger,
                error,
                downtime_ms,
                reason: None,
            },
            Some(p.started_at),
        );
    }

    /// Brings the engine in line with the journal: finishes or rolls back an
    /// interrupted update (after a crash, or an error midway), adopts a running
    /// managed worker, starts the last good digest when nothing runs. Run at
    /// start and before every check.
    pub async fn reconcile(&mut self) -> Result<(), UpdateError> {
        let Some(p) = self.state.pending.clone() else {
            return self.ensure_running().await;
        };
        warn!(from = p.from.as_deref().unwrap_or("-"), to = %p.to, step = ?p.step,
              "resuming an interrupted update");
        let old_running = match &p.from {
            Some(from) => self
                .engine
                .list_managed()
                .await?
                .iter()
                .any(|c| c.running && c.digest.as_deref() == Some(from.as_str())),
            None => false,
        };
        match p.step {
            // The old worker was never stopped (or came back with a reboot before
            // the swap stopped it): give it back its jobs, drop the new one, retry later.
            Step::Pulling | Step::Draining => self.abort_interrupted(&p).await,
            Step::Swapping if old_running => self.abort_interrupted(&p).await,
            Step::Swapping | Step::Verifying => {
                self.set_phase(Phase::of_step(p.step));
                self.swap_and_verify(&p).await?;
                Ok(())
            }
            Step::RollingBack => {
                let error = p
                    .error
                    .clone()
                    .unwrap_or_else(|| "interrupted during a rollback".into());
                // The blame was settled (and any mark saved) when the rollback began.
                self.rollback(
                    &p,
                    Failure {
                        error,
                        blame: Blame::None,
                    },
                    None,
                )
                .await?;
                Ok(())
            }
        }
    }

    async fn abort_interrupted(&mut self, p: &Pending) -> Result<(), UpdateError> {
        let step = format!("{:?}", p.step).to_lowercase();
        self.abort_prepared(
            p,
            format!("interrupted while {step}; the old worker was kept"),
        )
        .await?;
        // The swap sets the old worker's restart policy to `no` before it stops
        // it: interrupted in between, it runs on without its policy.
        if p.step == Step::Swapping {
            for c in self.engine.list_managed().await? {
                if c.running && p.from.is_some() && c.digest == p.from {
                    self.engine
                        .set_restart(&c.id, &self.worker.restart, self.worker.restart_max_retries)
                        .await?;
                }
            }
        }
        self.ensure_running().await
    }

    /// Refuses to touch a container holding the worker's name that another
    /// agent (or nobody) manages.
    async fn check_name_is_ours(&self, name: &str) -> Result<(), UpdateError> {
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
        let cs = self.engine.list_managed().await?;
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
            self.set_phase(if self.state.drained {
                Phase::Drained
            } else {
                Phase::Idle
            });
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
                if let Err(e) = self.engine.start(&c.id).await {
                    // Its devices or network may be gone: build it afresh from the spec.
                    warn!(error = %crate::error_chain(&e), "the stopped worker does not start; recreating it");
                    self.engine.remove(&c.id).await?;
                    let id = self.create_pulled(&name, &target).await?;
                    self.engine.start(&id).await?;
                }
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

    /// What every check does first (a poll, a nudge): the GPU fault watch, an
    /// interrupted update finished, a missed resume notice sent again. `Some`:
    /// updates are held (drained or pinned).
    async fn before_check(
        &mut self,
        trigger: Trigger,
    ) -> Result<Option<CheckOutcome>, UpdateError> {
        self.gpu_fault_watch(trigger).await?;
        if self.state.pending.is_some() {
            self.reconcile().await?;
        }
        self.hub_resume_pending().await;
        if self.state.drained {
            return Ok(Some(CheckOutcome::Held("drained")));
        }
        if self.state.pinned.is_some() {
            return Ok(Some(CheckOutcome::Held("pinned")));
        }
        Ok(None)
    }

    /// Resolves the configured tag or range and updates if the digest is new.
    pub async fn check(&mut self, trigger: Trigger) -> Result<CheckOutcome, UpdateError> {
        if let Some(held) = self.before_check(trigger).await? {
            return Ok(held);
        }
        self.set_phase(Phase::Checking);
        let from_hub = match self.hub_desired().await {
            Ok(d) => d,
            Err(msg) => {
                self.last_check = Some(OffsetDateTime::now_utc());
                warn!(error = %msg, "the hub's desired digest is refused; the worker is left as it is");
                self.last_error = Some(msg.clone());
                self.set_phase(Phase::Idle);
                return Ok(CheckOutcome::Failed(msg));
            }
        };
        if let Some(target) = from_hub {
            self.last_check = Some(OffsetDateTime::now_utc());
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
                self.set_phase(Phase::Idle);
                return Ok(CheckOutcome::Aborted("the agent is shutting down".into()));
            }
        };
        self.last_check = Some(OffsetDateTime::now_utc());
        let resolved = match resolved {
            Ok(r) => r,
            Err(e) => {
                self.last_error = Some(crate::error_chain(&e));
                self.set_phase(Phase::Idle);
                return Err(e.into());
            }
        };
        self.go_to(resolved.digest, &format!("tag {}", resolved.tag), trigger)
            .await
    }

    /// A check found `target` (named by `source`: a tag, the hub, a nudge):
    /// deploys it unless it runs already or is marked bad.
    async fn go_to(
        &mut self,
        target: String,
        source: &str,
        trigger: Trigger,
    ) -> Result<CheckOutcome, UpdateError> {
        if self.state.current_digest.as_deref() == Some(target.as_str()) {
            debug!(source, digest = %target, "up to date");
            self.last_error = self.state.gpu_hold.clone();
            self.set_phase(Phase::Idle);
            return Ok(CheckOutcome::UpToDate);
        }
        if self.state.is_bad(&target) {
            debug!(source, digest = %target, "target is marked bad; not trying it again");
            self.set_phase(Phase::Idle);
            return Ok(CheckOutcome::SkippedBad(target));
        }
        info!(source, digest = %target, from = self.state.current_digest.as_deref().unwrap_or("-"),
              "new digest");
        self.update_to(&target, trigger).await
    }

    /// A nudge from the hub: check now; a nudge naming a digest means that
    /// digest. Like a poll, it respects a drain, a pin and bad marks.
    pub async fn nudged(&mut self, nudge: &hub_client::Nudge) -> Result<CheckOutcome, UpdateError> {
        let Some(digest) = nudge.digest.clone() else {
            return self.check(Trigger::Nudge).await;
        };
        if let Some(held) = self.before_check(Trigger::Nudge).await? {
            return Ok(held);
        }
        self.last_check = Some(OffsetDateTime::now_utc());
        // The hub named it: with desired_from_hub it is the desired digest
        // now (followed while the hub cannot be asked).
        if self
            .hub
            .as_ref()
            .is_some_and(|h| h.settings().desired_from_hub)
            && self.state.hub_desired.as_deref() != Some(digest.as_str())
        {
            self.state.hub_desired = Some(digest.clone());
            if let Err(e) = self.save() {
                warn!(error = %crate::error_chain(&e), "could not save the hub's desired digest");
            }
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
                    if let Err(e) = self.save() {
                        warn!(error = %crate::error_chain(&e), "could not save the hub's desired digest");
                    }
                }
                Ok(Some(d.digest))
            }
            Ok(None) => {
                if self.state.hub_desired.take().is_some() {
                    info!("the hub has no opinion now; following the registry");
                    if let Err(e) = self.save() {
                        warn!(error = %crate::error_chain(&e), "could not save the hub's desired digest");
                    }
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

    /// Deploys `target` through pre-pull, drain, swap and verification.
    pub async fn update_to(
        &mut self,
        target: &str,
        trigger: Trigger,
    ) -> Result<CheckOutcome, UpdateError> {
        self.deploy(target, trigger, Kind::Update, None).await
    }

    /// [`Updater::update_to`] for an update, an operator's rollback or a pin:
    /// `kind` is recorded in the history and decides what the commit also does.
    async fn deploy(
        &mut self,
        target: &str,
        trigger: Trigger,
        kind: Kind,
        pin: Option<String>,
    ) -> Result<CheckOutcome, UpdateError> {
        // The primary might have died since the last tick; make the starting point
        // sound (this also refuses a worker name held by a container not ours).
        let running = self.ensure_running().await;
        if let Err(UpdateError::Engine(e)) = &running {
            if e.is_gpu_unavailable() {
                self.gpu_unavailable = Some(e.to_string());
            }
        }
        running?;
        if self.state.current_digest.as_deref() == Some(target) {
            return Ok(CheckOutcome::UpToDate);
        }
        // Pre-flight: an engine that could not give the last new worker its
        // GPUs would only let the swap stop the old one again.
        if trigger == Trigger::Cli {
            self.gpu_unavailable = None;
        }
        if self.worker.gpus != crate::config::Gpus::None {
            if let Some(why) = &self.gpu_unavailable {
                let msg = format!(
                    "updates from polls wait (agentctl check tries again once the engine is fixed): {why}"
                );
                self.last_error = Some(msg.clone());
                return Ok(CheckOutcome::Failed(msg));
            }
        }
        let snap = match self.gpu_preflight(trigger).await {
            Ok(s) => {
                self.gate_blocked = None;
                s
            }
            Err(why) => {
                warn!(digest = %target, reason = %why, "update blocked by the GPU pre-flight");
                // One line per reason: readings and times change, the reason not.
                let key: String = why.chars().filter(|c| !c.is_ascii_digit()).collect();
                if self.gate_blocked.as_deref() != Some(key.as_str()) {
                    self.record(HistoryEntry {
                        at: OffsetDateTime::now_utc(),
                        kind,
                        from: self.state.current_digest.clone(),
                        to: Some(target.to_string()),
                        outcome: Outcome::Failed,
                        trigger,
                        error: Some(why.clone()),
                        downtime_ms: None,
                        reason: None,
                    });
                    self.gate_blocked = Some(key);
                }
                self.last_error = Some(why.clone());
                return Ok(CheckOutcome::Failed(why));
            }
        };
        if let Err(why) = self.hub_preflight().await {
            warn!(digest = %target, reason = %why, "update waits for the hub");
            self.last_error = Some(why.clone());
            self.set_phase(Phase::Idle);
            return Ok(CheckOutcome::Failed(why));
        }
        let p = Pending {
            from: self.state.current_digest.clone(),
            to: target.to_string(),
            trigger,
            step: Step::Pulling,
            started_at: OffsetDateTime::now_utc(),
            error: None,
            kind,
            pin,
        };
        self.state.pending = Some(p.clone());
        if let Err(e) = self.set_step(Step::Pulling) {
            // Not written, so not begun (a full disk): nothing is in
            // progress, and the next check or action may try again.
            self.state.pending = None;
            self.publish();
            return Err(e);
        }

        // 1. Pre-pull and create the new container while the old one serves.
        // A stop of the agent ends a pull at once: the old worker was not touched.
        let prepared = tokio::select! {
            r = self.prepare(target) => r,
            _ = self.shutdown.cancelled() => {
                let reason = "the agent is shutting down; the update will be tried again".to_string();
                self.abort_prepared(&p, reason.clone()).await?;
                return Ok(CheckOutcome::Aborted(reason));
            }
        };
        if let Err(e) = prepared {
            let msg = crate::error_chain(&e);
            // A registry or engine that is down, a rate limit or a full disk say
            // nothing about the image; a registry that has not got it, or an
            // engine that will not create it, does.
            let counts = match &e {
                UpdateError::Engine(e) => {
                    e.is_permanent_pull_failure()
                        || matches!(e, EngineError::Call { op: "create", .. })
                }
                UpdateError::Registry(r) => !r.is_transient(),
                _ => false,
            };
            let marked = counts && self.strike(target, &msg);
            warn!(digest = %target, error = %msg, counted = counts, marked_bad = marked,
                  "could not prepare the new worker; the old one keeps serving");
            self.remove_named(&self.next_name()).await;
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
        if let Some(snap) = &snap {
            if let Err(msg) = self.cuda_check(target, snap).await {
                warn!(digest = %target, error = %msg, "CUDA version check failed; the old worker keeps serving");
                self.remove_named(&self.next_name()).await;
                self.state.mark_bad(target, &msg, OffsetDateTime::now_utc());
                self.state.pending = None;
                self.save()?;
                self.history(&p, Outcome::Failed, Some(msg.clone()), None);
                self.last_error = Some(msg.clone());
                self.set_phase(Phase::Idle);
                return Ok(CheckOutcome::Failed(msg));
            }
        }
        failpoint::hit("after-pull").await;

        // 2. Drain the old worker.
        let old = self.primary_running().await?;
        if old.is_some() {
            self.set_step(Step::Draining)?;
            let told = self.hub_drain(true, &format!("update to {target}")).await;
            if !told && self.worker.drain.http.is_none() {
                // The hub counts the jobs, but did not hear to stop sending them.
                let reason = "the hub did not take the drain notice, and without worker.drain.http its in-flight count is the only drain: the update waits".to_string();
                if self.worker.drain.on_timeout != OnDrainTimeout::Proceed {
                    self.abort_prepared(&p, reason.clone()).await?;
                    return Ok(CheckOutcome::Aborted(reason));
                }
                warn!(reason = %reason, "drain.on_timeout = proceed: swapping anyway");
            }
            self.drain_cancel.store(false, Ordering::SeqCst);
            if let Err(reason) = self.drain(self.worker.drain.timeout).await {
                self.abort_prepared(&p, reason.clone()).await?;
                return Ok(CheckOutcome::Aborted(reason));
            }
        }
        failpoint::hit("after-drain").await;
        // A hardware fault during the pull or the drain: keep the old worker.
        if let Some(probe) = self.gpu.clone() {
            let fault = probe
                .xids_since(self.good_xid_seq)
                .into_iter()
                .find(|x| x.class == XidClass::Hardware && self.on_worker_gpus(x));
            if let Some(x) = fault {
                let what = format!("GPU fault: {}", xid_text(&x));
                self.abort_prepared(&p, what.clone()).await?;
                self.hold_for_gpu_fault(&what, trigger).await?;
                return Ok(CheckOutcome::Aborted(what));
            }
        }
        // Last moment to stop with the old worker untouched.
        if self.shutdown.is_cancelled() {
            let reason = "the agent is shutting down; the update will be tried again".to_string();
            self.abort_prepared(&p, reason.clone()).await?;
            return Ok(CheckOutcome::Aborted(reason));
        }

        // 3. Swap, 4. verify, 5. commit or roll back.
        self.set_step(Step::Swapping)?;
        self.swap_and_verify(&p).await
    }

    /// Counts a strike against `digest`; marks it bad at the third. Returns
    /// whether it is now marked.
    fn strike(&mut self, digest: &str, reason: &str) -> bool {
        let n = self.strikes.entry(digest.to_string()).or_default();
        *n += 1;
        if *n < STRIKES_BEFORE_BAD {
            return false;
        }
        self.strikes.remove(digest);
        self.state.mark_bad(
            digest,
            &format!("{reason} ({STRIKES_BEFORE_BAD} times)"),
            OffsetDateTime::now_utc(),
        );
        true
    }

    /// Steps 3 to 5, from the swap on (also where a resumed update goes on).
    async fn swap_and_verify(&mut self, p: &Pending) -> Result<CheckOutcome, UpdateError> {
        let t0 = Instant::now();

        let outcome = match self.swap(p.from.as_deref(), &p.to).await {
            Ok(xid_base) => {
                failpoint::hit("after-start").await;
                self.set_step(Step::Verifying)?;
                match self.verify_primary(Some(xid_base)).await {
                    Ok(at) => self.verify_registration(&p.to).await.map(|()| at),
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
        match outcome {
            Ok(healthy_at) => {
                let downtime = healthy_at.saturating_duration_since(t0).as_millis() as u64;
                self.state.commit(&p.to);
                match (p.kind, &p.from) {
                    // An operator's rollback: the digest left is not tried again.
                    (Kind::Rollback, Some(from)) if from != &p.to => self.state.mark_bad(
                        from,
                        "rolled back by an operator (agentctl rollback)",
                        OffsetDateTime::now_utc(),
                    ),
                    (Kind::Pin, _) => {
                        self.state.pinned = p.pin.clone().or_else(|| Some(p.to.clone()));
                        self.state.pinned_digest = Some(p.to.clone());
                    }
                    _ => {}
                }
                self.state.pending = None;
                failpoint::hit("before-commit-save").await;
                self.save()?;
                self.strikes.remove(&p.to);
                // Idle before the history line: whoever reads the line (an
                // operator, the hub's report) finds the agent ready for the next action.
                self.last_error = None;
                self.set_phase(Phase::Idle);
                self.history(p, Outcome::Success, None, Some(downtime));
                failpoint::hit("after-commit-save").await;
                self.hub_drain(false, &format!("{} is verified", p.to))
                    .await;
                self.cleanup_after_commit().await;
                Ok(CheckOutcome::Updated(p.to.clone()))
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
                let out = self.rollback(p, f, Some(t0)).await?;
                self.hub_resume_after(&out).await;
                Ok(out)
            }
        }
    }

    /// Pulls `target` if needed and creates its container as `<name>-next`.
    async fn prepare(&self, target: &str) -> Result<(), UpdateError> {
        failpoint::hit("during-pull").await;
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

    /// Removes the container called `name` if this agent manages it; a
    /// container of that name that is not ours is left alone (and logged).
    async fn remove_named(&self, name: &str) {
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

    async fn primary_running(&self) -> Result<Option<Container>, UpdateError> {
        Ok(self
            .engine
            .inspect(self.name())
            .await?
            .filter(|c| c.running))
    }

    /// Asks the old worker to stop taking jobs and waits for its in-flight jobs.
    /// `Err` means: keep the old worker (the reason is given). The count comes
    /// from the worker's drain endpoint or, where it has none, from the hub
    /// (`in_flight` of `GET /v1/workers/{id}`); with neither, SIGTERM with
    /// `stop_timeout` is the drain.
    async fn drain(&self, timeout: Duration) -> Result<(), String> {
        let source = match (&self.worker.drain.http, &self.hub) {
            (Some(url), _) => InFlightSource::Worker(url.clone()),
            (None, Some(hub)) => InFlightSource::Hub(hub.clone()),
            (None, None) => return Ok(()),
        };
        let deadline = Instant::now() + timeout;
        let proceed = self.worker.drain.on_timeout == OnDrainTimeout::Proceed;
        let started = match &source {
            InFlightSource::Worker(url) => {
                info!(url = %url, timeout = ?timeout, "draining the worker");
                self.probe
                    .drain_start(url)
                    .await
                    .map_err(|e| format!("could not start draining: {e}"))
            }
            // The hub was told already; its first answer must come, or the
            // agent cannot know what a stop would kill.
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
        };
        if let Err(msg) = started {
            if proceed {
                warn!(error = %msg, "drain.on_timeout = proceed: swapping anyway");
                return Ok(());
            }
            return Err(msg);
        }
        let mut last = None;
        loop {
            let count = match &source {
                InFlightSource::Worker(url) => {
                    self.probe.in_flight(url).await.map_err(|e| e.to_string())
                }
                InFlightSource::Hub(hub) => match hub.worker().await {
                    Ok(w) => w
                        .in_flight
                        .ok_or_else(|| "the hub's answer has no in_flight count".to_string()),
                    Err(e) => Err(crate::error_chain(&e)),
                },
            };
            match count {
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

    /// Tells the hub to stop or resume sending jobs (best effort: a hub that
    /// does not answer is logged and the update goes on).
    /// `true` is saved (`state.hub_draining`) before it is sent, and
    /// cleared once the hub acknowledged a `false`; a `false` that did not
    /// get through is sent again at the next check ([`Updater::hub_resume_pending`]).
    /// A `false` with no `true` before it is not sent. Returns whether the
    /// hub acknowledged.
    async fn hub_drain(&mut self, draining: bool, reason: &str) -> bool {
        let Some(hub) = self.hub.clone() else {
            return true;
        };
        if !draining && !self.state.hub_draining {
            return true;
        }
        if draining && !self.state.hub_draining {
            self.state.hub_draining = true;
            if let Err(e) = self.save() {
                warn!(error = %crate::error_chain(&e), "could not save the drain notice");
            }
        }
        let sent = tokio::select! {
            r = hub.drain_notice(draining, reason) => r.is_ok(),
            _ = self.stop_now.cancelled() => false,
        };
        if sent && !draining {
            self.state.hub_draining = false;
            if let Err(e) = self.save() {
                warn!(error = %crate::error_chain(&e), "could not save the drain notice");
            }
        }
        sent
    }

    /// After a rollback: the hub may send jobs again once the old worker
    /// serves (not when the rollback failed or was left to the next start).
    async fn hub_resume_after(&mut self, out: &CheckOutcome) {
        if matches!(out, CheckOutcome::RolledBack { .. }) {
            self.hub_drain(false, "rolled back; the last good worker serves")
                .await;
        }
    }

    /// A `draining: false` that has not got through (the hub was down at the
    /// commit, the agent was killed before it, a rollback was resumed) is
    /// sent again while the worker serves.
    async fn hub_resume_pending(&mut self) {
        if self.state.hub_draining && !self.state.drained && self.state.pending.is_none() {
            info!("telling the hub again that the worker takes jobs");
            self.hub_drain(false, "the worker serves").await;
        }
    }

    /// The hub, when it must see a new worker registered (`hub.verify_registration`).
    fn registration_hub(&self) -> Option<&Arc<Hub>> {
        self.hub
            .as_ref()
            .filter(|h| h.settings().verify_registration)
    }

    /// With `hub.verify_registration`, an update starts only while the hub
    /// answers: a new worker it cannot verify would be rolled back anyway.
    async fn hub_preflight(&self) -> Result<(), String> {
        let Some(hub) = self.registration_hub() else {
            return Ok(());
        };
        hub.worker().await.map(|_| ()).map_err(|e| {
            format!(
                "the hub cannot be asked, and hub.verify_registration needs it to verify the new worker; \
                 the update waits and the worker is left as it is: {}",
                crate::error_chain(&e)
            )
        })
    }

    /// With `hub.verify_registration`: the hub must show the worker
    /// registered with `digest` within `hub.registration_timeout`. A hub
    /// that answers but never sees it blames the image; a hub that never
    /// answers blames nothing.
    async fn verify_registration(&self, digest: &str) -> Result<(), Failure> {
        let Some(hub) = self.registration_hub() else {
            return Ok(());
        };
        let timeout = hub.settings().registration_timeout;
        let start = Instant::now();
        let mut seen;
        let mut last_error = String::from("no answer yet");
        // Cleared by every failed call: the image is blamed only when the
        // hub's last word (right up to the deadline) was "not registered".
        loop {
            if self.stop_now.is_cancelled() {
                return Err(Failure {
                    error: "the agent stopped before the worker was verified; the verification resumes when it starts again".into(),
                    blame: Blame::Stopped,
                });
            }
            let asked = tokio::select! {
                r = hub.worker() => r,
                _ = self.stop_now.cancelled() => continue,
            };
            match asked {
                Ok(w) if w.registered && w.digest.as_deref() == Some(digest) => {
                    info!(
                        after_ms = start.elapsed().as_millis() as u64,
                        "the hub sees the new worker registered"
                    );
                    return Ok(());
                }
                Ok(w) => seen = Some(w),
                Err(e) => {
                    seen = None;
                    last_error = crate::error_chain(&e);
                }
            }
            if start.elapsed() >= timeout {
                let within = humantime::format_duration(timeout);
                return Err(match seen {
                    Some(w) => Failure::image(format!(
                        "the new worker did not register with the hub within {within} (hub.registration_timeout): the hub sees {}",
                        match (w.registered, w.digest) {
                            (false, _) => "no registered worker".to_string(),
                            (true, Some(d)) => format!("a worker registered with {d}"),
                            (true, None) => "a worker registered without a digest".to_string(),
                        }
                    )),
                    None => Failure {
                        error: format!("could not verify the new worker's registration: the hub did not answer within {within}: {last_error}"),
                        blame: Blame::None,
                    },
                });
            }
            tokio::select! {
                _ = tokio::time::sleep(REGISTRATION_POLL) => {}
                _ = self.stop_now.cancelled() => {}
            }
        }
    }

    /// Gives the old worker its jobs back and removes the prepared container.
    async fn abort_prepared(&mut self, p: &Pending, reason: String) -> Result<(), UpdateError> {
        warn!(reason = %reason, "update aborted; the old worker keeps serving");
        self.hub_drain(false, "update aborted").await;
        if let Some(url) = self.worker.drain.http.clone() {
            if let Err(e) = self.probe.drain_cancel(&url).await {
                warn!(error = %e, "could not tell the old worker to take jobs again (DELETE on the drain endpoint); \
                      it keeps running, but may refuse new jobs until it is restarted");
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
    /// Returns the XID seq from which XIDs are the new worker's (read after
    /// the old one stopped, so its dying XIDs are not held against the image).
    async fn swap(&self, from: Option<&str>, to: &str) -> Result<u64, UpdateError> {
        let name = self.name().to_string();
        let prev = self.prev_name();
        let cs = self.engine.list_managed().await?;
        for c in &cs {
            if c.digest.as_deref() != Some(to) && (c.running || c.restarting) {
                info!(container = %c.name, digest = c.digest.as_deref().unwrap_or("-"), "stopping the old worker");
                self.engine.set_restart(&c.id, "no", None).await?;
                failpoint::hit("after-restart-no").await;
                self.engine.stop(&c.id, self.worker.stop_timeout).await?;
            }
        }
        failpoint::hit("after-stop").await;
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
        failpoint::hit("after-rename").await;
        let xid_base = self.gpu.as_ref().map_or(0, |g| g.last_xid_seq());
        if !new.running {
            info!(digest = %to, "starting the new worker");
            self.engine.start(&new.id).await?;
        }
        Ok(xid_base)
    }

    /// Verifies the worker under the primary name: it runs, does not restart,
    /// becomes healthy within `health.timeout` and stays so for `stable_for`.
    /// Returns when it was first seen healthy.
    /// With `xid_base`, an XID on the worker's GPUs after that seq fails it:
    /// application-class blames the image, hardware-class does not.
    async fn verify_primary(&self, xid_base: Option<u64>) -> Result<Instant, Failure> {
        let name = self.name().to_string();
        let h = &self.worker.health;
        let start = Instant::now();
        let mut first_healthy: Option<Instant> = None;
        let mut healthy_since: Option<Instant> = None;
        let mut restarts: Option<i64> = None;
        let mut started: Option<Option<String>> = None;
        let mut last_problem = String::from("no answer yet");
        let mut engine_trouble = false;
        let stopped = || {
            Failure {
            error: "the agent stopped before the worker was verified; the verification resumes when it starts again".into(),
            blame: Blame::Stopped,
        }
        };
        loop {
            if self.stop_now.is_cancelled() {
                return Err(stopped());
            }
            if let (Some(base), Some(g)) = (xid_base, &self.gpu) {
                let xids = g.xids_since(base);
                let mine: Vec<&Xid> = xids.iter().filter(|x| self.on_worker_gpus(x)).collect();
                // The worst first: a hardware fault is never blamed on the image.
                // XID 45 alone is a cleanup after another error or a kill.
                let worst = mine
                    .iter()
                    .find(|x| x.class == XidClass::Hardware)
                    .or_else(|| {
                        mine.iter()
                            .find(|x| x.class == XidClass::Application && x.code != 45)
                    })
                    .or_else(|| mine.iter().find(|x| x.class == XidClass::Ambiguous));
                if let Some(x) = worst {
                    return Err(xid_failure(x));
                }
            }
            let c = match self.engine.inspect(&name).await {
                Ok(Some(c)) => Some(c),
                Ok(None) => {
                    return Err(Failure {
                        error: format!("container {name} vanished"),
                        blame: Blame::Strike,
                    })
                }
                // The engine being slow or restarting is not the worker's fault:
                // keep looking until the deadline.
                Err(e) if e.is_engine_down() => {
                    last_problem = crate::error_chain(&e);
                    engine_trouble = true;
                    // Unobserved time is not stable time: the engine may have
                    // taken the worker down with it (a dockerd restart).
                    if healthy_since.take().is_some() {
                        warn!(problem = %last_problem,
                              "the engine cannot be asked during the verification; the worker must be stable again once it answers");
                    }
                    None
                }
                Err(e) => return Err(Failure::from_error(&e.into())),
            };
            let Some(c) = c else {
                if Instant::now().duration_since(start) >= h.timeout + h.stable_for {
                    return Err(Failure {
                        error: format!("could not verify the new worker: {last_problem}"),
                        blame: Blame::None,
                    });
                }
                tokio::time::sleep(VERIFY_POLL_STABLE).await;
                continue;
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
                // An engine that went away takes its containers with it.
                let blame = if engine_trouble {
                    Blame::None
                } else {
                    Blame::Image
                };
                return Err(Failure { error, blame });
            }
            // Started again with no restart of its own: the engine restarted
            // (and took the worker down) between two looks.
            let first_start = started.get_or_insert_with(|| c.started_at.clone());
            if c.started_at.is_some() && *first_start != c.started_at {
                *first_start = c.started_at.clone();
                engine_trouble = true;
                if healthy_since.take().is_some() {
                    warn!("the engine restarted the new worker during the verification; it must be stable again");
                }
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
                        return Err(Failure::image(
                            "the new worker's HEALTHCHECK reports unhealthy".into(),
                        ))
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
                // An update's verification (the rollback's has no XID base).
                if xid_base.is_some() {
                    failpoint::hit("during-verify").await;
                }
            } else if let Some(since) = healthy_since.take() {
                warn!(healthy_for_ms = now.duration_since(since).as_millis() as u64, problem = %last_problem,
                      "the new worker was healthy, then not");
            }
            if healthy_since.is_none() && now.duration_since(start) >= h.timeout {
                return Err(Failure::image(if first_healthy.is_some() {
                    format!("the new worker was healthy, then not, and did not recover within {}: {last_problem}",
                        humantime::format_duration(h.timeout))
                } else {
                    format!(
                        "the new worker was not healthy within {}: {last_problem}",
                        humantime::format_duration(h.timeout)
                    )
                }));
            }
            let pause = if healthy_since.is_some() {
                VERIFY_POLL_STABLE
            } else {
                VERIFY_POLL_FAST
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.stop_now.cancelled() => return Err(stopped()),
            }
        }
    }

    /// Puts the old digest back under the primary name and verifies it; the
    /// failed digest is marked bad or counted first, as its blame says.
    /// Idempotent: a resumed rollback runs it again. `swap_began` (when the
    /// old worker was stopped, if this run saw it) gives the downtime.
    async fn rollback(
        &mut self,
        p: &Pending,
        failure: Failure,
        swap_began: Option<Instant>,
    ) -> Result<CheckOutcome, UpdateError> {
        let error = failure.error;
        warn!(digest = %p.to, error = %error, blame = ?failure.blame, "the new worker failed; rolling back");
        // Settle the blame in the same write as the step, so a crash cannot lose it.
        let marked = match failure.blame {
            Blame::Image => {
                self.state
                    .mark_bad(&p.to, &error, OffsetDateTime::now_utc());
                true
            }
            Blame::Strike => self.strike(&p.to, &error),
            Blame::None | Blame::Stopped | Blame::GpuFault => false,
        };
        if marked {
            warn!(digest = %p.to, "marked bad: it is not tried again until the tag moves or an operator deploys it");
        }
        if let Some(pending) = self.state.pending.as_mut() {
            pending.error = Some(error.clone());
        }
        // A GPU fault holds updates from the same write, so a crash in the
        // rollback cannot lose the hold.
        if failure.blame == Blame::GpuFault {
            self.state.gpu_hold = Some(error.clone());
        }
        self.set_step(Step::RollingBack)?;
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
        failpoint::hit("after-rollback-start").await;
        if old_kept_running {
            if let Some(url) = self.worker.drain.http.clone() {
                if let Err(e) = self.probe.drain_cancel(&url).await {
                    warn!(error = %e, "could not tell the old worker to take jobs again (DELETE on the drain endpoint)");
                }
            }
        }
        let back = self.verify_primary(None).await;
        if let Err(f) = &back {
            if f.blame == Blame::Stopped {
                warn!(digest = %from, "the agent stops before the old worker is verified again; it runs, and the rollback resumes at the next start");
                return Ok(CheckOutcome::Suspended(f.error.clone()));
            }
        }
        self.state.current_digest = Some(from.clone());
        self.state.pending = None;
        self.save()?;
        match back {
            Ok(healthy_at) => {
                let downtime = swap_began
                    .map(|t0| healthy_at.saturating_duration_since(t0).as_millis() as u64);
                self.history(p, Outcome::RolledBack, Some(error.clone()), downtime);
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

/// One XID in words: the GPU, the code, what it means and what to do.
fn xid_text(x: &Xid) -> String {
    let gpu = match (x.gpu_index, &x.gpu_uuid) {
        (Some(i), Some(u)) => gpu::gpu_label(i, u),
        (Some(i), None) => format!("GPU {i}"),
        _ => "a GPU".into(),
    };
    let action = match x.action {
        gpu::XidAction::RestartApp => "restart the application",
        gpu::XidAction::ResetGpu => "reset the GPU",
        gpu::XidAction::RebootHost => "reboot the host",
        gpu::XidAction::Investigate => "investigate",
    };
    format!(
        "{gpu}: XID {} ({}); recommended: {action}",
        x.code, x.meaning
    )
}

/// What an XID during the new worker's verification means for the update.
fn xid_failure(x: &Xid) -> Failure {
    let text = xid_text(x);
    match x.class {
        XidClass::Application => Failure::image(format!(
            "the new worker made a GPU report an application error: {text}"
        )),
        XidClass::Hardware => Failure {
            error: format!(
                "GPU hardware fault during the verification (not the image's fault): {text}"
            ),
            blame: Blame::GpuFault,
        },
        XidClass::Ambiguous => Failure {
            error: format!(
                "ambiguous GPU error during the verification (the application or the GPU): {text}"
            ),
            blame: Blame::Strike,
        },
        XidClass::Other => Failure {
            error: format!("GPU error during the verification: {text}"),
            blame: Blame::Strike,
        },
    }
}

/// The CUDA version an `NVIDIA_REQUIRE_CUDA` value asks for (`cuda>=12.4 brand=…`).
fn required_cuda(require: &str) -> Option<gpu::CudaVersion> {
    require
        .split_whitespace()
        .find_map(|t| t.strip_prefix("cuda>="))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
#[path = "driver_tests.rs"]
mod tests;
