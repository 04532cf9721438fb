//! The [`Updater`]: the plumbing every job of the update shares. It owns the
//! ports (engine, registry, hub, worker probe, clock, GPUs), the journal and
//! the [`Machine`]; it saves the state, moves the phase, publishes the
//! [`View`] and sends [`Event`]s to its subscribers. The jobs live beside it,
//! one file each: `target.rs` (which digest), `sequence.rs` (pull, drain,
//! swap, commit), `verify.rs`, `rollback.rs`, `drain.rs`, `gpu_gate.rs`,
//! `operator.rs`, `converge.rs` (recovery) and `spec_change.rs` (new worker
//! settings in the config).
//!
//! Containers are told apart by their `gpu-agent.digest` label (and, when
//! only the settings change, their `gpu-agent.spec` label), not by their
//! names, so every step can be re-run after a crash at any point. Names:
//! the worker runs as `worker.name`; during an update the new container is
//! created as `<name>-next` while the old one serves, and the old one waits as
//! `<name>-prev` (stopped, restart policy `no`) until the new one is verified,
//! so a rollback is a rename and a start.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::events::{Event, Subscriber, Subscribers};
use super::journal::{HistoryEntry, Journal, Kind, Outcome, Pending, State, Trigger};
use super::machine::{InvalidTransition, Machine, Phase};
use super::outcome::UpdateError;
use super::ports::{Clock, Fleet, Hub, Ports, Probe, Registry, Trust};
use super::status::View;
use crate::config::{Settings, WorkerSettings};
use crate::docker::{Engine, WorkerSpec};
use crate::gpu::GpuProbe;

/// History entries kept while the disk does not take them, at most.
const UNWRITTEN_MAX: usize = 1000;

/// What the disk did not take: the state is then kept in memory (the update
/// goes on), the history entries in order; both are written again at the
/// start of the next turn.
#[derive(Default)]
struct Unwritten {
    /// Why the last state write failed (`None`: the file is up to date).
    state: Option<String>,
    history: VecDeque<HistoryEntry>,
}

/// A transition of the [`Machine`].
pub(super) type Transition = fn(&mut Machine) -> Result<(), InvalidTransition>;

pub struct Updater<E: Engine> {
    pub(super) engine: E,
    pub(super) registry: Arc<dyn Registry>,
    pub(super) probe: Arc<dyn Probe>,
    pub(super) clock: Arc<dyn Clock>,
    /// `[image.verify]`: which digests may be deployed at all.
    pub(super) trust: Option<Arc<dyn Trust>>,
    /// Who asked for the action now running (the control socket's peer),
    /// named in its history entries.
    pub(super) actor: Option<String>,
    /// The hub, with `[hub]` in the config: desired digests, drain notices,
    /// the registration check, the in-flight count.
    pub(super) hub: Option<Arc<dyn Hub>>,
    /// The fleet group (`[fleet]`): a slot before the old worker is
    /// disrupted, the outcome after; alone, [`crate::fleet::LoneHost`].
    pub(super) fleet: Arc<dyn Fleet>,
    pub(super) settings: Arc<Settings>,
    pub(super) worker: Arc<WorkerSettings>,
    pub(super) journal: Journal,
    pub(super) state: State,
    pub(super) machine: Machine,
    pub(super) last_error: Option<String>,
    pub(super) last_check: Option<OffsetDateTime>,
    next_check: Option<OffsetDateTime>,
    view: tokio::sync::watch::Sender<View>,
    subscribers: Subscribers,
    /// Writes the disk did not take (a full disk, a read-only remount).
    unwritten: Mutex<Unwritten>,
    /// Whether this turn's recovery ([`Updater::converge`]) succeeded.
    pub(super) converged: bool,
    /// The state was rebuilt from the history at start: a running worker on
    /// a digest that was never verified is verified before it is kept.
    pub(super) recovered: bool,
    pub(super) shutdown: CancellationToken,
    /// Set by `agentctl undrain` to end a maintenance drain's wait.
    pub(super) drain_cancel: Arc<AtomicBool>,
    /// Why the engine could not give a worker its GPUs, last time it tried:
    /// polls do not try again (a swap would stop the old worker for nothing,
    /// poll after poll) until an operator asks (`agentctl check`/`update`),
    /// the config is reloaded or the agent restarts.
    pub(super) gpu_unavailable: Option<String>,
    /// The GPUs, when `gpu.check` is on.
    pub(super) gpu: Option<Arc<dyn GpuProbe>>,
    /// XIDs up to this seq were seen before the last good GPU check (or
    /// acknowledged by an operator's action).
    pub(super) good_xid_seq: u64,
    /// XIDs up to this seq were looked at by the fault watch.
    pub(super) seen_xid_seq: u64,
    /// Why the worker refuses jobs since a drain it could not be told to
    /// end (it does not support `DELETE` on its drain endpoint): it is
    /// restarted once it has no job in flight.
    pub(super) refuses_jobs: Option<String>,
    /// The last reason the GPU pre-flight gave (its history line is written once).
    pub(super) gate_blocked: Option<String>,
    /// Cancelled when the stop budget after SIGTERM is spent: verification
    /// stops looking and leaves its step to the journal.
    pub(super) stop_now: CancellationToken,
}

impl<E: Engine> Updater<E> {
    /// Loads the journal. Call [`Updater::reconcile`] before anything else.
    pub fn new(
        engine: E,
        ports: Ports,
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
            registry: ports.registry,
            probe: ports.probe,
            clock: ports.clock,
            trust: ports.trust,
            actor: None,
            hub: None,
            fleet: Arc::new(crate::fleet::LoneHost),
            worker: Arc::new(settings.worker.clone()),
            settings,
            journal,
            state,
            machine: Machine::default(),
            last_error: None,
            last_check: None,
            next_check: None,
            view: tokio::sync::watch::Sender::new(View::default()),
            subscribers: Subscribers::default(),
            unwritten: Mutex::default(),
            converged: false,
            recovered,
            shutdown,
            drain_cancel: Arc::default(),
            gpu_unavailable: None,
            gpu: None,
            good_xid_seq: 0,
            seen_xid_seq: 0,
            gate_blocked: None,
            refuses_jobs: None,
            stop_now: CancellationToken::new(),
        })
    }

    /// The hub to follow and tell.
    pub fn set_hub(&mut self, hub: Option<Arc<dyn Hub>>) {
        self.hub = hub;
    }

    /// The fleet group to take slots from and report to (`[fleet]`).
    pub fn set_fleet(&mut self, fleet: Arc<dyn Fleet>) {
        self.fleet = fleet;
    }

    /// Adds a subscriber to the update's events (metrics, the hub's reports).
    pub fn subscribe(&mut self, s: Subscriber) {
        self.subscribers.add(s);
    }

    /// Takes a reloaded config: the registry policy applies from the next
    /// check; the worker's container settings are rolled out by the next
    /// check, or at once by [`Updater::apply_config`].
    pub fn reload(&mut self, settings: Arc<Settings>, ports: Ports) {
        self.gpu_unavailable = None;
        if !settings.gpu.check && self.gpu.take().is_some() {
            info!("gpu.check is off now: updates no longer wait on the GPU gate");
        }
        if settings.gpu.check && self.gpu.is_none() {
            warn!("gpu.check is on in the reloaded config: the GPU gate starts with the next restart of the agent");
        }
        self.worker = Arc::new(settings.worker.clone());
        self.settings = settings;
        self.registry = ports.registry;
        self.trust = ports.trust;
    }

    /// Who asked for the action about to run (`None`: the agent itself).
    pub fn set_actor(&mut self, actor: Option<String>) {
        self.actor = actor;
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

    /// An error that ended a check or an action (a state write that failed,
    /// an engine that cannot be asked): `agentctl status` shows it as
    /// `last_error` until something succeeds.
    pub fn note_error(&mut self, e: &UpdateError) {
        self.last_error = Some(crate::error_chain(e));
        self.publish();
    }

    pub(super) fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    pub(super) fn name(&self) -> &str {
        &self.worker.name
    }

    pub(super) fn next_name(&self) -> String {
        format!("{}-next", self.worker.name)
    }

    pub(super) fn prev_name(&self) -> String {
        format!("{}-prev", self.worker.name)
    }

    pub(super) fn spec(&self, digest: &str) -> WorkerSpec {
        WorkerSpec {
            worker: self.worker.clone(),
            agent_id: self.settings.agent.id.clone(),
            image_ref: self.settings.image.name.pull_ref(digest),
            digest: digest.to_string(),
        }
    }

    /// Moves the machine by `t`; a move the machine refuses is an error
    /// (a bug) and moves nothing.
    pub(super) fn go(
        &mut self,
        t: impl FnOnce(&mut Machine) -> Result<(), InvalidTransition>,
    ) -> Result<(), UpdateError> {
        let mut next = self.machine.clone();
        t(&mut next).inspect_err(|e| error!(error = %e, "state machine"))?;
        self.enter(next);
        Ok(())
    }

    /// Nothing is in progress and the worker serves: idle.
    pub(super) fn settle(&mut self) -> Result<(), UpdateError> {
        self.go(Machine::settle)
    }

    /// The machine is at rest after the worker was made to run: drained
    /// (updates held) or idle.
    pub(super) fn at_rest(&mut self) -> Result<(), UpdateError> {
        let drained = self.state.drained;
        let mut next = self.machine.clone();
        next.at_rest(drained)
            .inspect_err(|e| error!(error = %e, "state machine"))?;
        self.enter(next);
        Ok(())
    }

    fn enter(&mut self, next: Machine) {
        if next.phase() != self.machine.phase() {
            debug!(phase = %next.phase(), "phase");
            self.machine = next;
            self.subscribers.send(&Event::Phase(self.machine.phase()));
        }
        self.publish();
    }

    /// Saves the update's next step (`t`'s phase) before it starts, then
    /// moves the machine there.
    pub(super) fn set_step(&mut self, t: Transition) -> Result<(), UpdateError> {
        let mut next = self.machine.clone();
        t(&mut next).inspect_err(|e| error!(error = %e, "state machine"))?;
        if let Some(p) = self.state.pending.as_mut() {
            p.step = next.phase();
        }
        if matches!(next.phase(), Phase::Verifying | Phase::RollingBack) {
            // The old worker may be stopped: what follows (a rollback above
            // all) must not wait on the disk.
            self.save_going_on();
        } else {
            self.save()?;
        }
        self.enter(next);
        Ok(())
    }

    /// Saves the state where the update must go on whatever the disk says
    /// (once the old worker may be stopped, and at the end of an update): a
    /// write that fails is logged once, kept in memory, shown in status
    /// (`state_unsaved`), and tried again at the start of the next turn.
    pub(super) fn save_going_on(&mut self) {
        let r = self.journal.save(&self.state);
        let mut w = self.unwritten.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            Ok(()) => {
                if let Some(e) = w.state.take() {
                    info!(earlier_error = %e, "the state is saved again");
                }
            }
            Err(e) => {
                let msg = e.to_string();
                if w.state.is_none() {
                    error!(error = %msg, "could not save the state; going on from memory, it is written again when the disk allows");
                }
                w.state = Some(msg);
            }
        }
        drop(w);
        self.publish();
    }

    /// Writes what the disk did not take before: the state and the history
    /// entries kept in memory (at the start of each turn).
    pub(super) fn write_unwritten(&mut self) {
        let state_behind = self
            .unwritten
            .lock()
            .map(|w| w.state.is_some())
            .unwrap_or(false);
        if state_behind {
            self.save_going_on();
        }
        self.flush_history();
    }

    /// Appends the kept history entries, oldest first, until one fails.
    fn flush_history(&self) -> bool {
        let mut w = self.unwritten.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(e) = w.history.front() {
            if self.journal.append(e).is_err() {
                return false;
            }
            w.history.pop_front();
        }
        true
    }

    pub(super) fn save(&self) -> Result<(), UpdateError> {
        self.journal.save(&self.state)?;
        self.publish();
        Ok(())
    }

    /// Saves the state where losing the write only costs a repeat (a
    /// notice sent again, a digest asked for again): a failure is logged.
    pub(super) fn save_or_warn(&self, what: &str) {
        if let Err(e) = self.save() {
            warn!(error = %crate::error_chain(&e), "could not save {what}");
        }
    }

    /// Sends the current view to its watchers (the control socket).
    pub(super) fn publish(&self) {
        let unsaved = self.unwritten.lock().ok().and_then(|w| {
            let history = w.history.len();
            match (&w.state, history) {
                (None, 0) => None,
                (Some(e), 0) => Some(format!("state.json not written: {e}")),
                (e, n) => Some(format!(
                    "{}{n} history entries wait to be written",
                    e.as_ref()
                        .map(|e| format!("state.json not written: {e}; "))
                        .unwrap_or_default()
                )),
            }
        });
        self.view.send_replace(View {
            phase: self.machine.phase(),
            state: self.state.clone(),
            last_error: self.last_error.clone(),
            last_check: self.last_check,
            next_check: self.next_check,
            unsaved,
        });
    }

    /// Tells the subscribers what happened.
    pub(super) fn emit(&self, e: Event<'_>) {
        self.subscribers.send(&e);
    }

    pub(super) fn record(&self, entry: HistoryEntry) {
        self.record_since(entry, None);
    }

    /// Appends `entry` to the history and tells the subscribers; `started`
    /// is when its update began.
    pub(super) fn record_since(&self, mut entry: HistoryEntry, started: Option<OffsetDateTime>) {
        // Text from outside (an engine's or registry's error, a worker's
        // output, an operator's reason) is escaped and capped before it is kept.
        let clean = |t: &mut Option<String>| {
            if let Some(s) = t.as_mut() {
                *s = crate::text::sanitize(s, crate::text::MAX_TEXT * 4);
            }
        };
        clean(&mut entry.error);
        clean(&mut entry.reason);
        if entry.trigger == super::Trigger::Cli && entry.user.is_none() {
            entry.user = self.actor.clone();
        }
        // What a state rebuilt from the history needs: the marks and the hold.
        if matches!(entry.outcome, Outcome::RolledBack | Outcome::Failed) {
            entry.marked_bad = entry.to.as_deref().map(|t| self.state.is_bad(t));
        }
        entry.gpu_hold = self.state.gpu_hold.clone();
        info!(
            kind = ?entry.kind, outcome = ?entry.outcome, from = entry.from.as_deref().unwrap_or("-"),
            to = entry.to.as_deref().unwrap_or("-"), downtime_ms = ?entry.downtime_ms,
            error = entry.error.as_deref().unwrap_or(""), "history"
        );
        let appended = self.flush_history()
            && {
                match self.journal.append(&entry) {
                    Ok(()) => true,
                    Err(e) => {
                        error!(error = %e, "could not append to the history; the entry is kept and written when the disk allows");
                        false
                    }
                }
            };
        if !appended {
            let mut w = self.unwritten.lock().unwrap_or_else(|e| e.into_inner());
            if w.history.len() >= UNWRITTEN_MAX {
                w.history.pop_front();
                warn!("more history entries than can be kept wait for the disk: the oldest is dropped");
            }
            w.history.push_back(entry.clone());
        }
        self.emit(Event::History {
            entry: &entry,
            started,
        });
    }

    /// A history line for an update that a gate refused before it began
    /// (the worker left as it is): `failed`, from the current digest to `target`.
    pub(super) fn record_refused(&self, kind: Kind, trigger: Trigger, target: &str, why: &str) {
        self.record(HistoryEntry {
            at: self.now(),
            kind,
            from: self.state.current_digest.clone(),
            to: Some(target.to_string()),
            outcome: Outcome::Failed,
            trigger,
            error: Some(why.to_string()),
            downtime_ms: None,
            reason: None,
            user: None,
            marked_bad: None,
            gpu_hold: None,
            changed: Vec::new(),
            spec: None,
        });
    }

    /// The history entry of the update `p`.
    pub(super) fn history(
        &self,
        p: &Pending,
        outcome: Outcome,
        error: Option<String>,
        downtime_ms: Option<u64>,
    ) {
        self.record_since(
            HistoryEntry {
                at: self.now(),
                kind: p.kind,
                from: p.from.clone(),
                to: Some(p.to.clone()),
                outcome,
                trigger: p.trigger,
                error,
                downtime_ms,
                reason: None,
                user: None,
                marked_bad: None,
                gpu_hold: None,
                changed: p.changed.clone(),
                spec: p.to_spec.clone(),
            },
            Some(p.started_at),
        );
    }

    /// Gives a container the worker's restart policy back (`worker.restart`).
    pub(super) async fn restore_restart(&self, id: &str) -> Result<(), UpdateError> {
        self.engine
            .set_restart(id, &self.worker.restart, self.worker.restart_max_retries)
            .await?;
        Ok(())
    }

    /// Stops a container so that neither dockerd nor a reboot brings it back
    /// (restart policy `no` first).
    pub(super) async fn stop_for_good(&self, id: &str) -> Result<(), UpdateError> {
        self.engine.set_restart(id, "no", None).await?;
        self.engine.stop(id, self.worker.stop_timeout).await?;
        Ok(())
    }
}
