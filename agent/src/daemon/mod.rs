//! The daemon: starts the subsystems, reconciles after a restart, then runs
//! the poll loop until SIGTERM or SIGINT; SIGHUP reloads the config. Stopping the agent never stops the
//! worker: an update in progress is brought to a safe point first (a drain
//! wait is abandoned with the old worker kept; a swap finishes its verify).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rand::Rng;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

mod fleet;
mod systemd;

use crate::config::Settings;
use crate::control::api::ActionResult;
use crate::control::{self, Action, ControlState, DryRunJob, Job};
use crate::docker::BollardEngine;
use crate::registry::{ClientOptions, RegistryClient};
use crate::update::{CheckOutcome, Ports, Trigger, UpdateError, Updater};
use time::OffsetDateTime;
use tokio::sync::mpsc;

/// First retry delay after a failed check or an unreachable engine.
const RETRY_BASE: Duration = Duration::from_secs(2);
/// Longest wait between retries of a failing check (never above the poll interval).
const RETRY_CAP: Duration = Duration::from_secs(300);
/// How long start-up waits for NVML to load before it goes on without it.
const NVML_START_WAIT: Duration = Duration::from_secs(5);

/// Exponential backoff with full jitter: a random delay in [base·2ⁿ/2, base·2ⁿ], capped.
pub fn backoff(failures: u32, cap: Duration) -> Duration {
    let exp = RETRY_BASE.saturating_mul(1u32 << failures.min(16).saturating_sub(1));
    let top = exp.min(cap).max(Duration::from_millis(1));
    let low = top / 2;
    low + rand::rng().random_range(Duration::ZERO..=top - low)
}

fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        Duration::ZERO
    } else {
        rand::rng().random_range(Duration::ZERO..=max)
    }
}

/// Runs the agent until it is told to stop. `config` is the main config file,
/// read again on SIGHUP.
pub async fn run(settings: Settings, config: PathBuf) -> anyhow::Result<()> {
    let mut settings = Arc::new(settings);
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let shutdown = CancellationToken::new();
    let stop_now = CancellationToken::new();
    spawn_signal_handler(
        shutdown.clone(),
        stop_now.clone(),
        settings.agent.stop_budget,
    )?;
    info!(
        agent_id = %settings.agent.id,
        image = %settings.image.name,
        policy = %settings.image.policy,
        worker = %settings.worker.name,
        docker = %settings.docker.host,
        "gpu-agent starting"
    );

    let registry = registry_client(&settings)?;
    let (settings_tx, settings_rx) = tokio::sync::watch::channel(settings.clone());

    // Nothing below waits for the engine, the GPUs or the hub: the control
    // socket, the metrics and READY=1 come up within seconds whatever their
    // state (a package upgrade's `try-restart` must not hang); the loop then
    // converges, saying in status what it waits for until it can.
    let engine = BollardEngine::new(&settings.docker.host, &settings.agent.id)
        .context("setting up the docker engine client (docker.host)")?;
    engine.set_pull_timeout(settings.image.pull_timeout);
    let engine_handle = engine.clone();
    let gpu = start_gpu(&settings).await;
    let hub = crate::hub::Hub::from_settings(&settings).context("setting up the hub client")?;
    let checker = crate::health::Checker::new(engine.clone(), settings_rx.clone(), gpu.clone())
        .with_hub(hub.clone());
    let mut updater = Updater::new(
        engine,
        Ports::real(registry, &settings),
        settings.clone(),
        shutdown.clone(),
    )
    .context("opening the state folder")?;
    updater
        .journal()
        .set_history_max(settings.agent.history_max);
    updater.set_stop_token(stop_now);
    if let Some(g) = gpu {
        updater.set_gpu(g);
    }
    // The update publishes what happened; the metrics and the hub's
    // reporter subscribe.
    updater.subscribe(crate::metrics::subscriber(settings.worker.name.clone()));
    if let Some(h) = &hub {
        updater.subscribe(h.subscriber());
    }
    let notifier = Arc::new(std::sync::Mutex::new(Some(crate::notify::Notifier::spawn(
        &settings,
    ))));
    updater.subscribe(notify_subscriber(notifier.clone()));
    let metrics = crate::metrics::global();
    metrics.set_hub_configured(hub.is_some());
    match updater.journal().history() {
        Ok(h) => metrics.seed_history(h.iter()),
        Err(e) => warn!(error = %e, "could not read the history for the metrics"),
    }
    updater.set_hub(hub.clone().map(|h| h as Arc<dyn crate::update::ports::Hub>));
    // The fleet group: a slot before the worker is disrupted (connects in
    // the background; until etcd answers, no update starts).
    let gate = fleet::start(&settings).await?;
    let group: Arc<dyn crate::update::ports::Fleet> = match &gate {
        Some(g) => g.clone(),
        None => Arc::new(crate::fleet::LoneHost),
    };
    updater.set_fleet(group.clone());
    let last_event = fleet::LastEvent::default();
    updater.subscribe(fleet::last_event_subscriber(last_event.clone()));

    // The control socket answers status at once; actions queue for the loop below.
    let (jobs_tx, mut jobs) = mpsc::channel::<Job>(8);
    let (dry_runs_tx, mut dry_runs) = mpsc::channel::<DryRunJob>(8);
    let listener = control::bind(&settings.agent.control_socket).await?;
    info!(socket = %settings.agent.control_socket.display(), "control socket ready");
    let control = tokio::spawn(control::serve(
        listener,
        ControlState {
            settings: settings_rx.clone(),
            view: updater.watch(),
            jobs: jobs_tx,
            dry_runs: dry_runs_tx,
            journal: updater.journal().clone(),
            busy: Default::default(),
            drain_cancel: updater.drain_cancel(),
            health: Arc::new(checker),
            hub: hub.clone(),
            fleet: gate
                .clone()
                .map(|g| g as Arc<dyn crate::update::ports::Fleet>),
        },
        shutdown.clone(),
    ));
    if let Some(g) = &gate {
        tokio::spawn(fleet::report(
            g.clone(),
            updater.watch(),
            settings.gpu.check,
            last_event,
            shutdown.clone(),
        ));
    }

    if let Some(addr) = settings.agent.metrics_listen {
        let (view, stop) = (updater.watch(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(addr, view, stop).await {
                error!(listen = %addr, error = %e, "metrics endpoint failed (agent.metrics_listen); the agent goes on without it");
            }
        });
    }

    // systemd: a status line on every phase change, watchdog pings from the
    // loop while it advances.
    let mut watchdog =
        systemd::Watchdog::from_env(updater.watch(), systemd::Bounds::from_settings(&settings));
    if let Some(every) = watchdog.interval() {
        info!(every = ?every, bounds = ?watchdog.bounds(), "systemd watchdog enabled");
    }
    tokio::spawn(publish_status(updater.watch()));

    // The hub's event stream (nudges) and reporter run beside the loop.
    let nudges = crate::hub::Nudges::new();
    let mut reporter = None;
    let reports_done = CancellationToken::new();
    if let Some(h) = &hub {
        info!(url = %h.settings().url, desired_from_hub = h.settings().desired_from_hub,
              verify_registration = h.settings().verify_registration, "hub configured");
        reporter = h.start(
            updater.watch(),
            settings_rx.clone(),
            nudges.clone(),
            shutdown.clone(),
            reports_done.clone(),
        );
    }

    systemd::ready();

    // Converge first: finish or undo whatever a crash interrupted. While that
    // cannot be done (the engine is down, the worker's name is held by a
    // container that is not ours), status says why and the loop tries again
    // with backoff; actions and signals are taken meanwhile.
    let mut failures = 0u32;
    let mut converged = false;
    let mut deadline = tokio::time::Instant::now();
    match watchdog.alive(updater.reconcile()).await {
        Ok(()) => converged = true,
        Err(e) => {
            failures += 1;
            let wait = backoff(failures, RETRY_CAP.min(settings.image.poll_interval));
            waiting(&mut updater, &e, wait);
            deadline += wait;
        }
    }
    let mut trigger = Trigger::Startup;
    if converged {
        failures = 0;
    }
    updater.set_next_check(Some(
        OffsetDateTime::now_utc() + deadline.saturating_duration_since(tokio::time::Instant::now()),
    ));
    loop {
        // Everything the loop reacts to arrives as one Event; each is handled
        // to its end before the next is taken.
        // Biased: a stop goes before anything else that is ready.
        let event = tokio::select! {
            biased;
            _ = shutdown.cancelled() => Event::Stop,
            _ = tokio::time::sleep_until(deadline) => Event::Tick,
            _ = watchdog.due() => Event::Watchdog,
            // Before the tick: a dry run asked for at rest describes the
            // agent at rest, not after the poll that fell due meanwhile.
            Some(job) = dry_runs.recv() => Event::DryRun(job),
            _ = hup.recv() => Event::Reload,
            Some(job) = jobs.recv() => Event::Job(job),
            nudge = nudges.recv() => Event::Nudge(nudge),
            _ = group.changed() => Event::Fleet,
        };
        match event {
            Event::Stop => break,
            Event::Watchdog => watchdog.ping(),
            Event::Reload => {
                if let Some(new) = reload(&config, &settings) {
                    match registry_client(&new) {
                        Ok(registry) => {
                            renew_notifier(&notifier, &settings, &new);
                            engine_handle.set_pull_timeout(new.image.pull_timeout);
                            updater.journal().set_history_max(new.agent.history_max);
                            watchdog.set_bounds(systemd::Bounds::from_settings(&new));
                            updater.reload(new.clone(), Ports::real(registry, &new));
                            settings_tx.send_replace(new.clone());
                            settings = new;
                            // New worker settings are rolled out now (until
                            // the first convergence, the tick's check does it).
                            if converged {
                                match watchdog.alive(updater.apply_config()).await {
                                    Ok(outcome) => log_outcome(&outcome),
                                    Err(e) => {
                                        updater.note_error(&e);
                                        error!(error = %crate::error_chain(&e), "rolling out the reloaded worker settings failed; the worker is left as it is; the next poll tries again")
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            error!(error = %format!("{e:#}"), "config reload refused; keeping the running config")
                        }
                    }
                }
            }
            Event::Job(job) => {
                // An operator's drain may wait longer than worker.drain.timeout.
                let bounds = match &job.action {
                    Action::Drain {
                        timeout: Some(t), ..
                    } => watchdog.bounds().with_drain(*t),
                    _ => watchdog.bounds(),
                };
                watchdog
                    .alive_within(run_job(&mut updater, job), bounds)
                    .await
            }
            Event::DryRun(job) => {
                // The caller gave up (an update started before this turn).
                if !job.reply.is_closed() {
                    let report = watchdog.alive(updater.dry_run(&job.of)).await;
                    let _ = job.reply.send(report);
                }
            }
            Event::Nudge(nudge) => {
                // Nudges that came during an update are one check: the
                // newest one (`Nudges` keeps only it). The check begins with
                // recovery (an update an error left midway is resumed, else
                // the worker is made to run).
                match watchdog.alive(updater.nudged(&nudge)).await {
                    Ok(outcome) => log_outcome(&outcome),
                    Err(e) => {
                        updater.note_error(&e);
                        error!(error = %crate::error_chain(&e), "check after a nudge failed; the worker is left as it is; the next poll tries again")
                    }
                }
                if let Some(h) = &hub {
                    h.heartbeat();
                }
            }
            Event::Fleet => {
                // The group changed (a rollout, a slot freed, a canary
                // verified, etcd back): check now. Until the first
                // convergence, the tick's retries go on.
                if converged {
                    match watchdog.alive(updater.check(Trigger::Poll)).await {
                        Ok(outcome) => log_outcome(&outcome),
                        Err(e) => {
                            updater.note_error(&e);
                            error!(error = %crate::error_chain(&e), "check after a fleet change failed; the worker is left as it is; the next poll tries again")
                        }
                    }
                }
            }
            Event::Tick => {
                let poll = settings.image.poll_interval;
                if !converged {
                    // Still waiting for what stopped the first convergence.
                    match watchdog.alive(updater.reconcile()).await {
                        Ok(()) => {
                            converged = true;
                            failures = 0;
                            info!("the worker is reconciled with the journal; going on");
                        }
                        Err(e) => {
                            failures += 1;
                            let wait = backoff(failures, RETRY_CAP.min(poll));
                            waiting(&mut updater, &e, wait);
                            deadline = tokio::time::Instant::now() + wait;
                            continue;
                        }
                    }
                }
                // The check begins with recovery (an update an error left
                // midway is resumed, else the worker is made to run).
                let wait = match watchdog.alive(updater.check(trigger)).await {
                    Ok(outcome) => {
                        failures = 0;
                        log_outcome(&outcome);
                        poll + jitter(settings.image.poll_jitter)
                    }
                    Err(e) => {
                        updater.note_error(&e);
                        failures += 1;
                        let wait = backoff(failures, RETRY_CAP.min(poll))
                            + jitter(settings.image.poll_jitter);
                        error!(error = %crate::error_chain(&e), attempt = failures, retry_in = ?wait, "check failed; the worker is left as it is");
                        wait
                    }
                };
                trigger = Trigger::Poll;
                if let Some(h) = &hub {
                    h.heartbeat();
                }
                deadline = tokio::time::Instant::now() + wait;
                updater.set_next_check(Some(OffsetDateTime::now_utc() + wait));
            }
        }
        if shutdown.is_cancelled() {
            break;
        }
    }
    systemd::stopping();
    // Webhooks get what is queued (bounded).
    let last = notifier.lock().ok().and_then(|mut n| n.take());
    if let Some(n) = last {
        n.shutdown(Duration::from_secs(5)).await;
    }
    // The hub hears the last events (bounded by hub::REPORT_FLUSH).
    reports_done.cancel();
    if let Some(r) = reporter {
        let _ = tokio::time::timeout(crate::hub::REPORT_FLUSH + Duration::from_secs(1), r).await;
    }
    // Actions still queued are answered "stopped" (their senders go with the queue).
    drop(jobs);
    if tokio::time::timeout(Duration::from_secs(5), control)
        .await
        .is_err()
    {
        warn!("the control socket did not close within 5 s; leaving it");
    }
    if let Err(e) = std::fs::remove_file(&settings.agent.control_socket) {
        debug!(error = %e, "removing the control socket");
    }
    info!("gpu-agent stopping; the worker keeps running");
    Ok(())
}

/// The webhooks (`[[notify]]`) as a subscriber of the update's events: each
/// history entry is queued for them (never waiting).
fn notify_subscriber(
    notifier: Arc<std::sync::Mutex<Option<crate::notify::Notifier>>>,
) -> crate::update::Subscriber {
    Box::new(move |e| {
        if let crate::update::Event::History { entry, .. } = e {
            if let Some(n) = notifier.lock().ok().as_ref().and_then(|n| n.as_ref()) {
                n.send(entry);
            }
        }
    })
}

/// A reload that changes the webhooks (or what their messages name) starts
/// new ones; the old ones send what they have queued (within 30 s).
fn renew_notifier(
    notifier: &std::sync::Mutex<Option<crate::notify::Notifier>>,
    old: &Settings,
    new: &Settings,
) {
    let same = old.notify == new.notify
        && old.agent.id == new.agent.id
        && old.worker.name == new.worker.name
        && old.image.name == new.image.name;
    if same {
        return;
    }
    let fresh = crate::notify::Notifier::spawn(new);
    if let Some(previous) = notifier.lock().ok().and_then(|mut n| n.replace(fresh)) {
        tokio::spawn(previous.shutdown(Duration::from_secs(30)));
    }
    info!(webhooks = new.notify.len(), "notifications reloaded");
}

/// What the daemon loop reacts to.
enum Event {
    /// The next check is due (poll interval plus jitter, or a retry's backoff).
    Tick,
    /// SIGHUP: read the config again.
    Reload,
    /// An operator's action from the control socket.
    Job(Job),
    /// A dry run from the control socket (`updater.dry_run`, changes nothing).
    DryRun(DryRunJob),
    /// SIGTERM or SIGINT.
    Stop,
    /// systemd's watchdog wants its ping (the loop is alive to take it).
    Watchdog,
    /// The hub asks for a check now (a digest, when the nudge names one).
    Nudge(hub_client::Nudge),
    /// The fleet group changed in a way a waiting host cares about.
    Fleet,
}

/// Tells systemd what the agent does, on every phase change.
async fn publish_status(mut view: tokio::sync::watch::Receiver<crate::update::View>) {
    let mut last = String::new();
    loop {
        let line = {
            let v = view.borrow_and_update();
            let short = |d: &Option<String>| {
                d.as_deref()
                    .map(|d| {
                        d.trim_start_matches("sha256:")
                            .chars()
                            .take(12)
                            .collect::<String>()
                    })
                    .unwrap_or_else(|| "none".into())
            };
            match &v.state.pending {
                Some(p) => format!(
                    "{}: {} -> {}",
                    v.phase,
                    short(&p.from),
                    short(&Some(p.to.clone()))
                ),
                None => format!("{}; worker {}", v.phase, short(&v.state.current_digest)),
            }
        };
        if line != last {
            systemd::status(&line);
            last = line;
        }
        if view.changed().await.is_err() {
            return;
        }
    }
}

/// The first convergence failed: status and the log say what the agent
/// waits for (the engine, a container holding the worker's name, ...).
fn waiting<E: crate::docker::Engine>(
    updater: &mut Updater<E>,
    e: &UpdateError,
    retry_in: Duration,
) {
    updater.note_error(e);
    updater.set_next_check(Some(OffsetDateTime::now_utc() + retry_in));
    let what = match e {
        UpdateError::Engine(e) if e.is_engine_down() => "the docker engine",
        UpdateError::NameTaken { .. } => "the worker's name to be free",
        _ => "the worker to be reconciled with the journal",
    };
    warn!(error = %crate::error_chain(e), retry_in = ?retry_in,
          "waiting for {what}; the agent goes on by itself once it can");
}

fn log_outcome(outcome: &CheckOutcome) {
    match outcome {
        CheckOutcome::UpToDate => {}
        CheckOutcome::Updated(d) => info!(digest = %d, "update done"),
        CheckOutcome::SkippedBad(d) => {
            info!(digest = %d, "the target digest is marked bad; waiting for a new one")
        }
        CheckOutcome::Held(why) => info!(reason = why, "updates held"),
        CheckOutcome::Deferred(why) => info!(reason = %why, "not tried again yet"),
        CheckOutcome::RolledBack { target, error } => {
            warn!(digest = %target, error = %error, "update rolled back")
        }
        CheckOutcome::Aborted(why) => warn!(reason = %why, "aborted"),
        CheckOutcome::Failed(why) => error!(reason = %why, "failed"),
        CheckOutcome::Drained => info!("drained for maintenance; updates are held"),
        CheckOutcome::Undrained => info!("undrained; updates resume"),
        CheckOutcome::Unpinned => info!("unpinned; checks follow the registry again"),
        CheckOutcome::Suspended(why) => warn!(reason = %why, "update suspended"),
    }
}

/// The answer agentctl gets for an action; `current` is the digest the
/// worker runs after it.
fn action_result(r: Result<CheckOutcome, UpdateError>, current: Option<String>) -> ActionResult {
    let (outcome, digest, error) = match r {
        Ok(CheckOutcome::UpToDate) => ("up_to_date", current, None),
        Ok(CheckOutcome::Updated(d)) => ("updated", Some(d), None),
        Ok(CheckOutcome::SkippedBad(d)) => ("skipped_bad", Some(d), None),
        Ok(CheckOutcome::Held(why)) => ("held", current, Some(why.to_string())),
        Ok(CheckOutcome::Deferred(why)) => ("deferred", current, Some(why)),
        Ok(CheckOutcome::RolledBack { target, error }) => {
            ("rolled_back", Some(target), Some(error))
        }
        Ok(CheckOutcome::Aborted(why)) => ("aborted", None, Some(why)),
        Ok(CheckOutcome::Failed(why)) => ("failed", None, Some(why)),
        Ok(CheckOutcome::Drained) => ("drained", current, None),
        Ok(CheckOutcome::Undrained) => ("undrained", current, None),
        Ok(CheckOutcome::Unpinned) => ("unpinned", current, None),
        Ok(CheckOutcome::Suspended(why)) => ("suspended", None, Some(why)),
        Err(e) => ("failed", None, Some(crate::error_chain(&e))),
    };
    ActionResult {
        outcome: outcome.to_string(),
        digest,
        error,
    }
}

/// Runs an action asked for on the control socket.
async fn run_job<E: crate::docker::Engine>(updater: &mut Updater<E>, job: Job) {
    let Job {
        action,
        reply,
        ticket,
        user,
    } = job;
    info!(action = ?action, user = user.as_deref().unwrap_or("-"), "action asked for on the control socket");
    updater.set_actor(user);
    // Each action begins with recovery (an update an error left midway is
    // resumed first), except undrain (recovery would resume the drain it
    // ends) and unpin (it changes no container).
    let r = match action {
        Action::Check => updater.check(Trigger::Cli).await,
        Action::Update { digest } => match updater.forgive(&digest) {
            Ok(()) => updater.update_to(&digest, Trigger::Cli).await,
            Err(e) => Err(e),
        },
        Action::Drain { reason, timeout } => updater.drain_for_maintenance(reason, timeout).await,
        Action::Undrain => updater.undrain().await,
        Action::Rollback => updater.rollback_to_previous().await,
        Action::Pin { reference } => updater.pin(&reference).await,
        Action::Unpin => updater.unpin(),
    };
    match &r {
        Ok(o) => log_outcome(o),
        Err(e) => {
            updater.note_error(e);
            error!(error = %crate::error_chain(e), "action failed")
        }
    }
    updater.set_actor(None);
    drop(ticket);
    let _ = reply.send(action_result(r, updater.state().current_digest.clone()));
}

/// The GPU probe when `gpu.check` is on. NVML is loaded now (on a blocking
/// thread); no driver is a state the gate reports, not a reason to stop.
async fn start_gpu(settings: &Settings) -> Option<Arc<dyn crate::gpu::GpuProbe>> {
    if !settings.gpu.check {
        info!("GPU checks are off (gpu.check = false, or worker.gpus = \"none\")");
        return None;
    }
    let probe = Arc::new(crate::gpu::NvmlProbe::new());
    let p = probe.clone();
    // NVML's init can block on a GPU that fell off the bus: start-up does not
    // wait for it (each reading has its own deadline, gpu::SNAPSHOT_DEADLINE).
    // A thread of its own (not the runtime's blocking pool, which a
    // stopping runtime waits for).
    let (tx, loading) = tokio::sync::oneshot::channel();
    if let Err(e) = std::thread::Builder::new()
        .name("nvml-start".into())
        .spawn(move || {
            let _ = tx.send(p.start());
        })
    {
        warn!(error = %e, "loading NVML");
    }
    match tokio::time::timeout(NVML_START_WAIT, loading).await {
        Ok(Ok(Ok(()))) => info!("NVML loaded; watching for XID errors"),
        Ok(Ok(Err(e))) => {
            warn!(error = %e, "GPU checks cannot run yet: updates wait until they can (gpu.check = false turns the GPU gate off)")
        }
        Ok(Err(e)) => warn!(error = %e, "loading NVML"),
        Err(_) => {
            warn!(waited = ?NVML_START_WAIT, "NVML has not loaded yet (a GPU that does not answer?); starting without waiting for it: updates wait until the GPUs can be read")
        }
    }
    Some(probe)
}

fn registry_client(settings: &Settings) -> anyhow::Result<RegistryClient> {
    #[cfg_attr(not(feature = "failpoints"), allow(unused_mut))]
    let mut opts = ClientOptions {
        insecure: settings.image.insecure,
        auth_file: settings.image.auth_file.clone(),
        extra_roots: match &settings.agent.ca_file {
            Some(p) => crate::config::read_ca_file(p)
                .map_err(|why| anyhow::anyhow!("agent.ca_file: {why}"))?,
            None => Vec::new(),
        },
        on_answer: Some(crate::registry::AnswerObserver(Arc::new(
            crate::metrics::registry_request,
        ))),
        ..ClientOptions::default()
    };
    // Test builds only: a registry slower than the request timeout can be
    // shown without waiting 4 x 30 s (agent/tests/faults.rs).
    #[cfg(feature = "failpoints")]
    if let Some(secs) = std::env::var("GPU_AGENT_TEST_REGISTRY_TIMEOUT_S")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        opts.request_timeout = std::time::Duration::from_secs(secs);
    }
    RegistryClient::new(opts).context("building the registry client")
}

/// Reads the config again. A config that does not load, or that changes what
/// only a restart can change, is refused with a log line and the running one kept.
fn reload(path: &Path, running: &Settings) -> Option<Arc<Settings>> {
    info!(config = %path.display(), "SIGHUP: reloading the config");
    let new = match crate::config::load(path) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "config reload refused; keeping the running config");
            return None;
        }
    };
    let fixed = [
        ("agent.id", new.agent.id != running.agent.id),
        (
            "agent.state_dir",
            new.agent.state_dir != running.agent.state_dir,
        ),
        ("docker.host", new.docker.host != running.docker.host),
        // The hub's client and tasks are set up once, at start.
        ("hub", new.hub != running.hub),
        // So is the fleet gate (its session holds the host's lease).
        ("fleet", new.fleet != running.fleet),
    ];
    if let Some((key, _)) = fixed.iter().find(|(_, changed)| *changed) {
        error!(key, "config reload refused: this key changes only with a restart; keeping the running config");
        return None;
    }
    // Applied with the rest, but these listeners are bound once, at start.
    if new.agent.control_socket != running.agent.control_socket {
        warn!(key = "agent.control_socket", running = %running.agent.control_socket.display(),
              "changes only with a restart: the control socket stays where it is until then");
    }
    if new.agent.metrics_listen != running.agent.metrics_listen {
        warn!(key = "agent.metrics_listen", running = ?running.agent.metrics_listen,
              "changes only with a restart: the metrics endpoint stays where it is until then");
    }
    info!(image = %new.image.name, policy = %new.image.policy,
          "config reloaded; a change of the worker's container settings is rolled out now (trigger config), the rest applies from the next check");
    Some(Arc::new(new))
}

/// SIGTERM or SIGINT: stop at the next safe point. A pull or a drain wait
/// ends at once (the old worker keeps serving); a swap goes on to verify the
/// new worker for at most `budget`, then `stop_now` leaves the verification to
/// the journal. A second signal cancels `stop_now` at once (an engine call
/// under way still ends first: a stop within `stop_timeout`).
fn spawn_signal_handler(
    shutdown: CancellationToken,
    stop_now: CancellationToken,
    budget: Duration,
) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!(signal = "SIGTERM", budget = ?budget, "asked to stop; an update in progress is brought to a safe point first"),
            _ = int.recv() => info!(signal = "SIGINT", budget = ?budget, "asked to stop; an update in progress is brought to a safe point first"),
        }
        shutdown.cancel();
        tokio::select! {
            _ = tokio::time::sleep(budget) => info!("stop budget spent; leaving any verification to the next start"),
            _ = term.recv() => info!(signal = "SIGTERM", "asked again: stopping now"),
            _ = int.recv() => info!(signal = "SIGINT", "asked again: stopping now"),
        }
        stop_now.cancel();
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        for _ in 0..100 {
            let b1 = backoff(1, RETRY_CAP);
            assert!(
                b1 >= Duration::from_secs(1) && b1 <= Duration::from_secs(2),
                "{b1:?}"
            );
            let b4 = backoff(4, RETRY_CAP);
            assert!(
                b4 >= Duration::from_secs(8) && b4 <= Duration::from_secs(16),
                "{b4:?}"
            );
            let capped = backoff(30, Duration::from_secs(5));
            assert!(capped <= Duration::from_secs(5) && capped >= Duration::from_millis(2500));
        }
        let spread: std::collections::HashSet<_> = (0..20).map(|_| backoff(3, RETRY_CAP)).collect();
        assert!(spread.len() > 1, "backoff is jittered");
    }
}
