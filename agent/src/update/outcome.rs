//! What an update, a check or an operator's action comes to: its
//! [`CheckOutcome`], the [`UpdateError`] that stopped it, and, for a swap
//! that did not commit, whose fault it was ([`Failure`], [`Blame`]).

use super::journal::JournalError;
use super::machine::InvalidTransition;
use crate::docker::EngineError;
use crate::registry::RegistryError;

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Transition(#[from] InvalidTransition),
    #[error("a container named {name} exists that this agent does not manage (its gpu-agent.agent label is {label}, this agent is {agent_id}); it was left alone: remove or rename it, or set worker.name to another name")]
    NameTaken {
        name: String,
        label: String,
        agent_id: String,
    },
}

/// What one check led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The worker already runs the target digest.
    UpToDate,
    /// The target digest is marked bad; it is not tried again.
    SkippedBad(String),
    /// Updates are held (drained or pinned).
    Held(&'static str),
    /// The target was rolled back before without a clear cause: it is tried
    /// again after a back-off (the text says when).
    Deferred(String),
    /// Maintenance: the worker is drained and stopped.
    Drained,
    /// The worker runs again after a maintenance drain and passed its health gate.
    Undrained,
    /// The pin is released.
    Unpinned,
    /// The worker now runs this digest.
    Updated(String),
    /// The target failed; the worker is back on the old digest.
    RolledBack { target: String, error: String },
    /// The update stopped before the old worker was touched.
    Aborted(String),
    /// The update failed and no good worker could be put back.
    Failed(String),
    /// The agent stopped mid-update with a worker running but not yet
    /// verified; the journal resumes the verification at the next start.
    Suspended(String),
}

/// Whose fault a failed swap was, which decides whether the digest is marked bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The new worker itself failed (exited, restarted, unhealthy): mark it bad now.
    Image,
    /// Something went wrong around it (an engine call refused): count a strike;
    /// three in a row mark it bad, so a persistent problem does not loop.
    Strike,
    /// The engine was unreachable or timed out: says nothing about the image.
    None,
    /// Not a failure: the agent's stop budget ran out before the worker was
    /// verified. The journal keeps the step; the next start resumes it.
    Stopped,
    /// A hardware-class XID on the worker's GPUs: not the image's fault. The
    /// digest is not marked; after the rollback updates are held and, with
    /// `gpu.drain_on_fault`, the worker is drained.
    GpuFault,
}

/// The outcome of a swap attempt that did not commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub error: String,
    pub blame: Blame,
}

impl Failure {
    pub fn new(error: String, blame: Blame) -> Self {
        Failure { error, blame }
    }

    /// The new worker's own fault.
    pub fn image(error: String) -> Self {
        Failure::new(error, Blame::Image)
    }

    /// The agent stopped before the worker was verified.
    pub fn stopped() -> Self {
        Failure::new(
            "the agent stopped before the worker was verified; the verification resumes when it starts again".into(),
            Blame::Stopped,
        )
    }

    pub fn from_error(e: &UpdateError) -> Self {
        let blame = match e {
            UpdateError::Engine(e)
                if e.is_engine_down() || e.is_gpu_unavailable() || e.is_host_trouble() =>
            {
                Blame::None
            }
            UpdateError::Registry(r) if r.is_transient() => Blame::None,
            UpdateError::Journal(_) | UpdateError::NameTaken { .. } => Blame::None,
            _ => Blame::Strike,
        };
        Failure::new(crate::error_chain(e), blame)
    }
}
