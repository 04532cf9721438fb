//! The Docker engine: a small [`Engine`] trait over what the update needs, its
//! bollard implementation ([`BollardEngine`]), and the pure mapping from the
//! worker settings to the container the engine creates ([`spec`]).
//!
//! Architecture invariant: only `update/` decides which container runs; this
//! module only carries out single engine calls.

mod bollard_engine;
#[cfg(any(test, feature = "sim"))]
pub mod fake;
pub mod spec;

use std::future::Future;
use std::time::Duration;

pub use bollard_engine::BollardEngine;
pub use spec::{SpecHash, WorkerSpec};

use crate::registry::EngineCredentials;

/// Label set on every container the agent manages.
pub const LABEL_MANAGED: &str = "gpu-agent.managed";
/// Label holding the image digest (`sha256:…`) a managed container runs.
pub const LABEL_DIGEST: &str = "gpu-agent.digest";
/// Label holding the agent id, so that agents sharing an engine (tests) keep apart.
pub const LABEL_AGENT: &str = "gpu-agent.agent";
/// Label holding the hash of the worker settings the container was made of
/// (`sha256:…`, see [`SpecHash`]); absent on containers made by versions before it.
pub const LABEL_SPEC: &str = "gpu-agent.spec";
/// Label naming the keys [`LABEL_SPEC`] covers, each with a short hash (JSON).
pub const LABEL_SPEC_KEYS: &str = "gpu-agent.spec.keys";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthState {
    /// The container has no HEALTHCHECK.
    None,
    Starting,
    Healthy,
    Unhealthy,
}

/// What the agent needs to know of one managed container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    pub digest: Option<String>,
    /// The `gpu-agent.agent` label: which agent manages it (`None`: no agent does).
    pub agent: Option<String>,
    /// The worker settings it was made of (`gpu-agent.spec` labels; `None`:
    /// made by a version before them).
    pub spec: Option<SpecHash>,
    pub running: bool,
    pub restarting: bool,
    /// `created`, `running`, `exited`, ... as the engine says.
    pub status: String,
    pub exit_code: Option<i64>,
    pub restart_count: i64,
    /// When the engine last started it (RFC 3339, as the engine says): a
    /// change without a restart of its own means the engine restarted it.
    pub started_at: Option<String>,
    pub health: HealthState,
    /// The engine's own error text for the last start, if any.
    pub error: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("cannot reach the docker engine at {host}: {message} (is dockerd running, and may this user use its socket?)")]
    Unreachable { host: String, message: String },
    #[error("pulling {image}: {message}")]
    Pull { image: String, message: String },
    #[error("pulling {image}: no progress for {secs}s, gave up")]
    PullStalled { image: String, secs: u64 },
    /// The pull went on past `image.pull_timeout`, however it progressed.
    #[error("pulling {image}: not done within {secs}s (image.pull_timeout), gave up; the running worker is kept and the next check tries again")]
    PullTimeout { image: String, secs: u64 },
    #[error("docker {op} {target}: {message}")]
    Call {
        op: &'static str,
        target: String,
        message: String,
        status: Option<u16>,
    },
    /// The engine cannot give the container its GPUs: no NVIDIA device
    /// driver (the NVIDIA Container Toolkit's hook was not on dockerd's PATH
    /// when it started) or no CDI spec for the devices asked for.
    #[error("the docker engine cannot give {target} its GPUs ({message}): install the NVIDIA Container Toolkit and restart dockerd (with worker.gpus_via = \"cdi\": generate the CDI spec with `nvidia-ctk cdi generate`), or set worker.gpus = \"none\"; this says nothing about the image")]
    GpuUnavailable { target: String, message: String },
    #[error("docker {op} {target}: timed out after {secs}s")]
    Timeout {
        op: &'static str,
        target: String,
        secs: u64,
    },
}

impl EngineError {
    /// The engine answered 404 for this call.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            EngineError::Call {
                status: Some(404),
                ..
            }
        )
    }

    /// The engine cannot serve GPU requests (see [`EngineError::GpuUnavailable`]).
    pub fn is_gpu_unavailable(&self) -> bool {
        matches!(self, EngineError::GpuUnavailable { .. })
    }

    /// The engine could not be reached or did not answer in time: a fact about
    /// the engine, never about the image being deployed.
    pub fn is_engine_down(&self) -> bool {
        matches!(
            self,
            EngineError::Unreachable { .. } | EngineError::Timeout { .. }
        )
    }

    /// A failure of the host, not of the image: a full or read-only disk,
    /// memory or file handles short, a name held by another container.
    pub fn is_host_trouble(&self) -> bool {
        let (message, status) = match self {
            EngineError::Call {
                message, status, ..
            } => (message, *status),
            EngineError::Pull { message, .. } => (message, None),
            _ => return false,
        };
        let m = message.to_ascii_lowercase();
        status == Some(409)
            || [
                "no space left on device",
                "read-only file system",
                "disk quota exceeded",
                "too many open files",
                "cannot allocate memory",
                "already in use",
            ]
            .iter()
            .any(|p| m.contains(p))
    }

    /// The engine would not create the container for a reason of the image
    /// or its spec (not the host's: see [`EngineError::is_host_trouble`]).
    pub fn is_create_refused_for_the_image(&self) -> bool {
        matches!(self, EngineError::Call { op: "create", .. }) && !self.is_host_trouble()
    }

    /// A pull failure that will not go away by trying again: the registry does
    /// not have the image (or a blob of it), or refuses us. Rate limits, full
    /// disks, stalls and network errors are not.
    pub fn is_permanent_pull_failure(&self) -> bool {
        let EngineError::Pull { message, .. } = self else {
            return false;
        };
        let m = message.to_ascii_lowercase();
        [
            "manifest unknown",
            "not found",
            "blob unknown",
            "unknown blob",
            "denied",
            "unauthorized",
            "no matching manifest",
        ]
        .iter()
        .any(|p| m.contains(p))
    }
}

/// The engine calls the update needs. Every call is one request with a timeout.
pub trait Engine: Send + Sync + 'static {
    /// All containers (running or not) labelled as managed by this agent.
    fn list_managed(&self) -> impl Future<Output = Result<Vec<Container>, EngineError>> + Send;
    /// One container by id or name; `None` if it does not exist.
    fn inspect(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<Container>, EngineError>> + Send;
    /// Whether the image `repo@digest` is present locally.
    fn has_image(&self, image_ref: &str) -> impl Future<Output = Result<bool, EngineError>> + Send;
    /// The environment the image sets (`KEY=value`), e.g. `NVIDIA_REQUIRE_CUDA`.
    fn image_env(
        &self,
        image_ref: &str,
    ) -> impl Future<Output = Result<Vec<String>, EngineError>> + Send;
    /// Pulls `repo@digest`.
    fn pull(
        &self,
        image_ref: &str,
        creds: Option<EngineCredentials>,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// Creates (does not start) the worker container; returns its id.
    fn create(
        &self,
        name: &str,
        spec: &WorkerSpec,
    ) -> impl Future<Output = Result<String, EngineError>> + Send;
    fn start(&self, id: &str) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// SIGTERM, then SIGKILL after `timeout`. Stopping a stopped container is fine.
    fn stop(
        &self,
        id: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// Force-removes a container; a missing one is fine.
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), EngineError>> + Send;
    fn rename(&self, id: &str, name: &str) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// Changes the restart policy of an existing container (`no` before it is stopped
    /// for a swap, so a dockerd restart cannot bring it back beside the new one).
    fn set_restart(
        &self,
        id: &str,
        policy: &str,
        max_retries: Option<u32>,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// The last `lines` lines of the container's output.
    fn logs_tail(
        &self,
        id: &str,
        lines: usize,
    ) -> impl Future<Output = Result<String, EngineError>> + Send;
    /// Removes images of `repository` whose digest is not in `keep`; returns how many.
    fn prune_images(
        &self,
        repository: &str,
        keep: &[String],
    ) -> impl Future<Output = Result<usize, EngineError>> + Send;
}
