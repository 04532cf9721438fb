//! Prometheus metrics (prometheus-client), served as OpenMetrics text at
//! `http://<agent.metrics_listen>/metrics` when that key is set.
//!
//! Names are `gpu_agent_<subsystem>_<name>`. Counters and histograms are fed
//! as things happen (a history entry, a registry answer); the gauges that
//! describe the agent now (phase, digest, drain, pin, last check) are set
//! from the updater's published view at each scrape, so they are never stale.
//! Every labelled counter whose labels are known up front (kind × outcome,
//! check result) is present at 0 from the start, so that `increase()` sees
//! the first event after a restart. The alerting rules and the dashboard in
//! `packaging/` use these names; `tests/monitoring.rs` checks them against
//! this text.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `gpu_agent_build_info` | gauge | `version`, `commit`: 1 |
//! | `gpu_agent_update_total` | counter | `kind` (update, rollback, pin, drain, ...), `outcome`: every pair from the start, at 0 |
//! | `gpu_agent_update_last_timestamp_seconds` | gauge | `outcome`: Unix time of the last history entry with that outcome (0: none since the start, unless seeded from the history) |
//! | `gpu_agent_update_duration_seconds` | histogram | `kind`: from the start of an update, rollback or pin to its end |
//! | `gpu_agent_update_downtime_seconds` | histogram | old worker stopped → new worker healthy |
//! | `gpu_agent_update_phase` | gauge | `phase`: 1 for the phase the agent is in, 0 for the others |
//! | `gpu_agent_phase_since_timestamp_seconds` | gauge | Unix time the agent entered its current phase (the start for the first) |
//! | `gpu_agent_update_bad_digests` | gauge | digests marked bad |
//! | `gpu_agent_worker_digest_info` | gauge | `digest`, `last_good`: 1 |
//! | `gpu_agent_worker_drained` | gauge | 1 while drained for maintenance |
//! | `gpu_agent_worker_pinned` | gauge | 1 while pinned |
//! | `gpu_agent_worker_healthy` | gauge | `worker`: 1 when the worker runs (not restarting) and its health check passes; read at each verification and after every check that leaves the agent at rest, not drained (absent before the first reading) |
//! | `gpu_agent_registry_last_check_timestamp_seconds` | gauge | Unix time of the last check (0 before the first) |
//! | `gpu_agent_registry_requests_total` | counter | `status` (HTTP status, or `error` without an answer) |
//! | `gpu_agent_check_total` | counter | `result` (`ok`, `failed`): checks for a new digest, at 0 from the start |
//! | `gpu_agent_check_last_success_timestamp_seconds` | gauge | Unix time of the last check that got an answer (0 before the first) |
//! | `gpu_agent_notify_total` | counter | `result` (`sent`, `failed`, `dropped`): webhook notifications, at 0 from the start |
//! | `gpu_agent_hub_configured` | gauge | 1 when the config has a `[hub]` |
//! | `gpu_agent_hub_stream_up` | gauge | 1 while the hub's event stream is open |
//! | `gpu_agent_fleet_slot_held` | gauge | 1 while this host holds one of its fleet group's update slots |
//! | `gpu_agent_fleet_etcd_reachable` | gauge | `group`: 1 while the fleet group's etcd answers this host, 0 while it does not (no update starts); absent without `[fleet]` |
//! | `gpu_agent_fleet_rollout_state` | gauge | `state` (`rolling`, `paused`, `halted`, `complete`, `aborted`): 1 for the group's rollout state, all 0 without a rollout or a fleet |
//! | `gpu_agent_gpu_count` | gauge | GPUs NVML shows (last reading) |
//! | `gpu_agent_gpu_last_reading_timestamp_seconds` | gauge | Unix time of the last GPU reading, read or not (0: none yet, e.g. `gpu.check = false`) |
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

use crate::update::{HistoryEntry, Kind, Outcome, Phase, View};

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

/// Every kind and outcome, so that `gpu_agent_update_total` has every pair at 0.
const KINDS: [Kind; 6] = [
    Kind::Update,
    Kind::Rollback,
    Kind::Drain,
    Kind::Undrain,
    Kind::Pin,
    Kind::Unpin,
];
const OUTCOMES: [Outcome; 4] = [
    Outcome::Success,
    Outcome::RolledBack,
    Outcome::Failed,
    Outcome::Aborted,
];

/// The states of a fleet rollout (SPEC, `gpu-fleet rollout status`).
pub const ROLLOUT_STATES: [&str; 5] = ["rolling", "paused", "halted", "complete", "aborted"];

const NOTIFY_RESULTS: [&str; 3] = ["sent", "failed", "dropped"];

type FloatGauge = Gauge<f64, AtomicU64>;

fn unix_seconds(t: OffsetDateTime) -> f64 {
    t.unix_timestamp() as f64 + f64::from(t.nanosecond()) / 1e9
}

pub struct Metrics {
    registry: Registry,
    build_info: Family<Labels, Gauge>,
    updates: Family<Labels, Counter>,
    last_update: Family<Labels, FloatGauge>,
    phase_since: FloatGauge,
    /// The phase `phase_since` is for (set by `phase_changed` or seen at a scrape).
    phase_seen: std::sync::Mutex<Phase>,
    checks: Family<Labels, Counter>,
    last_check_ok: FloatGauge,
    notifications: Family<Labels, Counter>,
    hub_configured: Gauge,
    hub_stream_up: Gauge,
    worker_healthy: Family<Labels, Gauge>,
    fleet_slot_held: Gauge,
    fleet_etcd: Family<Labels, Gauge>,
    fleet_rollout: Family<Labels, Gauge>,
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
    gpu_read_at: FloatGauge,
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
            build_info: Family::default(),
            last_update: Family::default(),
            phase_since: FloatGauge::default(),
            phase_seen: std::sync::Mutex::new(Phase::Idle),
            checks: Family::default(),
            last_check_ok: FloatGauge::default(),
            notifications: Family::default(),
            hub_configured: Gauge::default(),
            hub_stream_up: Gauge::default(),
            worker_healthy: Family::default(),
            fleet_slot_held: Gauge::default(),
            fleet_etcd: Family::default(),
            fleet_rollout: Family::default(),
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
            gpu_read_at: FloatGauge::default(),
            gpu_healthy: Gauge::default(),
            gpu_temperature: Family::default(),
            gpu_memory_used: Family::default(),
            gpu_dbe: Family::default(),
            gpu_xids: Family::default(),
            registry: Registry::default(),
            scrape: std::sync::Mutex::new(()),
        };
        registry.register(
            "build_info",
            "The agent's version and the commit it was built from",
            m.build_info.clone(),
        );
        m.build_info
            .get_or_create(&vec![
                ("version", crate::VERSION.to_string()),
                ("commit", crate::COMMIT.to_string()),
            ])
            .set(1);
        registry.register(
            "update",
            "Updates, rollbacks, pins and drains, by kind and outcome (one per history entry)",
            m.updates.clone(),
        );
        for k in KINDS {
            for o in OUTCOMES {
                let _ = m
                    .updates
                    .get_or_create(&vec![("kind", label(&k)), ("outcome", label(&o))]);
            }
        }
        registry.register(
            "update_last_timestamp_seconds",
            "Unix time of the last history entry with each outcome (0: none yet)",
            m.last_update.clone(),
        );
        for o in OUTCOMES {
            let _ = m.last_update.get_or_create(&vec![("outcome", label(&o))]);
        }
        registry.register(
            "phase_since_timestamp_seconds",
            "Unix time the agent entered the phase it is in",
            m.phase_since.clone(),
        );
        m.phase_since.set(unix_seconds(OffsetDateTime::now_utc()));
        registry.register(
            "check",
            "Checks for a new digest (registry or hub), by result",
            m.checks.clone(),
        );
        for r in ["ok", "failed"] {
            let _ = m.checks.get_or_create(&vec![("result", r.to_string())]);
        }
        registry.register(
            "check_last_success_timestamp_seconds",
            "Unix time of the last check that got an answer (0: none yet)",
            m.last_check_ok.clone(),
        );
        registry.register(
            "notify",
            "Webhook notifications by result (sent, failed after its retries, dropped: queue full)",
            m.notifications.clone(),
        );
        for r in NOTIFY_RESULTS {
            let _ = m
                .notifications
                .get_or_create(&vec![("result", r.to_string())]);
        }
        registry.register(
            "hub_configured",
            "1 when the config has a hub",
            m.hub_configured.clone(),
        );
        registry.register(
            "hub_stream_up",
            "1 while the hub's event stream is open",
            m.hub_stream_up.clone(),
        );
        registry.register(
            "worker_healthy",
            "1 when the worker runs and passes its health check",
            m.worker_healthy.clone(),
        );
        registry.register(
            "fleet_slot_held",
            "1 while this host holds one of its fleet group's update slots",
            m.fleet_slot_held.clone(),
        );
        registry.register(
            "fleet_etcd_reachable",
            "1 while the fleet group's etcd answers this host; 0: no update starts (absent without [fleet])",
            m.fleet_etcd.clone(),
        );
        registry.register(
            "fleet_rollout_state",
            "1 for the state of the fleet group's rollout (all 0: none)",
            m.fleet_rollout.clone(),
        );
        for st in ROLLOUT_STATES {
            let _ = m
                .fleet_rollout
                .get_or_create(&vec![("state", st.to_string())]);
        }
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
            "gpu_last_reading_timestamp_seconds",
            "Unix time of the last GPU reading, whether NVML answered or not (0: none yet)",
            m.gpu_read_at.clone(),
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
        self.gpu_read_at
            .set(unix_seconds(OffsetDateTime::now_utc()));
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
        self.gpu_read_at
            .set(unix_seconds(OffsetDateTime::now_utc()));
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
        self.last_update
            .get_or_create(&vec![("outcome", label(&e.outcome))])
            .set(unix_seconds(e.at));
    }

    /// Sets the last-update timestamps from the history already written
    /// (oldest first), without counting anything: call once at start, so
    /// that "when was the last rollback" survives a restart.
    pub fn seed_history<'a>(&self, entries: impl IntoIterator<Item = &'a HistoryEntry>) {
        for e in entries {
            let g = self
                .last_update
                .get_or_create(&vec![("outcome", label(&e.outcome))]);
            g.set(g.get().max(unix_seconds(e.at)));
        }
    }

    /// The agent entered `phase` at `at`. Call at each phase change; a
    /// change seen only at a scrape is stamped with the scrape's time.
    pub fn phase_changed(&self, phase: Phase, at: OffsetDateTime) {
        let mut seen = self.phase_seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen != phase {
            *seen = phase;
            self.phase_since.set(unix_seconds(at));
        }
    }

    /// Counts one check for a new digest: `ok` when the registry (or the
    /// hub) answered, whether or not the digest moved.
    pub fn observe_check(&self, ok: bool, at: OffsetDateTime) {
        let result = if ok { "ok" } else { "failed" };
        self.checks
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
        if ok {
            self.last_check_ok.set(unix_seconds(at));
        }
    }

    /// Counts one notification: `sent`, `failed` (after its retries) or
    /// `dropped` (its queue was full).
    pub fn observe_notify(&self, result: &str) {
        self.notifications
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }

    /// Whether the config has a hub (at start and after a reload).
    pub fn set_hub_configured(&self, configured: bool) {
        self.hub_configured.set(i64::from(configured));
        if !configured {
            self.hub_stream_up.set(0);
        }
    }

    /// The hub's event stream opened (`true`) or closed (`false`).
    pub fn set_hub_stream_up(&self, up: bool) {
        self.hub_stream_up.set(i64::from(up));
    }

    /// The worker container `worker` is (or is not) running and healthy.
    pub fn set_worker_healthy(&self, worker: &str, healthy: bool) {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let l = vec![("worker", worker.to_string())];
        if self.worker_healthy.get(&l).is_none() {
            // One worker per agent: a renamed worker replaces the old series.
            self.worker_healthy.clear();
        }
        self.worker_healthy
            .get_or_create(&l)
            .set(i64::from(healthy));
    }

    /// Whether this host holds a fleet update slot.
    pub fn set_fleet_slot_held(&self, held: bool) {
        self.fleet_slot_held.set(i64::from(held));
    }

    /// Whether the fleet group's etcd answered this host's last request.
    pub fn set_fleet_etcd_reachable(&self, group: &str, reachable: bool) {
        let l = vec![("group", group.to_string())];
        if self.fleet_etcd.get(&l).is_none() {
            self.fleet_etcd.clear();
        }
        self.fleet_etcd.get_or_create(&l).set(i64::from(reachable));
    }

    /// The fleet group's rollout state (one of [`ROLLOUT_STATES`]), or
    /// `None` without a rollout or a fleet.
    pub fn set_fleet_rollout_state(&self, state: Option<&str>) {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        // A state outside the list (a newer fleet) gets a series of its own
        // until the next change.
        self.fleet_rollout.clear();
        for st in ROLLOUT_STATES {
            self.fleet_rollout
                .get_or_create(&vec![("state", st.to_string())])
                .set(i64::from(state == Some(st)));
        }
        if let Some(st) = state.filter(|s| !ROLLOUT_STATES.contains(s)) {
            self.fleet_rollout
                .get_or_create(&vec![("state", st.to_string())])
                .set(1);
        }
    }

    /// The OpenMetrics text, with the gauges set from `view`.
    pub fn render(&self, view: &View) -> String {
        self.phase_changed(view.phase, OffsetDateTime::now_utc());
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
pub fn subscriber(worker: String) -> crate::update::Subscriber {
    Box::new(move |e| {
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
            Event::Phase(p) => m.phase_changed(*p, OffsetDateTime::now_utc()),
            Event::Checked { ok, at } => m.observe_check(*ok, *at),
            Event::WorkerHealth(healthy) => m.set_worker_healthy(&worker, *healthy),
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
                user: None,
                marked_bad: None,
                gpu_hold: None,
                changed: Vec::new(),
                spec: None,
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

    fn entry(at: OffsetDateTime, kind: Kind, outcome: Outcome) -> HistoryEntry {
        HistoryEntry {
            at,
            kind,
            from: None,
            to: Some("sha256:b".into()),
            outcome,
            trigger: Trigger::Poll,
            error: None,
            downtime_ms: None,
            reason: None,
            user: None,
            marked_bad: None,
            gpu_hold: None,
            changed: Vec::new(),
            spec: None,
        }
    }

    /// The value of the one line that starts with `series ` in `text`.
    fn value(text: &str, series: &str) -> f64 {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{series} ")))
            .collect();
        assert_eq!(lines.len(), 1, "{series} in\n{text}");
        lines[0].rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn every_known_series_is_there_at_zero_from_the_start() {
        let before = unix_seconds(OffsetDateTime::now_utc());
        let m = Metrics::new();
        let text = m.render(&View::default());
        for k in ["update", "rollback", "drain", "undrain", "pin", "unpin"] {
            for o in ["success", "rolled_back", "failed", "aborted"] {
                let s = format!("gpu_agent_update_total{{kind=\"{k}\",outcome=\"{o}\"}}");
                assert_eq!(value(&text, &s), 0.0);
            }
        }
        for o in ["success", "rolled_back", "failed", "aborted"] {
            let s = format!("gpu_agent_update_last_timestamp_seconds{{outcome=\"{o}\"}}");
            assert_eq!(value(&text, &s), 0.0);
        }
        for r in NOTIFY_RESULTS {
            assert_eq!(
                value(&text, &format!("gpu_agent_notify_total{{result=\"{r}\"}}")),
                0.0
            );
        }
        for r in ["ok", "failed"] {
            assert_eq!(
                value(&text, &format!("gpu_agent_check_total{{result=\"{r}\"}}")),
                0.0
            );
        }
        for st in ROLLOUT_STATES {
            let s = format!("gpu_agent_fleet_rollout_state{{state=\"{st}\"}}");
            assert_eq!(value(&text, &s), 0.0);
        }
        let build = format!(
            "gpu_agent_build_info{{version=\"{}\",commit=\"{}\"}}",
            crate::VERSION,
            crate::COMMIT
        );
        assert_eq!(value(&text, &build), 1.0);
        assert!(!crate::COMMIT.is_empty());
        let since = value(&text, "gpu_agent_phase_since_timestamp_seconds");
        assert!(
            since >= before.floor() && since <= before + 60.0,
            "{since} vs {before}"
        );
        for (series, v) in [
            ("gpu_agent_check_last_success_timestamp_seconds", 0.0),
            ("gpu_agent_hub_configured", 0.0),
            ("gpu_agent_hub_stream_up", 0.0),
            ("gpu_agent_fleet_slot_held", 0.0),
            ("gpu_agent_gpu_last_reading_timestamp_seconds", 0.0),
        ] {
            assert_eq!(value(&text, series), v, "{series}");
        }
        // No reading yet: no claim about the worker's health.
        assert!(!text.contains("gpu_agent_worker_healthy{"), "{text}");
        // Each family once, with its type.
        assert_eq!(text.matches("# TYPE gpu_agent_update counter").count(), 1);
    }

    #[test]
    fn history_checks_and_states_move_the_series() {
        let m = Metrics::new();
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        m.seed_history(&[
            entry(t0, Kind::Update, Outcome::RolledBack),
            entry(
                t0 - time::Duration::hours(1),
                Kind::Update,
                Outcome::RolledBack,
            ),
            entry(t0 + time::Duration::seconds(5), Kind::Pin, Outcome::Success),
        ]);
        let text = m.render(&View::default());
        assert_eq!(
            value(
                &text,
                "gpu_agent_update_last_timestamp_seconds{outcome=\"rolled_back\"}"
            ),
            1_800_000_000.0
        );
        assert_eq!(
            value(
                &text,
                "gpu_agent_update_last_timestamp_seconds{outcome=\"success\"}"
            ),
            1_800_000_005.0
        );
        // Seeding counts nothing.
        assert_eq!(
            value(
                &text,
                "gpu_agent_update_total{kind=\"update\",outcome=\"rolled_back\"}"
            ),
            0.0
        );
        let t1 = t0 + time::Duration::minutes(10);
        m.observe(&entry(t1, Kind::Update, Outcome::Failed), None);
        m.observe_check(false, t1);
        m.observe_check(true, t1 + time::Duration::seconds(1));
        m.observe_check(true, t1 + time::Duration::seconds(2));
        m.phase_changed(Phase::Pulling, t1);
        m.phase_changed(Phase::Pulling, t1 + time::Duration::seconds(30));
        m.set_hub_configured(true);
        m.set_hub_stream_up(true);
        m.set_worker_healthy("gpu-worker", false);
        m.set_fleet_slot_held(true);
        m.set_fleet_rollout_state(Some("halted"));
        let v = View {
            phase: Phase::Pulling,
            ..View::default()
        };
        let text = m.render(&v);
        for (series, want) in [
            (
                "gpu_agent_update_total{kind=\"update\",outcome=\"failed\"}",
                1.0,
            ),
            (
                "gpu_agent_update_last_timestamp_seconds{outcome=\"failed\"}",
                1_800_000_600.0,
            ),
            ("gpu_agent_check_total{result=\"ok\"}", 2.0),
            ("gpu_agent_check_total{result=\"failed\"}", 1.0),
            (
                "gpu_agent_check_last_success_timestamp_seconds",
                1_800_000_602.0,
            ),
            // The phase did not change at the second call, nor at the scrape.
            ("gpu_agent_phase_since_timestamp_seconds", 1_800_000_600.0),
            ("gpu_agent_hub_configured", 1.0),
            ("gpu_agent_hub_stream_up", 1.0),
            ("gpu_agent_worker_healthy{worker=\"gpu-worker\"}", 0.0),
            ("gpu_agent_fleet_slot_held", 1.0),
            ("gpu_agent_fleet_rollout_state{state=\"halted\"}", 1.0),
            ("gpu_agent_fleet_rollout_state{state=\"rolling\"}", 0.0),
        ] {
            assert_eq!(value(&text, series), want, "{series}");
        }
        // A phase change seen only at a scrape is stamped then.
        let before = unix_seconds(OffsetDateTime::now_utc());
        let text = m.render(&View::default());
        assert!(value(&text, "gpu_agent_phase_since_timestamp_seconds") >= before.floor());
        // A renamed worker replaces the series; no rollout clears the state.
        m.set_worker_healthy("gpu-worker-2", true);
        m.set_fleet_rollout_state(Some("resharding"));
        m.set_fleet_rollout_state(None);
        m.set_hub_configured(false);
        let text = m.render(&View::default());
        assert!(!text.contains("worker=\"gpu-worker\""), "{text}");
        assert_eq!(
            value(&text, "gpu_agent_worker_healthy{worker=\"gpu-worker-2\"}"),
            1.0
        );
        assert_eq!(
            value(&text, "gpu_agent_fleet_rollout_state{state=\"halted\"}"),
            0.0
        );
        assert!(!text.contains("resharding"), "{text}");
        assert_eq!(value(&text, "gpu_agent_hub_stream_up"), 0.0);
    }
}
