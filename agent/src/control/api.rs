//! The control API's wire types: HTTP/1.1 with JSON bodies over the Unix
//! socket at `agent.control_socket`. `agentctl` is its client; anything that
//! can speak HTTP over a Unix socket (`curl --unix-socket`) can use it too.
//!
//! | call | answer |
//! | --- | --- |
//! | `GET /v1/status` | 200 [`Status`] |
//! | `GET /v1/history?n=N` | 200 `[HistoryEntry]`, oldest first, the last N (all without `n`) |
//! | `POST /v1/check` [`CheckRequest`] | 200 [`ActionResult`] (with `wait`: when the update it starts ends; else at once, `outcome: "started"`) |
//! | `POST /v1/update` [`UpdateRequest`] | 200 [`ActionResult`] once the update ends |
//! | `POST /v1/drain` [`DrainRequest`] | 200 [`ActionResult`] `drained` (with `wait`: once the worker is stopped; else at once, `started`) |
//! | `POST /v1/undrain` (no body) | 200 [`ActionResult`] `undrained` once the worker passed its health gate |
//! | `POST /v1/rollback` (no body) | 200 [`ActionResult`] `updated` (to the earlier good digest) once it is verified |
//! | `POST /v1/pin` [`PinRequest`] | 200 [`ActionResult`] `updated` or `up_to_date` once the pinned digest runs |
//! | `POST /v1/unpin` (no body) | 200 [`ActionResult`] `unpinned` |
//! | `POST /v1/dry-run` [`DryRunRequest`] | 200 [`DryRun`]: what `check` (no `digest`) or `update` (a `digest`) would do now; changes nothing; 409 while an update or a maintenance drain runs |
//! | `GET /v1/health` | 200 [`Health`] |
//!
//! Errors are `{"error": "..."}` with 400 (malformed request), 404 (no such
//! call), 409 (refused in the current state: the text says why) or 500.

use serde::{Deserialize, Serialize};

pub use crate::update::dry_run::{DryRun, Gate, Outlook, Pull, SpecDiff, Target, Verdict};
pub use crate::update::status::{HubStatus, Status};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// Why (shown in status and history).
    #[serde(default)]
    pub reason: Option<String>,
    /// How long in-flight jobs may take, like `"10m"`; default
    /// `worker.drain.timeout`. At the deadline `worker.drain.on_timeout`
    /// decides: `abort` gives the worker its jobs back and refuses the drain
    /// (outcome `aborted`, the error says how many jobs were in flight),
    /// `proceed` stops it anyway.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Answer only once the worker is stopped (or the drain was aborted).
    #[serde(default)]
    pub wait: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinRequest {
    /// A digest (`sha256:…`) or a tag of the configured repository.
    pub reference: String,
}

/// `agentctl health --json`: the worker, the GPUs and the hub, now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `healthy` when every part that is checked is, else `unhealthy`
    /// (`drained` while drained for maintenance).
    pub verdict: String,
    pub worker: WorkerHealth,
    pub gpu: PartHealth,
    pub hub: PartHealth,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerHealth {
    /// `healthy`, `unhealthy`, `starting`, `drained`, `missing`.
    pub verdict: String,
    /// The container name and what the engine says of it (`running`,
    /// `restarting`, `exited`, ...), or null when there is none.
    pub container: Option<String>,
    pub state: Option<String>,
    pub digest: Option<String>,
    pub restart_count: Option<i64>,
    /// The image's HEALTHCHECK status (`healthy`, `unhealthy`, `starting`), if it has one.
    pub healthcheck: Option<String>,
    /// `worker.health.http`, probed now.
    pub http: Option<Probe>,
    /// Jobs in flight from `worker.drain.http`, probed now.
    pub in_flight: Option<u64>,
    /// What is wrong, in words.
    pub problem: Option<String>,
}

impl WorkerHealth {
    /// A verdict with nothing known yet.
    pub fn new(verdict: &str) -> Self {
        WorkerHealth {
            verdict: verdict.into(),
            container: None,
            state: None,
            digest: None,
            restart_count: None,
            healthcheck: None,
            http: None,
            in_flight: None,
            problem: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub url: String,
    pub ok: bool,
    pub latency_ms: u64,
    pub error: Option<String>,
}

/// The GPU and hub parts: `verdict` is `healthy`, `unhealthy`, `not_checked`
/// or `not_configured`; `detail` says why in words; `data` holds what the
/// subsystem reports (per-GPU readings, the hub's view of the worker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartHealth {
    pub verdict: String,
    pub detail: String,
    #[serde(default)]
    pub data: serde_json::Value,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    /// Answer only once the update the check starts (if any) has ended.
    #[serde(default)]
    pub wait: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    /// `sha256:<64 hex>`.
    pub digest: String,
}

/// `POST /v1/dry-run`: what an action would do now, without doing it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DryRunRequest {
    /// `sha256:<64 hex>`: a dry run of `update --digest`; absent: of `check`.
    #[serde(default)]
    pub digest: Option<String>,
}

/// What a check or an update led to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionResult {
    /// `started` (check or drain without wait), `up_to_date`, `updated`,
    /// `skipped_bad`, `held`, `drained`, `undrained`, `unpinned` (done);
    /// `rolled_back`, `aborted`, `failed`, `suspended` (the agent stopped
    /// with the new worker running but not yet verified; the next start
    /// finishes it) (not done: `error` says why).
    pub outcome: String,
    pub digest: Option<String>,
    pub error: Option<String>,
}

impl ActionResult {
    /// Whether the action reached what was asked (exit code 0 in agentctl).
    pub fn ok(&self) -> bool {
        matches!(
            self.outcome.as_str(),
            "started"
                | "up_to_date"
                | "updated"
                | "skipped_bad"
                | "held"
                | "drained"
                | "undrained"
                | "unpinned"
        )
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
