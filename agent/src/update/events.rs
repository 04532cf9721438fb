//! What the update tells the rest of the agent: history entries, phase
//! changes, GPU readings and XIDs, as [`Event`]s. The update never calls the
//! metrics or the hub reporter itself; the daemon, which knows both sides,
//! subscribes them ([`super::Updater::subscribe`]).
//!
//! Subscribers run synchronously, in order, on the loop's task: they must
//! only record or queue (a counter, a bounded channel), never wait.

use time::OffsetDateTime;

use super::journal::HistoryEntry;
use super::machine::Phase;
use crate::gpu::{Assessment, Snapshot, Xid};

/// One thing that happened in the update.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A history entry was written; `started` is when its update began.
    History {
        entry: &'a HistoryEntry,
        started: Option<OffsetDateTime>,
    },
    /// The phase changed.
    Phase(Phase),
    /// A check asked the registry (or the hub) which digest to run: `ok`
    /// when it answered.
    Checked { ok: bool, at: OffsetDateTime },
    /// The worker was verified (`true`), or failed its verification.
    WorkerHealth(bool),
    /// The GPUs were read and judged (the pre-flight).
    GpusRead {
        snapshot: &'a Snapshot,
        assessment: &'a Assessment,
    },
    /// The GPUs could not be read.
    GpusUnreadable,
    /// An XID the fault watch looked at.
    Xid(&'a Xid),
}

/// A subscriber to the update's events.
pub type Subscriber = Box<dyn Fn(&Event<'_>) + Send + Sync>;

/// The subscribers, called in the order they were added.
#[derive(Default)]
pub struct Subscribers(Vec<Subscriber>);

impl Subscribers {
    pub fn add(&mut self, s: Subscriber) {
        self.0.push(s);
    }

    pub fn send(&self, e: &Event<'_>) {
        for s in &self.0 {
            s(e);
        }
    }
}
