//! The update's edges to the outside world, as small traits: the registry
//! (which digest a tag or range names, and the engine's pull credentials),
//! the hub (its desired digest, drain notices, what it sees of the worker),
//! the worker's own HTTP endpoints, and the wall clock. The engine and the
//! GPUs have their own traits (`docker::Engine`, `gpu::GpuProbe`).
//!
//! Each has a real implementation (here for the registry, the worker probe
//! and the clock; in `hub.rs` for the hub, which sits above this module) and
//! a fake in the driver's unit tests. Durations are measured with
//! `tokio::time`, so those tests run on paused time; the [`Clock`] gives the
//! wall-clock time written into the journal and the history.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use hub_client::{Desired, HubError, WorkerView};
use time::OffsetDateTime;
use url::Url;

use crate::config::{HubSettings, Settings};
use crate::fleet::{
    Decision, FleetError, FleetGate, FleetView, HostReport, Outcome as FleetOutcome,
};
use crate::registry::{
    EngineCredentials, ImageName, Policy, RegistryClient, RegistryError, Resolved,
};
use crate::trust::{TrustError, Verifier};
use crate::worker::{ProbeError, WorkerClient};

/// The registry, as the update needs it.
pub trait Registry: Send + Sync {
    /// The tag the policy picks now and the digest it points at.
    fn resolve<'a>(
        &'a self,
        image: &'a ImageName,
        policy: &'a Policy,
    ) -> BoxFuture<'a, Result<Resolved, RegistryError>>;

    /// The credentials the engine needs to pull `image` (`None`: anonymous).
    fn engine_credentials<'a>(
        &'a self,
        image: &'a ImageName,
    ) -> BoxFuture<'a, Result<Option<EngineCredentials>, RegistryError>>;
}

impl Registry for RegistryClient {
    fn resolve<'a>(
        &'a self,
        image: &'a ImageName,
        policy: &'a Policy,
    ) -> BoxFuture<'a, Result<Resolved, RegistryError>> {
        RegistryClient::resolve(self, image, policy).boxed()
    }

    fn engine_credentials<'a>(
        &'a self,
        image: &'a ImageName,
    ) -> BoxFuture<'a, Result<Option<EngineCredentials>, RegistryError>> {
        RegistryClient::engine_credentials(self, image).boxed()
    }
}

/// The hub, as the update needs it (the event stream and the reporter run
/// beside the loop, in `hub.rs`).
pub trait Hub: Send + Sync {
    /// `[hub]`: whether the hub decides the digest, whether a new worker
    /// must register, and how long that may take.
    fn settings(&self) -> &HubSettings;
    /// `Ok(None)`: the hub has no opinion (follow the registry).
    fn desired(&self) -> BoxFuture<'_, Result<Option<Desired>, HubError>>;
    /// What the hub sees of this host's worker.
    fn worker(&self) -> BoxFuture<'_, Result<WorkerView, HubError>>;
    /// Stop (`true`) or resume (`false`) sending jobs to this host's worker.
    fn drain_notice<'a>(
        &'a self,
        draining: bool,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), HubError>>;
}

/// The worker's own HTTP endpoints (`worker.health.http`, `worker.drain.http`).
pub trait Probe: Send + Sync {
    fn health<'a>(&'a self, url: &'a Url) -> BoxFuture<'a, Result<(), ProbeError>>;
    fn drain_start<'a>(&'a self, url: &'a Url) -> BoxFuture<'a, Result<(), ProbeError>>;
    fn drain_cancel<'a>(&'a self, url: &'a Url) -> BoxFuture<'a, Result<(), ProbeError>>;
    fn in_flight<'a>(&'a self, url: &'a Url) -> BoxFuture<'a, Result<u64, ProbeError>>;
}

impl Probe for WorkerClient {
    fn health<'a>(&'a self, url: &'a Url) -> BoxFuture<'a, Result<(), ProbeError>> {
        WorkerClient::health(self, url).boxed()
    }
    fn drain_start<'a>(&'a self, url: &'a Url) -> BoxFuture<'a, Result<(), ProbeError>> {
        WorkerClient::drain_start(self, url).boxed()
    }
    fn drain_cancel<'a>(&'a self, url: &'a Url) -> BoxFuture<'a, Result<(), ProbeError>> {
        WorkerClient::drain_cancel(self, url).boxed()
    }
    fn in_flight<'a>(&'a self, url: &'a Url) -> BoxFuture<'a, Result<u64, ProbeError>> {
        WorkerClient::in_flight(self, url).boxed()
    }
}

/// What may be deployed at all (`[image.verify]`): a cosign signature by a
/// trusted key, and an age.
pub trait Trust: Send + Sync {
    /// `Ok` when `digest` carries a valid signature by a trusted key (or no
    /// keys are configured).
    fn verify<'a>(
        &'a self,
        image: &'a ImageName,
        digest: &'a str,
    ) -> BoxFuture<'a, Result<(), TrustError>>;

    /// When `digest`, first seen at `first_seen`, may be deployed under
    /// `min_age` (`None`: no `min_age`).
    fn deployable_at<'a>(
        &'a self,
        image: &'a ImageName,
        digest: &'a str,
        first_seen: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Option<OffsetDateTime>, RegistryError>>;
}

/// `[image.verify]` through the agent's registry client.
pub struct ImageTrust {
    registry: RegistryClient,
    verifier: Option<Verifier>,
    min_age: Option<std::time::Duration>,
}

impl ImageTrust {
    /// `None` without `[image.verify]`.
    pub fn of(settings: &Settings, registry: &RegistryClient) -> Option<ImageTrust> {
        let v = settings.image.verify.as_ref()?;
        Some(ImageTrust {
            registry: registry.clone(),
            verifier: v
                .cosign_keys
                .clone()
                .map(|k| Verifier::new(registry.clone(), k)),
            min_age: v.min_age,
        })
    }
}

impl Trust for ImageTrust {
    fn verify<'a>(
        &'a self,
        image: &'a ImageName,
        digest: &'a str,
    ) -> BoxFuture<'a, Result<(), TrustError>> {
        async move {
            match &self.verifier {
                Some(v) => v.verify(image, digest).await.map(|_| ()),
                None => Ok(()),
            }
        }
        .boxed()
    }

    fn deployable_at<'a>(
        &'a self,
        image: &'a ImageName,
        digest: &'a str,
        first_seen: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Option<OffsetDateTime>, RegistryError>> {
        async move {
            let Some(min_age) = self.min_age else {
                return Ok(None);
            };
            let created = crate::trust::image_created(&self.registry, image, digest).await?;
            Ok(Some(crate::trust::deployable_at(
                created, first_seen, min_age,
            )))
        }
        .boxed()
    }
}

/// The fleet group, as the update needs it: a slot before the old worker is
/// disrupted, the outcome after, the group's desired digest. The object-safe
/// face of [`crate::fleet::FleetGate`] (every gate is one); a host without
/// `[fleet]` has [`crate::fleet::LoneHost`], which always says Go.
pub trait Fleet: Send + Sync {
    fn decide<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Decision>;
    fn release(&self) -> BoxFuture<'_, Result<(), FleetError>>;
    fn report_outcome<'a>(
        &'a self,
        digest: &'a str,
        outcome: FleetOutcome,
        detail: &'a str,
    ) -> BoxFuture<'a, Result<(), FleetError>>;
    fn report_host(&self, report: HostReport) -> BoxFuture<'_, ()>;
    fn desired(&self) -> Option<String>;
    fn changed(&self) -> BoxFuture<'_, ()>;
    fn view(&self) -> FleetView;
    /// Whether this host is in a fleet group (`[fleet]` is set).
    fn grouped(&self) -> bool;
}

impl<G: FleetGate> Fleet for G {
    fn decide<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Decision> {
        FleetGate::decide(self, digest).boxed()
    }
    fn release(&self) -> BoxFuture<'_, Result<(), FleetError>> {
        FleetGate::release(self).boxed()
    }
    fn report_outcome<'a>(
        &'a self,
        digest: &'a str,
        outcome: FleetOutcome,
        detail: &'a str,
    ) -> BoxFuture<'a, Result<(), FleetError>> {
        FleetGate::report_outcome(self, digest, outcome, detail).boxed()
    }
    fn report_host(&self, report: HostReport) -> BoxFuture<'_, ()> {
        FleetGate::report_host(self, report).boxed()
    }
    fn desired(&self) -> Option<String> {
        FleetGate::desired(self)
    }
    fn changed(&self) -> BoxFuture<'_, ()> {
        FleetGate::changed(self).boxed()
    }
    fn view(&self) -> FleetView {
        FleetGate::view(self)
    }
    fn grouped(&self) -> bool {
        !FleetGate::view(self).group.is_empty()
    }
}

/// The wall clock: the times written into the journal and the history.
pub trait Clock: Send + Sync {
    fn now(&self) -> OffsetDateTime;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// The real edges, as the daemon wires them (the hub is optional and set apart).
pub struct Ports {
    pub registry: Arc<dyn Registry>,
    pub probe: Arc<dyn Probe>,
    pub clock: Arc<dyn Clock>,
    /// `[image.verify]`; `None` without it.
    pub trust: Option<Arc<dyn Trust>>,
}

impl Ports {
    /// The registry client given, the real worker probe, the system clock
    /// and `[image.verify]` through the same registry client.
    pub fn real(registry: RegistryClient, settings: &Settings) -> Self {
        Ports {
            trust: ImageTrust::of(settings, &registry).map(|t| Arc::new(t) as Arc<dyn Trust>),
            registry: Arc::new(registry),
            probe: Arc::new(WorkerClient::new()),
            clock: Arc::new(SystemClock),
        }
    }
}
