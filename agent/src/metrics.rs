//! Prometheus metrics (prometheus-client), served as OpenMetrics text at
//! `http://<agent.metrics_listen>/metrics` when that key is set.
//!
//! Names are `gpu_agent_<subsystem>_<name>`. Counters and histograms are fed
//! as things happen (a history entry, a registry answer); the gauges that
//! describe the agent now (phase, digest, drain, pin, last check) are set
//! from the updater's published view at each scrape, so they are never stale.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `gpu_agent_update_total` | counter | `kind` (update, rollback, pin, drain, ...), `outcome` |
//! | `gpu_agent_update_duration_seconds` | histogram | `kind`: from the start of an update, rollback or pin to its end |
//! | `gpu_agent_update_downtime_seconds` | histogram | old worker stopped → new worker healthy |
//! | `gpu_agent_update_phase` | gauge | `phase`: 1 for the phase the agent is in, 0 for the others |
//! | `gpu_agent_update_bad_digests` | gauge | digests marked bad |
//! | `gpu_agent_worker_digest_info` | gauge | `digest`, `last_good`: 1 |
//! | `gpu_agent_worker_drained` | gauge | 1 while drained for maintenance |
//! | `gpu_agent_worker_pinned` | gauge | 1 while pinned |
//! | `gpu_agent_registry_last_check_timestamp_seconds` | gauge | Unix time of the last check (0 before the first) |
//! | `gpu_agent_registry_requests_total` | counter | `status` (HTTP status, or `error` without an answer) |
//! | `gpu_agent_gpu_count` | gauge | GPUs NVML shows (last reading) |
//! | `gpu_agent_gpu_healthy` | gauge | 1 when no GPU problem blocks updates (last reading) |
//! | `gpu_agent_gpu_temperature_celsius` | gauge | `gpu`, `uuid` |
//! | `gpu_agent_gpu_memory_used_bytes` | gauge | `gpu`, `uuid` |
//! | `gpu_agent_gpu_ecc_dbe_volatile` | gauge | `gpu`, `uuid`: volatile double-bit ECC errors |
//! | `gpu_agent_gpu_xid_total` | counter | `code`, `class` |

use std::net::SocketAddr;
use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::update::{HistoryEntry, Phase, View};

type Labels = Vec<(&'static str, String)>;

/// Every phase, so that `gpu_agent_update_phase` always has all series.
const PHASES: [Phase; 9] = [
    Phase::Idle,
    Phase::Checking,
    Phase::Pulling,
    Phase::Draining,
    Phase::Swapping,
    Phase::Verifying,
    Phase::RollingBack,
    Phase::Drained,
    Phase::Failed,
];

pub struct Metrics {
    registry: Registry,
    updates: Family<Labels, Counter>,
    duration: Family<Labels, Histogram, fn() -> Histogram>,
    downtime: Histogram,
    phase: Family<Labels, Gauge>,
    bad: Gauge,
    digest: Family<Labels, Gauge>,
    drained: Gauge,
    pinned: Gauge,
    last_check: Gauge<f64, AtomicU64>,
    registry_requests: Family<Labels, Counter>,
    gpu_count: Gauge,
    gpu_healthy: Gauge,
    gpu_temperature: Family<Labels, Gauge>,
    gpu_memory_used: Family<Labels, Gauge>,
    gpu_dbe: Family<Labels, Gauge>,
    gpu_xids: Family<Labels, Counter>,
    /// One scrape at a time sets the view gauges and encodes them.
    scrape: std::sync::Mutex<()>,
}

/// 1 s .. ~4.5 h
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

/// Counts one registry request by the status it got (`None`: no answer).
pub fn registry_request(status: Option<u16>) {
    let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
    global()
        .registry_requests
        .get_or_create(&vec![("status", status)])
        .inc();
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("gpu_agent");
        let m = Metrics {
            updates: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            // 50 ms .. ~27 min
            downtime: Histogram::new(exponential_buckets(0.05, 2.0, 16)),
            phase: Family::default(),
            bad: Gauge::default(),
            digest: Family::default(),
            drained: Gauge::default(),
            pinned: Gauge::default(),
            last_check: Gauge::default(),
            registry_requests: Family::default(),
            gpu_count: Gauge::default(),
            gpu_healthy: Gauge::default(),
            gpu_temperature: Family::default(),
            gpu_memory_used: Family::default(),
            gpu_dbe: Family::default(),
            gpu_xids: Family::default(),
            registry: Registry::default(),
            scrape: std::sync::Mutex::new(()),
        };
        registry.register(
            "update",
            "Updates, rollbacks, pins and drains, by kind and outcome (one per history entry)",
            m.updates.clone(),
        );
        registry.register(
            "update_duration_seconds",
            "Time from the start of an update, rollback or pin (pre-pull) to its end, by kind",
            m.duration.clone(),
        );
        registry.register(
            "update_downtime_seconds",
            "Time from stopping the old worker to the new (or restored) worker being healthy",
            m.downtime.clone(),
        );
        registry.register(
            "update_phase",
            "1 for the phase the agent is in",
            m.phase.clone(),
        );
        registry.register(
            "update_bad_digests",
            "Digests marked bad (not tried again until the tag moves or an operator deploys them)",
            m.bad.clone(),
        );
        registry.register(
            "worker_digest_info",
            "The digest the worker runs and the last good digest",
            m.digest.clone(),
        );
        registry.register(
            "worker_drained",
            "1 while the worker is drained for maintenance",
            m.drained.clone(),
        );
        registry.register(
            "worker_pinned",
            "1 while an operator's pin holds the worker",
            m.pinned.clone(),
        );
        registry.register(
            "registry_last_check_timestamp_seconds",
            "Unix time of the last registry check",
            m.last_check.clone(),
        );
        registry.register(
            "registry_requests",
            "Registry requests by HTTP status (error: no answer)",
            m.registry_requests.clone(),
        );
        registry.register(
            "gpu_count",
            "GPUs NVML shows (last reading)",
            m.gpu_count.clone(),
        );
        registry.register(
            "gpu_healthy",
            "1 when no GPU problem blocks updates (last reading)",
            m.gpu_healthy.clone(),
        );
        registry.register(
            "gpu_temperature_celsius",
            "GPU temperature (last reading)",
            m.gpu_temperature.clone(),
        );
        registry.register(
            "gpu_memory_used_bytes",
            "GPU memory in use (last reading)",
            m.gpu_memory_used.clone(),
        );
        registry.register(
            "gpu_ecc_dbe_volatile",
            "Volatile double-bit ECC errors (last reading)",
            m.gpu_dbe.clone(),
        );
        registry.register(
            "gpu_xid",
            "XID errors the driver reported, by code and class",
            m.gpu_xids.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Sets the GPU gauges from a reading and what it means.
    pub fn observe_gpus(&self, s: &crate::gpu::Snapshot, a: &crate::gpu::Assessment) {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.gpu_count.set(s.gpus.len() as i64);
        self.gpu_healthy.set(i64::from(a.healthy));
        self.gpu_temperature.clear();
        self.gpu_memory_used.clear();
        self.gpu_dbe.clear();
        for g in &s.gpus {
            let l = vec![("gpu", g.index.to_string()), ("uuid", g.uuid.clone())];
            if let Some(t) = g.temperature_c {
                self.gpu_temperature.get_or_create(&l).set(i64::from(t));
            }
            self.gpu_memory_used
                .get_or_create(&l)
                .set((g.memory_used_mib * 1024 * 1024) as i64);
            if let Some(d) = g.ecc_dbe_volatile {
                self.gpu_dbe.get_or_create(&l).set(d as i64);
            }
        }
    }

    /// The GPUs could not be read: not healthy, and no stale readings.
    pub fn gpus_unreadable(&self) {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.gpu_count.set(0);
        self.gpu_healthy.set(0);
        self.gpu_temperature.clear();
        self.gpu_memory_used.clear();
        self.gpu_dbe.clear();
    }

    /// Counts one XID.
    pub fn observe_xid(&self, x: &crate::gpu::Xid) {
        self.gpu_xids
            .get_or_create(&vec![
                ("code", x.code.to_string()),
                ("class", label(&x.class)),
            ])
            .inc();
    }

    /// Counts a history entry; `started` is when its update began.
    pub fn observe(&self, e: &HistoryEntry, started: Option<OffsetDateTime>) {
        self.updates
            .get_or_create(&vec![
                ("kind", label(&e.kind)),
                ("outcome", label(&e.outcome)),
            ])
            .inc();
        if let Some(t0) = started {
            self.duration
                .get_or_create(&vec![("kind", label(&e.kind))])
                .observe((e.at - t0).as_seconds_f64().max(0.0));
        }
        if let Some(ms) = e.downtime_ms {
            self.downtime.observe(ms as f64 / 1000.0);
        }
    }

    /// The OpenMetrics text, with the gauges set from `view`.
    pub fn render(&self, view: &View) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        for p in PHASES {
            self.phase
                .get_or_create(&vec![("phase", p.as_str().to_string())])
                .set(i64::from(p == view.phase));
        }
        let s = &view.state;
        self.bad.set(s.bad_digests.len() as i64);
        self.digest.clear();
        self.digest
            .get_or_create(&vec![
                ("digest", s.current_digest.clone().unwrap_or_default()),
                ("last_good", s.last_good_digest.clone().unwrap_or_default()),
            ])
            .set(1);
        self.drained.set(i64::from(s.drained));
        self.pinned.set(i64::from(s.pinned.is_some()));
        self.last_check.set(
            view.last_check
                .map_or(0.0, |t| t.unix_timestamp_nanos() as f64 / 1e9),
        );
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            warn!(error = %e, "encoding the metrics");
        }
        out
    }
}

/// A value's snake_case name, as the history writes it.
fn label(v: &impl serde::Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Serves `/metrics` on `addr` until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    view: watch::Receiver<View>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(listen = %addr, "metrics at /metrics");
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let v = view.borrow().clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    global().render(&v),
                )
                    .into_response()
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// The metrics as a subscriber of the update's events (wired by the daemon).
pub fn subscriber() -> crate::update::Subscriber {
    Box::new(|e| {
        use crate::update::Event;
        let m = global();
        match e {
            Event::History { entry, started } => m.observe(entry, *started),
            Event::GpusRead {
                snapshot,
                assessment,
            } => m.observe_gpus(snapshot, assessment),
            Event::GpusUnreadable => m.gpus_unreadable(),
            Event::Xid(x) => m.observe_xid(x),
            Event::Phase(_) => {}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::{Kind, Outcome, Trigger};

    #[test]
    fn the_text_names_every_metric_and_follows_the_view() {
        let m = Metrics::new();
        let at = OffsetDateTime::now_utc();
        m.observe(
            &HistoryEntry {
                at,
                kind: Kind::Update,
                from: Some("sha256:a".into()),
                to: Some("sha256:b".into()),
                outcome: Outcome::Success,
                trigger: Trigger::Poll,
                error: None,
                downtime_ms: Some(250),
                reason: None,
            },
            Some(at - time::Duration::seconds(12)),
        );
        let mut v = View {
            phase: Phase::Verifying,
            ..View::default()
        };
        v.state.current_digest = Some("sha256:b".into());
        v.state.drained = true;
        let text = m.render(&v);
        for line in [
            "gpu_agent_update_total{kind=\"update\",outcome=\"success\"} 1",
            "gpu_agent_update_phase{phase=\"verifying\"} 1",
            "gpu_agent_update_phase{phase=\"idle\"} 0",
            "gpu_agent_worker_digest_info{digest=\"sha256:b\",last_good=\"\"} 1",
            "gpu_agent_worker_drained 1",
            "gpu_agent_worker_pinned 0",
            "gpu_agent_update_downtime_seconds_count 1",
            "gpu_agent_update_duration_seconds_sum{kind=\"update\"} 12.0",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        // A new digest replaces the old series rather than adding one.
        v.state.current_digest = Some("sha256:c".into());
        let text = m.render(&v);
        assert!(text.contains("digest=\"sha256:c\""));
        assert!(!text.contains("digest=\"sha256:b\""), "{text}");
    }
}
