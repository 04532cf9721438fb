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
//!
//! Errors are `{"error": "..."}` with 400 (malformed request), 404 (no such
//! call), 409 (refused in the current state: the text says why) or 500.

use serde::{Deserialize, Serialize};

use crate::update::journal::BadDigest;

/// `agentctl status --json`: the SPEC's status object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub agent_id: String,
    /// `idle`, `checking`, `pulling`, `draining`, `swapping`, `verifying`,
    /// `rolling_back`, `drained`, `failed`.
    pub phase: String,
    pub current_digest: Option<String>,
    pub last_good_digest: Option<String>,
    pub drained: bool,
    pub pinned: Option<String>,
    pub bad_digests: Vec<BadDigest>,
    /// RFC 3339.
    pub last_check: Option<String>,
    /// RFC 3339.
    pub next_check: Option<String>,
    pub last_error: Option<String>,
    /// The image repository and what of it is followed (`tag stable`, `version ^2.3`).
    pub image: String,
    pub policy: String,
    /// The update in progress, if any: `{from, to, step, trigger, started_at}`.
    pub pending: Option<serde_json::Value>,
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

/// What a check or an update led to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionResult {
    /// `started` (check without wait), `up_to_date`, `updated`, `skipped_bad`,
    /// `held`, `rolled_back`, `aborted`, `failed`.
    pub outcome: String,
    pub digest: Option<String>,
    pub error: Option<String>,
}

impl ActionResult {
    /// Whether the action reached what was asked (exit code 0 in agentctl).
    pub fn ok(&self) -> bool {
        matches!(
            self.outcome.as_str(),
            "started" | "up_to_date" | "updated" | "skipped_bad" | "held"
        )
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
