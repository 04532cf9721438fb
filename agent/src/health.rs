//! What `agentctl health` reports, looked at now: the worker (what the engine
//! says of its container, its health endpoint, its in-flight jobs), the GPUs
//! and the hub. It runs beside the update loop, never through it, so it
//! answers during an update too.
//!
//! The GPU part reads NVML; the hub part asks the hub what it sees of the
//! worker (`GET /v1/workers/{id}`) and says how the event stream is.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use crate::config::Settings;
use crate::control::api::{Health, PartHealth, Probe, WorkerHealth};
use crate::control::HealthSource;
use crate::docker::{Container, Engine, HealthState};
use crate::gpu::GpuProbe;
use crate::hub::Hub;
use crate::update::View;
use crate::worker::WorkerClient;

/// Answers `GET /v1/health` from the engine and the worker's endpoints.
pub struct Checker<E: Engine> {
    engine: E,
    probe: WorkerClient,
    settings: watch::Receiver<Arc<Settings>>,
    gpu: Option<Arc<dyn GpuProbe>>,
    hub: Option<Arc<Hub>>,
}

impl<E: Engine> Checker<E> {
    pub fn new(
        engine: E,
        settings: watch::Receiver<Arc<Settings>>,
        gpu: Option<Arc<dyn GpuProbe>>,
    ) -> Self {
        Checker {
            engine,
            probe: WorkerClient::new(),
            settings,
            gpu,
            hub: None,
        }
    }

    /// Asks the hub too (what it sees of the worker, and the event stream).
    pub fn with_hub(mut self, hub: Option<Arc<Hub>>) -> Self {
        self.hub = hub;
        self
    }

    pub async fn check(&self, view: &View) -> Health {
        let settings = self.settings.borrow().clone();
        let worker = self.worker(&settings, view).await;
        let gpu = match &self.gpu {
            Some(g) => gpu_now(g.clone(), &settings, view.state.gpu_hold.as_deref()).await,
            None => gpu_off(),
        };
        let hub = match &self.hub {
            Some(h) => hub_now(h, view).await,
            None => hub_part(&settings),
        };
        let verdict = if worker.verdict == "drained" {
            "drained"
        } else if worker.verdict == "healthy"
            && matches!(gpu.verdict.as_str(), "healthy" | "not_configured")
            && hub.verdict != "unhealthy"
        {
            "healthy"
        } else {
            "unhealthy"
        };
        Health {
            verdict: verdict.into(),
            worker,
            gpu,
            hub,
        }
    }

    async fn worker(&self, settings: &Settings, view: &View) -> WorkerHealth {
        let w = &settings.worker;
        let drained = view.state.drained;
        let mut h = WorkerHealth {
            container: Some(w.name.clone()),
            ..WorkerHealth::new("healthy")
        };
        let c = match self.engine.inspect(&w.name).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                h.container = None;
                h.verdict = if drained { "drained" } else { "missing" }.into();
                if !drained {
                    h.problem = Some(format!("no container named {} exists", w.name));
                }
                return h;
            }
            Err(e) => {
                h.verdict = "unknown".into();
                h.problem = Some(crate::error_chain(&e));
                return h;
            }
        };
        h.state = Some(c.status.clone());
        h.digest = c.digest.clone();
        h.restart_count = Some(c.restart_count);
        h.healthcheck = match c.health {
            HealthState::None => None,
            HealthState::Starting => Some("starting".into()),
            HealthState::Healthy => Some("healthy".into()),
            HealthState::Unhealthy => Some("unhealthy".into()),
        };
        if c.running && !c.restarting {
            // Both probes at once: the answer waits for the slower one only.
            let health = async {
                let url = w.health.http.as_ref()?;
                let t0 = Instant::now();
                let r = self.probe.health(url).await;
                Some(Probe {
                    url: url.to_string(),
                    ok: r.is_ok(),
                    latency_ms: t0.elapsed().as_millis() as u64,
                    error: r.err().map(|e| e.to_string()),
                })
            };
            let in_flight = async {
                let url = w.drain.http.as_ref()?;
                self.probe.in_flight(url).await.ok()
            };
            (h.http, h.in_flight) = tokio::join!(health, in_flight);
        }
        let (verdict, problem) = judge(&c, h.http.as_ref(), drained);
        h.verdict = verdict.into();
        h.problem = problem;
        h
    }
}

impl<E: Engine> HealthSource for Checker<E> {
    fn health(&self, view: View) -> Pin<Box<dyn Future<Output = Health> + Send + '_>> {
        Box::pin(async move { self.check(&view).await })
    }
}

/// The worker's verdict and what is wrong, from the engine's view and the probe.
fn judge(c: &Container, http: Option<&Probe>, drained: bool) -> (&'static str, Option<String>) {
    if drained && !c.running {
        return ("drained", None);
    }
    if c.restarting {
        return (
            "unhealthy",
            Some(format!("restarting (restarted {} times)", c.restart_count)),
        );
    }
    if !c.running {
        let why = match (&c.error, c.exit_code) {
            (Some(e), _) => format!("{}: {e}", c.status),
            (None, Some(code)) => format!("{} with code {code}", c.status),
            _ => c.status.clone(),
        };
        return ("unhealthy", Some(format!("not running: {why}")));
    }
    if c.health == HealthState::Unhealthy {
        return (
            "unhealthy",
            Some("its HEALTHCHECK reports unhealthy".into()),
        );
    }
    if let Some(p) = http.filter(|p| !p.ok) {
        let e = p.error.as_deref().unwrap_or("failed");
        return ("unhealthy", Some(format!("health endpoint: {e}")));
    }
    if c.health == HealthState::Starting && http.is_none() {
        return ("starting", Some("its HEALTHCHECK is still starting".into()));
    }
    ("healthy", None)
}

/// Without a probe: GPU checks are off.
fn gpu_off() -> PartHealth {
    PartHealth {
        verdict: "not_configured".into(),
        detail: "gpu.check is off (or worker.gpus = \"none\")".into(),
        data: serde_json::Value::Null,
    }
}

/// Each GPU's readings with its own verdict (`healthy`, `unhealthy` when a
/// problem of it blocks updates, `degraded` when one is only reported).
fn per_gpu(snap: &crate::gpu::Snapshot, a: &crate::gpu::Assessment) -> Vec<serde_json::Value> {
    snap.gpus
        .iter()
        .map(|g| {
            let mine = a.problems.iter().filter(|p| p.gpu_index == Some(g.index));
            let (mut blocks, mut any) = (false, false);
            for p in mine {
                any = true;
                blocks |= p.blocks_update;
            }
            let mut v = serde_json::to_value(g).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                let verdict = match (blocks, any) {
                    (true, _) => "unhealthy",
                    (false, true) => "degraded",
                    _ => "healthy",
                };
                o.insert("verdict".into(), verdict.into());
            }
            v
        })
        .collect()
}

/// How many of the latest XIDs the health answer lists.
const RECENT_XIDS: usize = 20;

/// The GPUs read now through NVML, judged against the config: per GPU the
/// readings and problems with their recommended actions, and the latest XIDs.
async fn gpu_now(probe: Arc<dyn GpuProbe>, settings: &Settings, hold: Option<&str>) -> PartHealth {
    let snap = match crate::gpu::read(probe.clone()).await {
        Ok(s) => s,
        Err(e) => {
            crate::metrics::global().gpus_unreadable();
            return PartHealth {
                verdict: if e.is_no_driver() {
                    "no_driver"
                } else {
                    "unknown"
                }
                .into(),
                detail: e.to_string(),
                data: serde_json::Value::Null,
            };
        }
    };
    let mut xids = probe.xids_since(0);
    let skip = xids.len().saturating_sub(RECENT_XIDS);
    xids.drain(..skip);
    let limits = crate::update::gpu_limits(&settings.gpu);
    // The readings decide now; past XIDs weigh through the updater's hold
    // (which an operator lifts), and are listed.
    let mut a = crate::gpu::assess(&snap, &limits, &[]);
    if let Some(hold) = hold {
        a.healthy = false;
        a.problems.push(crate::gpu::Problem {
            gpu_index: None,
            what: format!("updates are held after a GPU fault: {hold}; agentctl check goes on once it is fixed"),
            blocks_update: true,
            action: crate::gpu::XidAction::Investigate,
        });
    }
    crate::metrics::global().observe_gpus(&snap, &a);
    let detail = if a.problems.is_empty() {
        format!(
            "{} GPUs, driver {}, CUDA {}",
            snap.gpus.len(),
            snap.driver_version,
            snap.cuda_version
                .as_ref()
                .map_or("unknown".into(), |v| v.to_string())
        )
    } else {
        a.problems
            .iter()
            .map(|p| p.what.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    };
    PartHealth {
        verdict: if a.healthy { "healthy" } else { "unhealthy" }.into(),
        detail,
        data: serde_json::json!({
            "driver_version": snap.driver_version,
            "cuda_version": snap.cuda_version.as_ref().map(|v| v.to_string()),
            "gpus": per_gpu(&snap, &a),
            "problems": a.problems,
            "xids": xids,
        }),
    }
}

/// What the hub sees of the worker now, against what runs here.
async fn hub_now(hub: &Hub, view: &View) -> PartHealth {
    // One bounded look: `agentctl health` must answer while the hub hangs.
    let asked = match tokio::time::timeout(std::time::Duration::from_secs(4), hub.worker()).await {
        Ok(r) => r.map_err(|e| crate::error_chain(&e)),
        Err(_) => Err("no answer within 4s".to_string()),
    };
    let st = hub.status();
    let current = view.state.current_digest.as_deref();
    let (verdict, detail, seen) = match asked {
        Err(e) => (
            "unhealthy",
            format!("the hub cannot be asked: {e}"),
            serde_json::Value::Null,
        ),
        Ok(w) => {
            let (verdict, detail) = if view.state.drained {
                (
                    "healthy",
                    "the worker is drained for maintenance".to_string(),
                )
            } else if !w.registered {
                (
                    "degraded",
                    "the hub sees no registered worker for this host".to_string(),
                )
            } else if current.is_some() && w.digest.as_deref() != current {
                (
                    "degraded",
                    format!(
                        "the hub sees the worker registered with {}, but {} runs",
                        w.digest.as_deref().unwrap_or("no digest"),
                        current.unwrap_or("-")
                    ),
                )
            } else {
                (
                    "healthy",
                    match w.in_flight {
                        Some(n) => format!("registered; {n} jobs in flight"),
                        None => "registered".to_string(),
                    },
                )
            };
            (
                verdict,
                detail,
                serde_json::to_value(&w).unwrap_or_default(),
            )
        }
    };
    let detail = if st.events == "connected" {
        detail
    } else {
        format!(
            "{detail}; event stream {}{}",
            st.events,
            st.events_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )
    };
    PartHealth {
        verdict: verdict.into(),
        detail,
        data: serde_json::json!({"worker": seen, "hub": st}),
    }
}

fn hub_part(settings: &Settings) -> PartHealth {
    match &settings.hub {
        None => PartHealth {
            verdict: "not_configured".into(),
            detail: "no [hub] in the config".into(),
            data: serde_json::Value::Null,
        },
        Some(h) => PartHealth {
            verdict: "not_checked".into(),
            detail: format!(
                "hub {} is configured; this version of gpu-agent does not talk to it yet",
                h.url
            ),
            data: serde_json::Value::Null,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> Container {
        Container {
            id: "c1".into(),
            name: "w".into(),
            digest: Some("sha256:a".into()),
            agent: Some("a".into()),
            spec: None,
            running: true,
            restarting: false,
            status: "running".into(),
            exit_code: None,
            restart_count: 0,
            started_at: None,
            health: HealthState::None,
            error: None,
        }
    }

    fn probe(ok: bool) -> Probe {
        Probe {
            url: "http://127.0.0.1:1/health".into(),
            ok,
            latency_ms: 1,
            error: (!ok).then(|| "GET http://127.0.0.1:1/health: answered 503".into()),
        }
    }

    #[test]
    fn the_worker_verdict_names_what_is_wrong() {
        assert_eq!(judge(&running(), None, false), ("healthy", None));
        assert_eq!(judge(&running(), Some(&probe(true)), false).0, "healthy");
        let (v, why) = judge(&running(), Some(&probe(false)), false);
        assert_eq!(v, "unhealthy");
        assert!(why.unwrap().contains("answered 503"));

        let mut exited = running();
        exited.running = false;
        exited.status = "exited".into();
        exited.exit_code = Some(3);
        let (v, why) = judge(&exited, None, false);
        assert_eq!(
            (v, why.as_deref()),
            ("unhealthy", Some("not running: exited with code 3"))
        );
        assert_eq!(judge(&exited, None, true), ("drained", None));

        let mut looping = running();
        looping.restarting = true;
        looping.restart_count = 4;
        assert!(judge(&looping, None, false)
            .1
            .unwrap()
            .contains("restarted 4 times"));

        let mut hc = running();
        hc.health = HealthState::Unhealthy;
        assert_eq!(judge(&hc, None, false).0, "unhealthy");
        hc.health = HealthState::Starting;
        assert_eq!(judge(&hc, None, false).0, "starting");
    }
}
