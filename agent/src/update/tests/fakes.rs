//! Fakes of the update's ports for the driver's unit tests: a registry whose
//! tags are a map, a hub whose answers are scripted, a worker probe whose
//! in-flight count and health are set by the test, and a clock that follows
//! paused tokio time. Each records what it was asked.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use hub_client::{Desired, HubError, WorkerView};
use time::OffsetDateTime;
use url::Url;

use crate::config::HubSettings;
use crate::registry::{
    select_version, EngineCredentials, ImageName, Policy, RegistryError, Resolved,
};
use crate::trust::TrustError;
use crate::update::ports::{Clock, Hub, Probe, Registry, Trust};
use crate::worker::ProbeError;

/// A registry whose tags point where the test says.
#[derive(Default)]
pub struct FakeRegistry {
    tags: Mutex<HashMap<String, String>>,
    /// Answers 503 while set.
    pub down: AtomicBool,
    pub resolves: AtomicUsize,
}

impl FakeRegistry {
    pub fn tag(&self, tag: &str, digest: &str) {
        self.tags
            .lock()
            .unwrap()
            .insert(tag.to_string(), digest.to_string());
    }
}

impl Registry for FakeRegistry {
    fn resolve<'a>(
        &'a self,
        image: &'a ImageName,
        policy: &'a Policy,
    ) -> BoxFuture<'a, Result<Resolved, RegistryError>> {
        self.resolves.fetch_add(1, Ordering::SeqCst);
        let url = format!("https://{}/v2/{}/", image.registry, image.repository);
        let r = if self.down.load(Ordering::SeqCst) {
            Err(RegistryError::Status {
                url,
                status: 503,
                detail: String::new(),
            })
        } else {
            let tags = self.tags.lock().unwrap();
            let tag = match policy {
                Policy::Tag(t) => Some(t.clone()),
                Policy::Version(req) => {
                    let names: Vec<String> = tags.keys().cloned().collect();
                    select_version(&names, req).map(|(t, _)| t)
                }
            };
            match tag.and_then(|t| tags.get(&t).map(|d| (t, d.clone()))) {
                Some((tag, digest)) => Ok(Resolved { tag, digest }),
                None => Err(RegistryError::NotFound {
                    what: format!("{policy}"),
                    url,
                }),
            }
        };
        async move { r }.boxed()
    }

    fn engine_credentials<'a>(
        &'a self,
        _image: &'a ImageName,
    ) -> BoxFuture<'a, Result<Option<EngineCredentials>, RegistryError>> {
        async { Ok(None) }.boxed()
    }
}

/// A hub whose answers are scripted.
pub struct FakeHub {
    settings: HubSettings,
    /// `GET desired`: `Err(())` is a hub that cannot be reached.
    pub desired: Mutex<Result<Option<Desired>, ()>>,
    /// `GET /v1/workers/{id}`: answered from the front while more than one
    /// is queued, then the last one again; `None` is a hub that cannot be reached.
    pub workers: Mutex<VecDeque<Option<WorkerView>>>,
    /// `POST drain`: `(draining, reason)` in order.
    pub notices: Mutex<Vec<(bool, String)>>,
    /// `POST drain` fails while set.
    pub refuse_notices: AtomicBool,
    pub worker_calls: AtomicUsize,
}

fn unreachable_hub(call: &str) -> HubError {
    HubError::Timeout {
        call: call.to_string(),
        secs: 5.0,
    }
}

impl FakeHub {
    pub fn new(settings: HubSettings) -> Self {
        FakeHub {
            settings,
            desired: Mutex::new(Ok(None)),
            workers: Mutex::new(VecDeque::from([None])),
            notices: Mutex::default(),
            refuse_notices: AtomicBool::new(false),
            worker_calls: AtomicUsize::new(0),
        }
    }

    pub fn want(&self, repository: &str, digest: &str) {
        *self.desired.lock().unwrap() = Ok(Some(Desired {
            repository: repository.to_string(),
            digest: digest.to_string(),
        }));
    }

    /// The hub's view of the worker, answered from now on (after any queued).
    pub fn sees(&self, views: &[Option<WorkerView>]) {
        let mut w = self.workers.lock().unwrap();
        w.clear();
        w.extend(views.iter().cloned());
    }

    pub fn notices(&self) -> Vec<(bool, String)> {
        self.notices.lock().unwrap().clone()
    }
}

impl Hub for FakeHub {
    fn settings(&self) -> &HubSettings {
        &self.settings
    }

    fn desired(&self) -> BoxFuture<'_, Result<Option<Desired>, HubError>> {
        let r = self
            .desired
            .lock()
            .unwrap()
            .clone()
            .map_err(|()| unreachable_hub("desired"));
        async move { r }.boxed()
    }

    fn worker(&self) -> BoxFuture<'_, Result<WorkerView, HubError>> {
        self.worker_calls.fetch_add(1, Ordering::SeqCst);
        let mut w = self.workers.lock().unwrap();
        let view = if w.len() > 1 {
            w.pop_front().flatten()
        } else {
            w.front().cloned().flatten()
        };
        let r = view.ok_or_else(|| unreachable_hub("worker"));
        async move { r }.boxed()
    }

    fn drain_notice<'a>(
        &'a self,
        draining: bool,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), HubError>> {
        let r = if self.refuse_notices.load(Ordering::SeqCst) {
            Err(unreachable_hub("drain"))
        } else {
            self.notices
                .lock()
                .unwrap()
                .push((draining, reason.to_string()));
            Ok(())
        };
        async move { r }.boxed()
    }
}

/// A worker whose endpoints answer what the test sets.
#[derive(Default)]
pub struct FakeProbe {
    /// In-flight counts, answered from the front while more than one is queued.
    pub in_flight: Mutex<VecDeque<u64>>,
    /// `health.http` fails while set.
    pub unhealthy: AtomicBool,
    /// `DELETE` on the drain endpoint answers 405 while set (an older worker).
    pub refuse_delete: AtomicBool,
    /// Calls, as `"METHOD path"`.
    pub calls: Mutex<Vec<String>>,
}

impl FakeProbe {
    fn call(&self, method: &str, url: &Url) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("{method} {}", url.path()));
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Probe for FakeProbe {
    fn health<'a>(&'a self, url: &'a Url) -> BoxFuture<'a, Result<(), ProbeError>> {
        self.call("GET", url);
        let r = if self.unhealthy.load(Ordering::SeqCst) {
            Err(ProbeError::Status {
                method: "GET",
                url: url.to_string(),
                status: 503,
            })
        } else {
            Ok(())
        };
        async move { r }.boxed()
    }

    fn drain_start<'a>(&'a self, url: &'a Url) -> BoxFuture<'a, Result<(), ProbeError>> {
        self.call("POST", url);
        async { Ok(()) }.boxed()
    }

    fn drain_cancel<'a>(&'a self, url: &'a Url) -> BoxFuture<'a, Result<(), ProbeError>> {
        self.call("DELETE", url);
        let r = if self.refuse_delete.load(Ordering::SeqCst) {
            Err(ProbeError::Status {
                method: "DELETE",
                url: url.to_string(),
                status: 405,
            })
        } else {
            Ok(())
        };
        async move { r }.boxed()
    }

    fn in_flight<'a>(&'a self, url: &'a Url) -> BoxFuture<'a, Result<u64, ProbeError>> {
        self.call("GET", url);
        let mut q = self.in_flight.lock().unwrap();
        let n = if q.len() > 1 {
            q.pop_front().unwrap_or(0)
        } else {
            q.front().copied().unwrap_or(0)
        };
        async move { Ok(n) }.boxed()
    }
}

/// Wall time that moves with (paused) tokio time.
pub struct FakeClock {
    base: OffsetDateTime,
    start: tokio::time::Instant,
}

impl Default for FakeClock {
    fn default() -> Self {
        FakeClock {
            base: OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for FakeClock {
    fn now(&self) -> OffsetDateTime {
        self.base + self.start.elapsed()
    }
}

/// `[image.verify]` as the test says: the digests whose signatures verify,
/// and when each may be deployed.
#[derive(Default)]
pub struct FakeTrust {
    pub signed: Mutex<Vec<String>>,
    /// `min_age`: deployable this long after first seen.
    pub min_age: Option<time::Duration>,
}

impl Trust for FakeTrust {
    fn verify<'a>(
        &'a self,
        image: &'a ImageName,
        digest: &'a str,
    ) -> BoxFuture<'a, Result<(), TrustError>> {
        let ok = self.signed.lock().unwrap().iter().any(|d| d == digest);
        let r = if ok {
            Ok(())
        } else {
            Err(TrustError::Unsigned {
                repository: image.to_string(),
                digest: digest.to_string(),
                tag: format!("{}.sig", digest.replace(':', "-")),
            })
        };
        async move { r }.boxed()
    }

    fn deployable_at<'a>(
        &'a self,
        _image: &'a ImageName,
        _digest: &'a str,
        first_seen: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Option<OffsetDateTime>, RegistryError>> {
        let at = self.min_age.map(|a| first_seen + a);
        async move { Ok(at) }.boxed()
    }
}
