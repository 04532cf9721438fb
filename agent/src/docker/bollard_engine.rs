//! [`Engine`] over the Docker Engine API through bollard.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bollard::auth::DockerCredentials;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerUpdateBody, HealthStatusEnum};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, ListImagesOptions,
    LogsOptions, RemoveContainerOptions, RemoveImageOptions, RenameContainerOptions,
    StopContainerOptions,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures_util::StreamExt;
use tracing::{debug, info, warn};

use super::spec::restart_policy;
use super::{
    Container, Engine, EngineError, HealthState, WorkerSpec, LABEL_AGENT, LABEL_DIGEST,
    LABEL_MANAGED,
};
use crate::registry::EngineCredentials;

/// Timeout for one ordinary engine request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// A pull that reports no progress for this long is abandoned.
const PULL_STALL: Duration = Duration::from_secs(300);

/// How long the first call waits for the engine to say its API version.
const NEGOTIATE_TIMEOUT: Duration = Duration::from_secs(10);
/// `image.pull_timeout` until the daemon sets it.
const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The engine at one address. Making one does no I/O: the API version is
/// negotiated by the first call that reaches the engine, so an agent starts
/// (and says what it waits for) while the engine is down.
#[derive(Clone)]
pub struct BollardEngine {
    /// Not yet negotiated: bollard's default API version.
    base: Docker,
    /// The client at the version the engine speaks, once it answered.
    api: Arc<tokio::sync::OnceCell<Docker>>,
    host: String,
    agent_id: String,
    /// `image.pull_timeout` in milliseconds, shared by the clones.
    pull_timeout_ms: Arc<AtomicU64>,
}

impl BollardEngine {
    /// The engine at `host` (`unix://…`, `tcp://…`, `http://…`), without
    /// touching it; the first call negotiates the API version (hosts run
    /// engines older than bollard's default).
    pub fn new(host: &str, agent_id: &str) -> Result<Self, EngineError> {
        let secs = REQUEST_TIMEOUT.as_secs();
        let base = if host.starts_with("unix://") {
            Docker::connect_with_unix(host, secs, API_DEFAULT_VERSION)
        } else {
            Docker::connect_with_http(host, secs, API_DEFAULT_VERSION)
        }
        .map_err(|e| EngineError::Unreachable {
            host: host.to_string(),
            message: e.to_string(),
        })?;
        Ok(BollardEngine {
            base,
            api: Arc::new(tokio::sync::OnceCell::new()),
            host: host.to_string(),
            agent_id: agent_id.to_string(),
            pull_timeout_ms: Arc::new(AtomicU64::new(DEFAULT_PULL_TIMEOUT.as_millis() as u64)),
        })
    }

    /// [`BollardEngine::new`], then negotiates the API version and pings.
    pub async fn connect(host: &str, agent_id: &str) -> Result<Self, EngineError> {
        let engine = Self::new(host, agent_id)?;
        engine
            .api()
            .await?
            .ping()
            .await
            .map_err(|e| engine.err("ping", "", e))?;
        Ok(engine)
    }

    /// The client at the engine's API version, negotiated on first use.
    async fn api(&self) -> Result<&Docker, EngineError> {
        self.api
            .get_or_try_init(|| async {
                let unreachable = |message: String| EngineError::Unreachable {
                    host: self.host.clone(),
                    message,
                };
                let docker = tokio::time::timeout(
                    NEGOTIATE_TIMEOUT,
                    self.base.clone().negotiate_version(),
                )
                .await
                .map_err(|_| {
                    unreachable(format!(
                        "no answer to the API version request within {}s",
                        NEGOTIATE_TIMEOUT.as_secs()
                    ))
                })?
                .map_err(|e| unreachable(e.to_string()))?;
                debug!(host = %self.host, version = ?docker.client_version(), "connected to docker engine");
                Ok(docker)
            })
            .await
    }

    /// The bollard client (negotiated once the engine has answered).
    pub fn docker(&self) -> &Docker {
        self.api.get().unwrap_or(&self.base)
    }

    /// The longest a pull may take (`image.pull_timeout`), for this engine
    /// and its clones.
    pub fn set_pull_timeout(&self, d: Duration) {
        self.pull_timeout_ms.store(
            d.as_millis().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    fn pull_timeout(&self) -> Duration {
        Duration::from_millis(self.pull_timeout_ms.load(Ordering::Relaxed))
    }

    fn err(&self, op: &'static str, target: &str, e: BollardError) -> EngineError {
        match e {
            BollardError::DockerResponseServerError {
                status_code,
                message,
            } => EngineError::Call {
                op,
                target: target.to_string(),
                message,
                status: Some(status_code),
            },
            BollardError::RequestTimeoutError => EngineError::Timeout {
                op,
                target: target.to_string(),
                secs: REQUEST_TIMEOUT.as_secs(),
            },
            e @ (BollardError::HyperResponseError { .. }
            | BollardError::HyperLegacyError { .. }
            | BollardError::IOError { .. }
            | BollardError::SocketNotFoundError(_)) => EngineError::Unreachable {
                host: self.host.clone(),
                message: e.to_string(),
            },
            e => EngineError::Call {
                op,
                target: target.to_string(),
                message: e.to_string(),
                status: None,
            },
        }
    }
}

/// A start the engine refused because it cannot serve the GPU device
/// requests becomes [`EngineError::GpuUnavailable`], with what to do.
fn gpu_unavailable(e: EngineError) -> EngineError {
    match e {
        EngineError::Call {
            target, message, ..
        } if message.contains("could not select device driver")
            || message.contains("unresolvable CDI devices") =>
        {
            EngineError::GpuUnavailable { target, message }
        }
        e => e,
    }
}

fn to_container(r: bollard::models::ContainerInspectResponse) -> Container {
    let state = r.state.unwrap_or_default();
    let labels = r
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    let has_healthcheck = r
        .config
        .as_ref()
        .and_then(|c| c.healthcheck.as_ref())
        .and_then(|h| h.test.as_ref())
        .is_some_and(|t| !t.is_empty() && t[0] != "NONE");
    let health = match state.health.as_ref().and_then(|h| h.status) {
        _ if !has_healthcheck => HealthState::None,
        Some(HealthStatusEnum::HEALTHY) => HealthState::Healthy,
        Some(HealthStatusEnum::UNHEALTHY) => HealthState::Unhealthy,
        _ => HealthState::Starting,
    };
    Container {
        id: r.id.unwrap_or_default(),
        name: r
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        digest: labels.get(LABEL_DIGEST).cloned(),
        agent: labels.get(LABEL_AGENT).cloned(),
        spec: super::SpecHash::from_labels(&labels),
        running: state.running.unwrap_or(false),
        restarting: state.restarting.unwrap_or(false),
        status: state.status.map(|s| s.to_string()).unwrap_or_default(),
        exit_code: state.exit_code,
        restart_count: r.restart_count.unwrap_or(0),
        started_at: state.started_at.clone().filter(|s| !s.is_empty()),
        health,
        error: state.error.filter(|e| !e.is_empty()),
    }
}

impl Engine for BollardEngine {
    async fn list_managed(&self) -> Result<Vec<Container>, EngineError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_AGENT}={}", self.agent_id),
            ],
        )]);
        let list = self
            .api()
            .await?
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| self.err("list containers", "", e))?;
        let mut out = Vec::with_capacity(list.len());
        for c in list {
            let Some(id) = c.id else { continue };
            // Inspect for restart count and health; a container removed meanwhile is skipped.
            if let Some(c) = self.inspect(&id).await? {
                out.push(c);
            }
        }
        Ok(out)
    }

    async fn inspect(&self, id: &str) -> Result<Option<Container>, EngineError> {
        match self.api().await?.inspect_container(id, None).await {
            Ok(r) => Ok(Some(to_container(r))),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.err("inspect", id, e)),
        }
    }

    async fn has_image(&self, image_ref: &str) -> Result<bool, EngineError> {
        match self.api().await?.inspect_image(image_ref).await {
            Ok(_) => Ok(true),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(self.err("inspect image", image_ref, e)),
        }
    }

    async fn image_env(&self, image_ref: &str) -> Result<Vec<String>, EngineError> {
        let image = self
            .api()
            .await?
            .inspect_image(image_ref)
            .await
            .map_err(|e| self.err("inspect image", image_ref, e))?;
        Ok(image.config.and_then(|c| c.env).unwrap_or_default())
    }

    async fn pull(
        &self,
        image_ref: &str,
        creds: Option<EngineCredentials>,
    ) -> Result<(), EngineError> {
        let (repo, reference) = match image_ref.rsplit_once('@') {
            Some((r, d)) => (r, d),
            None => (image_ref, "latest"),
        };
        let creds = creds.map(|c| DockerCredentials {
            username: c.username,
            password: c.password,
            identitytoken: c.identitytoken,
            serveraddress: Some(c.serveraddress),
            ..Default::default()
        });
        let docker = self.api().await?;
        let mut stream = docker.create_image(
            Some(CreateImageOptions {
                from_image: Some(repo.to_string()),
                tag: Some(reference.to_string()),
                ..Default::default()
            }),
            None,
            creds,
        );
        // However it progresses, a pull ends by `image.pull_timeout`.
        let limit = self.pull_timeout();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let wait =
                PULL_STALL.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            match tokio::time::timeout(wait, stream.next()).await {
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(EngineError::PullTimeout {
                        image: image_ref.to_string(),
                        secs: limit.as_secs(),
                    })
                }
                Err(_) => {
                    return Err(EngineError::PullStalled {
                        image: image_ref.to_string(),
                        secs: PULL_STALL.as_secs(),
                    })
                }
                Ok(None) => break,
                Ok(Some(Ok(info))) => {
                    if let Some(e) = info.error_detail.and_then(|d| d.message) {
                        return Err(EngineError::Pull {
                            image: image_ref.to_string(),
                            message: e,
                        });
                    }
                }
                Ok(Some(Err(BollardError::DockerStreamError { error }))) => {
                    return Err(EngineError::Pull {
                        image: image_ref.to_string(),
                        message: error,
                    })
                }
                Ok(Some(Err(BollardError::DockerResponseServerError { message, .. }))) => {
                    return Err(EngineError::Pull {
                        image: image_ref.to_string(),
                        message,
                    })
                }
                Ok(Some(Err(e))) => return Err(self.err("pull", image_ref, e)),
            }
        }
        // The stream can end cleanly without the image (old engines); make sure.
        if !self.has_image(image_ref).await? {
            return Err(EngineError::Pull {
                image: image_ref.to_string(),
                message: "the engine finished the pull but does not have the image".into(),
            });
        }
        Ok(())
    }

    async fn create(&self, name: &str, spec: &WorkerSpec) -> Result<String, EngineError> {
        let r = self
            .api()
            .await?
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.to_string()),
                    ..Default::default()
                }),
                spec.create_body(),
            )
            .await
            .map_err(|e| self.err("create", name, e))?;
        for w in r.warnings {
            warn!(container = name, warning = %w, "engine warning on create");
        }
        Ok(r.id)
    }

    async fn start(&self, id: &str) -> Result<(), EngineError> {
        self.api()
            .await?
            .start_container(id, None)
            .await
            .map_err(|e| gpu_unavailable(self.err("start", id, e)))
    }

    async fn stop(&self, id: &str, timeout: Duration) -> Result<(), EngineError> {
        let secs = timeout.as_secs().min(i32::MAX as u64) as i32;
        // The engine answers only once the container is down (up to `timeout`
        // before SIGKILL): the request may take that long plus the usual margin.
        self.api()
            .await?
            .clone()
            .with_timeout(timeout + REQUEST_TIMEOUT)
            .stop_container(
                id,
                Some(StopContainerOptions {
                    t: Some(secs),
                    signal: None,
                }),
            )
            .await
            .map_err(|e| match self.err("stop", id, e) {
                EngineError::Timeout { op, target, .. } => EngineError::Timeout {
                    op,
                    target,
                    secs: (timeout + REQUEST_TIMEOUT).as_secs(),
                },
                e => e,
            })
    }

    async fn remove(&self, id: &str) -> Result<(), EngineError> {
        match self
            .api()
            .await?
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(self.err("remove", id, e)),
        }
    }

    async fn rename(&self, id: &str, name: &str) -> Result<(), EngineError> {
        self.api()
            .await?
            .rename_container(
                id,
                RenameContainerOptions {
                    name: name.to_string(),
                },
            )
            .await
            .map_err(|e| self.err("rename", id, e))
    }

    async fn set_restart(
        &self,
        id: &str,
        policy: &str,
        max_retries: Option<u32>,
    ) -> Result<(), EngineError> {
        self.api()
            .await?
            .update_container(
                id,
                ContainerUpdateBody {
                    restart_policy: Some(restart_policy(policy, max_retries)),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| self.err("update restart policy", id, e))
    }

    async fn logs_tail(&self, id: &str, lines: usize) -> Result<String, EngineError> {
        let mut stream = self.api().await?.logs(
            id,
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                tail: lines.to_string(),
                ..Default::default()
            }),
        );
        let mut out = String::new();
        let read = async {
            while let Some(item) = stream.next().await {
                match item {
                    Ok(chunk) => out.push_str(&chunk.to_string()),
                    Err(e) => return Err(self.err("logs", id, e)),
                }
            }
            Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(10), read).await {
            Ok(r) => r?,
            Err(_) => debug!(container = id, "log tail timed out"),
        }
        Ok(out)
    }

    async fn prune_images(&self, repository: &str, keep: &[String]) -> Result<usize, EngineError> {
        let images = self
            .api()
            .await?
            .list_images(Some(ListImagesOptions {
                all: false,
                digests: true,
                ..Default::default()
            }))
            .await
            .map_err(|e| self.err("list images", repository, e))?;
        // The engine may name Docker Hub images short: "acme/w@…", "ubuntu@…".
        let mut prefixes = vec![format!("{repository}@")];
        if let Some(short) = repository.strip_prefix("docker.io/") {
            prefixes.push(format!("{short}@"));
            if let Some(shorter) = short.strip_prefix("library/") {
                prefixes.push(format!("{shorter}@"));
            }
        }
        let mut removed = 0;
        for img in images {
            for reference in img
                .repo_digests
                .iter()
                .filter(|d| prefixes.iter().any(|p| d.starts_with(p.as_str())))
            {
                if keep.iter().any(|k| reference.ends_with(k.as_str())) {
                    continue;
                }
                // Remove our reference only: an image another name still uses stays,
                // and one a container uses is refused (409) and left alone.
                match self
                    .api()
                    .await?
                    .remove_image(
                        reference,
                        Some(RemoveImageOptions {
                            force: false,
                            noprune: false,
                            ..Default::default()
                        }),
                        None,
                    )
                    .await
                {
                    Ok(_) => {
                        removed += 1;
                        info!(image = %reference, "pruned old worker image");
                    }
                    Err(e) => debug!(image = %reference, error = %e, "not pruned"),
                }
            }
        }
        Ok(removed)
    }
}
