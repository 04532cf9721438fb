//! Fleet rollouts on etcd: the slots, canaries, halts and rollout record that
//! let a group of hosts move to a new digest a few at a time.
//!
//! The update core sees the fleet through one small port, [`FleetGate`]: before
//! it drains it asks [`FleetGate::decide`] for a slot, it reports how the
//! update ended with [`FleetGate::report_outcome`] and gives the slot back with
//! [`FleetGate::release`]. [`EtcdGate`] is the real implementation (etcd v3,
//! the key layout in [`keys`], documented in `docs/fleet.md`); [`FakeGate`] is
//! an in-memory one for unit tests of the core. Operators drive a group with
//! `gpu-fleet` ([`cli`]), built on the same records ([`admin`]).
//!
//! Files: [`policy`] (the rollout policy and its pure rules), [`records`] (what
//! lies under each key), [`etcd`] (the client: connection options, timeouts,
//! request counting), [`semaphore`] (the slot queue), [`gate`] (a host's side;
//! its session with etcd in `session.rs`, canaries and bake in `canary.rs`),
//! [`admin`] (an operator's side), [`cli`] (`gpu-fleet`), [`fake`].

pub mod admin;
mod canary;
pub mod cli;
#[cfg(test)]
mod config_tests;
pub mod etcd;
pub mod fake;
pub mod gate;
pub mod keys;
pub mod policy;
pub mod records;
pub mod semaphore;
mod session;

use std::future::Future;

use serde::Serialize;

pub use etcd::{Etcd, EtcdOptions};
pub use fake::FakeGate;
pub use gate::EtcdGate;
pub use policy::{MaxUnavailable, Policy};
pub use records::{HostRecord, OutcomeKind, RolloutRecord, RolloutState};

/// Errors of the fleet layer.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// No etcd member answered in time (or the cluster has no quorum).
    #[error("etcd not reachable at {endpoints}: {message}")]
    Unreachable { endpoints: String, message: String },
    /// etcd answered with an error (auth refused, bad request, ...).
    #[error("etcd: {0}")]
    Etcd(String),
    /// A record under the group's prefix is not what this version writes.
    #[error("etcd key {key}: {message}")]
    Record { key: String, message: String },
    /// Reading the TLS or password files named in the config.
    #[error("reading {path}: {source}")]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// An operator request that the group's state refuses (e.g. resume with no rollout).
    #[error("{0}")]
    Refused(String),
    /// Bad input (a policy value, a reference).
    #[error("{0}")]
    Invalid(String),
}

impl FleetError {
    /// Whether this is "etcd not reachable" (the caller waits and retries).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, FleetError::Unreachable { .. })
    }
}

/// What the gate says to a host that wants to disrupt its worker for `digest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Go on: the host holds slot `slot` (its rank in the slot queue) and keeps
    /// it until [`FleetGate::release`].
    Go { slot: u32 },
    /// Not now: ask again after [`FleetGate::changed`] fires. `why` is for
    /// status and logs ("canary of sha256:… baking until …", "2 of 2 slots held",
    /// "etcd not reachable", "rollout paused").
    Wait { why: String },
    /// The digest is halted for the group: do not try it until an operator
    /// resumes (the gate then says Go/Wait again) or aborts.
    Halted { why: String },
}

/// How an update to a digest ended on this host, for the per-digest record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The new worker was verified and committed.
    Verified,
    /// The new worker failed and the host rolled back (counts against the digest).
    RolledBack,
    /// The host's own failure (GPU pre-flight refused, the rollback also failed):
    /// counts against the host, not the digest.
    HostFault,
}

/// The `fleet` object of `agentctl status --json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FleetView {
    pub group: String,
    /// Whether the last etcd request succeeded.
    pub etcd_reachable: bool,
    /// The slot this host holds (its queue rank when it got it), if any.
    pub slot: Option<u32>,
    /// The digest this host holds its slot for.
    pub slot_digest: Option<String>,
    /// The group's rollout: digest and state, if one was ever started.
    pub rollout_digest: Option<String>,
    pub rollout_state: Option<RolloutState>,
    /// The digest the group wants this host on (see [`FleetGate::desired`]).
    pub desired: Option<String>,
    /// Why the last `decide` said Wait or Halted; `None` after Go, and after
    /// `release` (the host gave its slot back or left the queue).
    pub waiting: Option<String>,
}

/// A host's view of the fleet. The core calls, for one update to `digest`:
/// pull (no slot) → `decide(digest)` until Go (await `changed()` between tries)
/// → drain, swap, verify → `report_outcome(digest, outcome)` → `release()`.
/// After a restart: if `view().slot` is Some, finish the resumed update, then
/// `release()` once the worker is steady.
pub trait FleetGate: Send + Sync + 'static {
    /// Asks for a slot to disrupt the worker for `digest`. Never blocks for long
    /// (each etcd call has a timeout); returns Wait when etcd is unreachable.
    fn decide(&self, digest: &str) -> impl Future<Output = Decision> + Send;
    /// Gives the slot back (after a commit or a verified rollback), or leaves
    /// the slot queue (the host no longer wants a slot); either way `view()`
    /// no longer says it waits. A no-op when it has neither; a held slot is
    /// given back by the gate in the background when etcd is unreachable now.
    fn release(&self) -> impl Future<Output = Result<(), FleetError>> + Send;
    /// Records how the update to `digest` ended; may halt the digest for the group.
    fn report_outcome(
        &self,
        digest: &str,
        outcome: Outcome,
        detail: &str,
    ) -> impl Future<Output = Result<(), FleetError>> + Send;
    /// Publishes what this host runs (for `gpu-fleet hosts` and rollout status).
    fn report_host(&self, report: HostReport) -> impl Future<Output = ()> + Send;
    /// The digest the group's latest rollout wants (the previous one after an
    /// abort); `None` when the group never had a rollout (follow the registry/hub).
    fn desired(&self) -> Option<String>;
    /// Resolves when something a waiting host cares about changed (rollout,
    /// policy, halt, a slot freed, a canary verified, etcd back, bake over).
    fn changed(&self) -> impl Future<Output = ()> + Send;
    /// For status: group, slot, rollout state, why it waits.
    fn view(&self) -> FleetView;
}

/// What a host publishes about itself under its lease.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostReport {
    /// The digest the worker runs.
    pub digest: Option<String>,
    /// The update phase (`idle`, `pulling`, `draining`, `swapping`, `verifying`, ...).
    pub phase: String,
    /// GPU health in a word (`ok`, `degraded`, `unknown`).
    pub gpu: String,
    /// The last history event, in a few words.
    pub last_event: Option<String>,
}

/// The gate of a host without a `[fleet]` table: it decides alone (always Go,
/// no desired digest), so the core can take a `FleetGate` either way.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoneHost;

impl FleetGate for LoneHost {
    async fn decide(&self, _digest: &str) -> Decision {
        Decision::Go { slot: 0 }
    }
    async fn release(&self) -> Result<(), FleetError> {
        Ok(())
    }
    async fn report_outcome(&self, _: &str, _: Outcome, _: &str) -> Result<(), FleetError> {
        Ok(())
    }
    async fn report_host(&self, _report: HostReport) {}
    fn desired(&self) -> Option<String> {
        None
    }
    async fn changed(&self) {
        std::future::pending::<()>().await
    }
    fn view(&self) -> FleetView {
        FleetView::default()
    }
}
