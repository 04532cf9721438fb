//! Verifying a worker: it runs, does not restart, becomes healthy and stays
//! so; no XID on its GPUs; and, with `hub.verify_registration`, the hub sees
//! it registered with the new digest.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::failpoint;
use super::gpu_gate::xid_failure;
use super::outcome::{Blame, Failure};
use super::phase::Phase;
use super::ports::Hub;
use super::{Event, Updater};
use crate::config::HealthSettings;
use crate::docker::{Container, Engine, HealthState};
use crate::gpu::{Xid, XidClass};

/// How often verification looks at the new worker before it is first healthy.
const VERIFY_POLL_FAST: Duration = Duration::from_millis(100);
/// ... and while it must stay healthy.
const VERIFY_POLL_STABLE: Duration = Duration::from_millis(500);
/// How often the hub is asked whether the new worker has registered.
const REGISTRATION_POLL: Duration = Duration::from_millis(250);

/// What one verification has seen so far.
struct Watch<'a> {
    h: &'a HealthSettings,
    start: Instant,
    first_healthy: Option<Instant>,
    healthy_since: Option<Instant>,
    /// The restart count at the first look.
    restarts: Option<i64>,
    /// The start time at the first look.
    started: Option<Option<String>>,
    last_problem: String,
    /// The engine was unreachable or restarted the worker: a worker that
    /// then is not running is not blamed.
    engine_trouble: bool,
}

impl<'a> Watch<'a> {
    fn new(h: &'a HealthSettings) -> Self {
        Watch {
            h,
            start: Instant::now(),
            first_healthy: None,
            healthy_since: None,
            restarts: None,
            started: None,
            last_problem: String::from("no answer yet"),
            engine_trouble: false,
        }
    }

    /// Unobserved time is not stable time: the worker must be stable again.
    fn unobserved(&mut self, why: &str) {
        if self.healthy_since.take().is_some() {
            warn!(problem = %self.last_problem, "{why}; the worker must be stable again");
        }
    }

    /// Started again with no restart of its own: the engine restarted (and
    /// took the worker down) between two looks.
    fn note_start(&mut self, c: &Container) {
        let first = self.started.get_or_insert_with(|| c.started_at.clone());
        if c.started_at.is_some() && *first != c.started_at {
            *first = c.started_at.clone();
            self.engine_trouble = true;
            self.unobserved("the engine restarted the new worker during the verification");
        }
    }

    /// One look found the worker `healthy` or not. `Some`: the verification
    /// is over (verified since, or failed).
    fn judge(&mut self, healthy: bool) -> Option<Result<Instant, Failure>> {
        let now = Instant::now();
        if healthy {
            self.first_healthy.get_or_insert(now);
            let since = *self.healthy_since.get_or_insert(now);
            if now.duration_since(since) >= self.h.stable_for {
                info!(
                    after_ms = now.duration_since(self.start).as_millis() as u64,
                    "new worker verified"
                );
                return Some(Ok(self.first_healthy.unwrap_or(now)));
            }
        } else if let Some(since) = self.healthy_since.take() {
            warn!(healthy_for_ms = now.duration_since(since).as_millis() as u64, problem = %self.last_problem,
                  "the new worker was healthy, then not");
        }
        if self.healthy_since.is_none() && now.duration_since(self.start) >= self.h.timeout {
            let within = humantime::format_duration(self.h.timeout);
            let problem = &self.last_problem;
            return Some(Err(Failure::image(if self.first_healthy.is_some() {
                format!("the new worker was healthy, then not, and did not recover within {within}: {problem}")
            } else {
                format!("the new worker was not healthy within {within}: {problem}")
            })));
        }
        None
    }

    fn pause(&self) -> Duration {
        if self.healthy_since.is_some() {
            VERIFY_POLL_STABLE
        } else {
            VERIFY_POLL_FAST
        }
    }
}

/// How long the health read after a check may take (an engine inspect and
/// one probe of the worker).
const HEALTH_READ_LIMIT: Duration = Duration::from_secs(10);

impl<E: Engine> Updater<E> {
    /// The hub, when it must see a new worker registered (`hub.verify_registration`).
    fn registration_hub(&self) -> Option<&Arc<dyn Hub>> {
        self.hub
            .as_ref()
            .filter(|h| h.settings().verify_registration)
    }

    /// With `hub.verify_registration`, an update starts only while the hub
    /// answers: a new worker it cannot verify would be rolled back anyway.
    pub(super) async fn hub_preflight(&self) -> Result<(), String> {
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
    pub(super) async fn verify_registration(&self, digest: &str) -> Result<(), Failure> {
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
                return Err(Failure::stopped());
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

    /// Verifies the worker under the primary name: it runs, does not restart,
    /// becomes healthy within `health.timeout` and stays so for `stable_for`.
    /// Returns when it was first seen healthy.
    /// With `xid_base`, an XID on the worker's GPUs after that seq fails it:
    /// application-class blames the image, hardware-class does not.
    pub(super) async fn verify_primary(&self, xid_base: Option<u64>) -> Result<Instant, Failure> {
        let name = self.name().to_string();
        let mut w = Watch::new(&self.worker.health);
        loop {
            if self.stop_now.is_cancelled() {
                return Err(Failure::stopped());
            }
            if let Some(f) = xid_base.and_then(|base| self.xid_since(base)) {
                return Err(f);
            }
            let c = match self.engine.inspect(&name).await {
                Ok(Some(c)) => c,
                Ok(None) => {
                    return Err(Failure::new(
                        format!("container {name} vanished"),
                        Blame::Strike,
                    ))
                }
                // The engine being slow or restarting is not the worker's fault:
                // keep looking until the deadline.
                Err(e) if e.is_engine_down() => {
                    w.last_problem = crate::error_chain(&e);
                    w.engine_trouble = true;
                    // The engine may have taken the worker down with it (a dockerd restart).
                    w.unobserved("the engine cannot be asked during the verification");
                    if w.start.elapsed() >= w.h.timeout + w.h.stable_for {
                        return Err(Failure::new(
                            format!("could not verify the new worker: {}", w.last_problem),
                            Blame::None,
                        ));
                    }
                    tokio::time::sleep(VERIFY_POLL_STABLE).await;
                    continue;
                }
                Err(e) => return Err(Failure::from_error(&e.into())),
            };
            let base = *w.restarts.get_or_insert(c.restart_count);
            if !c.running || c.restarting || c.restart_count > base {
                return Err(self.exited(&c, w.engine_trouble).await);
            }
            w.note_start(&c);
            let healthy = self.healthy(&c, &mut w.last_problem).await?;
            if let Some(done) = w.judge(healthy) {
                return done;
            }
            // An update's verification (the rollback's has no XID base).
            if healthy && xid_base.is_some() {
                failpoint::hit("during-verify").await;
            }
            tokio::select! {
                _ = tokio::time::sleep(w.pause()) => {}
                _ = self.stop_now.cancelled() => return Err(Failure::stopped()),
            }
        }
    }

    /// The worst XID on the worker's GPUs since `base`, as a failure: a
    /// hardware fault is never blamed on the image; XID 45 alone is a
    /// cleanup after another error or a kill.
    fn xid_since(&self, base: u64) -> Option<Failure> {
        let xids = self.gpu.as_ref()?.xids_since(base);
        let mine: Vec<&Xid> = xids.iter().filter(|x| self.on_worker_gpus(x)).collect();
        mine.iter()
            .find(|x| x.class == XidClass::Hardware)
            .or_else(|| {
                mine.iter()
                    .find(|x| x.class == XidClass::Application && x.code != 45)
            })
            .or_else(|| mine.iter().find(|x| x.class == XidClass::Ambiguous))
            .map(|x| xid_failure(x))
    }

    /// The worker stopped or restarted: why, with its last lines of output.
    /// An engine that went away takes its containers with it (no blame).
    async fn exited(&self, c: &Container, engine_trouble: bool) -> Failure {
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
        let blame = if engine_trouble {
            Blame::None
        } else {
            Blame::Image
        };
        Failure::new(error, blame)
    }

    /// After a check, at rest and not drained: the worker's health, read
    /// once, so `gpu_agent_worker_healthy` follows a worker that stops
    /// answering (or crash-loops, or stops) between updates, not only at a
    /// verification. Bounded: an engine or worker that hangs leaves the last
    /// reading as it was.
    pub(super) async fn read_worker_health(&self) {
        if self.machine.phase() != Phase::Idle || self.state.drained || self.state.pending.is_some()
        {
            return;
        }
        let read = async {
            match self.primary_running().await {
                Ok(Some(c)) if !c.restarting => Some(matches!(
                    self.healthy(&c, &mut String::new()).await,
                    Ok(true)
                )),
                Ok(_) => Some(false),
                // The engine did not answer: no reading.
                Err(_) => None,
            }
        };
        if let Ok(Some(healthy)) = tokio::time::timeout(HEALTH_READ_LIMIT, read).await {
            self.emit(Event::WorkerHealth(healthy));
        }
    }

    /// Whether the worker is healthy now: its `health.http` answers 2xx, else
    /// its HEALTHCHECK says so (none counts as healthy). A HEALTHCHECK that
    /// reports unhealthy fails it at once.
    async fn healthy(&self, c: &Container, last_problem: &mut String) -> Result<bool, Failure> {
        if let Some(url) = &self.worker.health.http {
            return Ok(match self.probe.health(url).await {
                Ok(()) => true,
                Err(e) => {
                    *last_problem = e.to_string();
                    false
                }
            });
        }
        match c.health {
            HealthState::None | HealthState::Healthy => Ok(true),
            HealthState::Starting => {
                *last_problem = "HEALTHCHECK still starting".into();
                Ok(false)
            }
            HealthState::Unhealthy => Err(Failure::image(
                "the new worker's HEALTHCHECK reports unhealthy".into(),
            )),
        }
    }
}
