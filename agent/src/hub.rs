//! The hub: the adapter from `hub-client`'s wire types to what the agent
//! does with them.
//!
//! [`Hub`] wraps one [`HubClient`] and keeps what the agent knows of the hub
//! ([`HubStatus`], shown in `agentctl status` and `health`). It runs two
//! tasks beside the daemon loop, so a slow or dead hub never holds an update:
//! - the **event stream**: kept open, reconnected with exponential backoff
//!   and jitter, resumed with `Last-Event-ID`; each `nudge` goes to the loop;
//! - the **reporter**: posts the status after every history entry (with the
//!   entry as `event`) and as a heartbeat after each poll, in order.
//!
//! The updater calls [`Hub::desired`], [`Hub::drain_notice`] and
//! [`Hub::worker`] itself, at the points of the update they belong to,
//! through its port (`update::ports::Hub`, implemented here); it tells the
//! reporter what happened through its events ([`Hub::subscriber`]).
//! Architecture invariant: the hub never changes which container runs by
//! itself; it only tells `update/` what to aim for.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use hub_client::{
    sse, Desired, DrainNotice, HubClient, HubError, HubOptions, Nudge, Report, TokenSource,
    WorkerView,
};
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{HubSettings, Settings};
use crate::update::journal::HistoryEntry;
use crate::update::View;

/// The event stream is reconnected after `1 s · 2^n`, at most this, plus jitter.
const STREAM_BACKOFF_CAP: Duration = Duration::from_secs(60);
/// A stream that stayed open this long (or brought an event) was healthy:
/// the backoff starts again from 1 s. One that a hub accepts and closes at
/// once keeps backing off.
const STREAM_HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// Events kept for the hub while it does not take reports.
const REPORT_BACKLOG: usize = 1000;
/// How long a stopping agent gives the hub to take the queued reports.
pub const REPORT_FLUSH: Duration = Duration::from_secs(3);
/// Unsent events are tried again after this.
const REPORT_RETRY: Duration = Duration::from_secs(10);
/// Per-call timeout of the agent's hub calls (each retried twice on transient errors).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub use crate::update::HubStatus;

/// What the reporter is asked to send.
enum ReportMsg {
    /// Something happened: the status with this entry.
    Event(Box<HistoryEntry>),
    /// A heartbeat: the status alone.
    Heartbeat,
    /// Time to try the unsent events again.
    Retry,
}

/// The hub's nudges on their way to the loop. Only the newest is kept: a
/// nudge that comes while another waits replaces it (the loop makes one
/// check of however many piled up during an update, and the newest decides),
/// so a burst never loses the one that matters.
#[derive(Clone, Default)]
pub struct Nudges {
    inner: Arc<NudgesInner>,
}

#[derive(Default)]
struct NudgesInner {
    slot: Mutex<Option<Nudge>>,
    ready: Notify,
    replaced: AtomicU64,
}

impl std::fmt::Debug for Nudges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nudges")
            .field("waiting", &self.slot().is_some())
            .finish_non_exhaustive()
    }
}

impl Nudges {
    pub fn new() -> Nudges {
        Nudges::default()
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Nudge>> {
        self.inner.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `n`; returns whether it replaced a nudge the loop had not taken.
    pub fn send(&self, n: Nudge) -> bool {
        let replaced = self.slot().replace(n).is_some();
        if replaced {
            self.inner.replaced.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.ready.notify_one();
        replaced
    }

    /// The waiting nudge, if any.
    pub fn take(&self) -> Option<Nudge> {
        self.slot().take()
    }

    /// Waits for a nudge and takes it (cancel-safe: a nudge stays queued
    /// until a call returns it).
    pub async fn recv(&self) -> Nudge {
        loop {
            if let Some(n) = self.take() {
                return n;
            }
            self.inner.ready.notified().await;
        }
    }

    /// How many nudges a newer one replaced before the loop took them.
    pub fn replaced(&self) -> u64 {
        self.inner.replaced.load(Ordering::Relaxed)
    }
}

pub struct Hub {
    client: HubClient,
    settings: HubSettings,
    status: Mutex<HubStatus>,
    reports: mpsc::UnboundedSender<ReportMsg>,
    report_rx: Mutex<Option<mpsc::UnboundedReceiver<ReportMsg>>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("url", &self.settings.url.as_str())
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// The hub of `settings.hub`, if there is one. Nothing is sent yet.
    pub fn from_settings(settings: &Settings) -> Result<Option<Arc<Hub>>, HubError> {
        let Some(h) = &settings.hub else {
            return Ok(None);
        };
        let token = match &h.token_file {
            Some(p) => TokenSource::file(p),
            None => TokenSource::none(),
        };
        let mut opts = HubOptions::new(h.url.clone(), settings.agent.id.clone(), token);
        opts.timeout = CALL_TIMEOUT;
        if let Some(p) = &settings.agent.ca_file {
            opts.extra_roots = crate::config::read_ca_file(p).map_err(|what| HubError::Setup {
                what: format!("agent.ca_file: {what}"),
            })?;
        }
        let client = HubClient::new(opts)?;
        // Read the token once now, so a missing or loose file is said at start.
        if let Err(e) = client.options().token.get() {
            warn!(error = %crate::error_chain(&e), "hub token");
        }
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Some(Arc::new(Hub {
            client,
            status: Mutex::new(HubStatus {
                url: without_credentials(&h.url),
                desired_from_hub: h.desired_from_hub,
                events: "connecting".into(),
                ..HubStatus::default()
            }),
            settings: h.clone(),
            reports: tx,
            report_rx: Mutex::new(Some(rx)),
        })))
    }

    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    pub fn status(&self) -> HubStatus {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes how a call went: the log says when the hub fails and when it is back.
    fn note<T>(&self, what: &str, r: &Result<T, HubError>) {
        let mut s = self.lock();
        match r {
            Ok(_) => {
                if let Some(prev) = s.last_error.take() {
                    info!(was = %prev, "the hub answers again");
                }
                s.last_contact = Some(now_rfc3339());
            }
            Err(e) => {
                let msg = format!("{what}: {}", crate::error_chain(e));
                if s.last_error.as_deref() != Some(msg.as_str()) {
                    warn!(kind = %e.kind(), error = %msg, "hub call failed; the worker is left as it is");
                }
                s.last_error = Some(msg);
            }
        }
    }

    /// `GET desired`. `Ok(None)`: the hub has no opinion (follow the registry).
    pub async fn desired(&self) -> Result<Option<Desired>, HubError> {
        let r = self.client.desired().await;
        self.note("asking for the desired digest", &r);
        if let Ok(d) = &r {
            self.lock().desired = d.as_ref().map(|d| d.digest.clone());
        }
        r
    }

    /// `GET /v1/workers/{id}`.
    pub async fn worker(&self) -> Result<WorkerView, HubError> {
        let r = self.client.worker().await;
        self.note("asking what the hub sees of the worker", &r);
        r
    }

    /// Tells the hub to stop (`true`) or resume (`false`) sending jobs. A
    /// failure is logged and returned; the update goes on either way (the
    /// worker's own drain endpoint, where it has one, still drains it).
    pub async fn drain_notice(&self, draining: bool, reason: &str) -> Result<(), HubError> {
        let r = self
            .client
            .drain(&DrainNotice {
                draining,
                reason: reason.to_string(),
            })
            .await;
        self.note("sending a drain notice", &r);
        match &r {
            Ok(()) => info!(draining, reason, "hub told"),
            Err(e) => {
                warn!(draining, error = %crate::error_chain(e), "could not tell the hub; going on")
            }
        }
        r
    }

    /// Queues a report of `entry` (the reporter sends it with the status).
    pub fn report_event(&self, entry: &HistoryEntry) {
        let _ = self.reports.send(ReportMsg::Event(Box::new(entry.clone())));
    }

    /// The reporter as a subscriber of the update's events: each history
    /// entry is reported with the status.
    pub fn subscriber(self: &Arc<Self>) -> crate::update::Subscriber {
        let hub = self.clone();
        Box::new(move |e| {
            if let crate::update::Event::History { entry, .. } = e {
                hub.report_event(entry);
            }
        })
    }

    /// Queues a heartbeat report.
    pub fn heartbeat(&self) {
        let _ = self.reports.send(ReportMsg::Heartbeat);
    }

    /// Starts the event stream (until `shutdown`) and the reporter. Nudges
    /// go to `nudges`. The reporter goes on until `reports_done` (cancel it
    /// once the loop has recorded its last event), then sends what is still
    /// queued within [`REPORT_FLUSH`] and ends: await its handle before exiting.
    pub fn start(
        self: &Arc<Self>,
        view: watch::Receiver<View>,
        settings: watch::Receiver<Arc<Settings>>,
        nudges: Nudges,
        shutdown: CancellationToken,
        reports_done: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let rx = self
            .report_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        tokio::spawn(Arc::clone(self).events(nudges, shutdown));
        rx.map(|rx| tokio::spawn(Arc::clone(self).reporter(rx, view, settings, reports_done)))
    }

    /// The status object to report, now.
    fn status_now(
        &self,
        view: &watch::Receiver<View>,
        settings: &watch::Receiver<Arc<Settings>>,
    ) -> serde_json::Map<String, serde_json::Value> {
        let s = settings.borrow().clone();
        let v = view.borrow().clone();
        match serde_json::to_value(crate::update::status_of(&s, &v, Some(self.status()))) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => Default::default(),
        }
    }

    /// Sends the queued events, oldest first, until one fails. Returns
    /// whether all went.
    async fn send_backlog(
        &self,
        backlog: &mut VecDeque<HistoryEntry>,
        view: &watch::Receiver<View>,
        settings: &watch::Receiver<Arc<Settings>>,
    ) -> bool {
        while let Some(entry) = backlog.front() {
            let report = Report {
                status: self.status_now(view, settings),
                event: serde_json::to_value(entry).ok(),
            };
            let r = self.client.report(&report).await;
            self.note("sending a report", &r);
            if r.is_err() {
                return false;
            }
            debug!("reported an event to the hub");
            backlog.pop_front();
        }
        true
    }

    async fn reporter(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<ReportMsg>,
        view: watch::Receiver<View>,
        settings: watch::Receiver<Arc<Settings>>,
        shutdown: CancellationToken,
    ) {
        // Events the hub has not taken yet, oldest first: sent again, in
        // order, before anything newer (at most REPORT_BACKLOG kept).
        let mut backlog: VecDeque<HistoryEntry> = VecDeque::new();
        'run: loop {
            let msg = tokio::select! {
                m = rx.recv() => m,
                // Unsent events are tried again on their own, not only with the next report.
                _ = tokio::time::sleep(REPORT_RETRY), if !backlog.is_empty() => Some(ReportMsg::Retry),
                _ = shutdown.cancelled() => None,
            };
            let Some(msg) = msg else { break };
            let mut heartbeat = false;
            let mut take = |m: ReportMsg, backlog: &mut VecDeque<HistoryEntry>| match m {
                ReportMsg::Event(e) => backlog.push_back(*e),
                ReportMsg::Heartbeat => heartbeat = true,
                ReportMsg::Retry => {}
            };
            take(msg, &mut backlog);
            // What piled up while the hub was slow: heartbeats are one.
            while let Ok(m) = rx.try_recv() {
                take(m, &mut backlog);
            }
            while backlog.len() > REPORT_BACKLOG {
                if let Some(lost) = backlog.pop_front() {
                    warn!(kind = ?lost.kind, at = %lost.at, "the hub did not take reports for long; the oldest unsent event is dropped");
                }
            }
            // An event carries the status too: a heartbeat then says nothing more.
            heartbeat &= backlog.is_empty();
            let all_sent = tokio::select! {
                ok = self.send_backlog(&mut backlog, &view, &settings) => ok,
                _ = shutdown.cancelled() => break 'run,
            };
            if heartbeat && all_sent {
                let report = Report {
                    status: self.status_now(&view, &settings),
                    event: None,
                };
                let r = tokio::select! {
                    r = self.client.report(&report) => r,
                    _ = shutdown.cancelled() => break 'run,
                };
                self.note("sending a report", &r);
            }
        }
        // Stopping: what is queued (the last events, such as an update the
        // stop aborted) goes now, briefly.
        while let Ok(m) = rx.try_recv() {
            if let ReportMsg::Event(e) = m {
                backlog.push_back(*e);
            }
        }
        if !backlog.is_empty()
            && tokio::time::timeout(
                REPORT_FLUSH,
                self.send_backlog(&mut backlog, &view, &settings),
            )
            .await
            .is_err()
        {
            warn!(
                unsent = backlog.len(),
                "stopping: the hub did not take the last reports in time"
            );
        }
    }

    /// Keeps the event stream open until the agent stops.
    async fn events(self: Arc<Self>, nudges: Nudges, shutdown: CancellationToken) {
        let mut last_id: Option<String> = None;
        let mut failures = 0u32;
        loop {
            self.lock().events = "connecting".into();
            let opened = tokio::select! {
                r = self.client.events(last_id.as_deref()) => r,
                _ = shutdown.cancelled() => return,
            };
            let mut hint = None;
            let why = match opened {
                Ok(mut stream) => {
                    {
                        let mut s = self.lock();
                        s.events = "connected".into();
                        s.events_error = None;
                        s.last_contact = Some(now_rfc3339());
                    }
                    crate::metrics::global().set_hub_stream_up(true);
                    info!(
                        resume_after = last_id.as_deref().unwrap_or("-"),
                        "hub event stream open"
                    );
                    // The backoff starts again only once the stream proved
                    // healthy: a hub that accepts and closes at once is not.
                    let opened_at = tokio::time::Instant::now();
                    let mut delivered = false;
                    let why = loop {
                        let next = tokio::select! {
                            n = stream.next() => n,
                            _ = shutdown.cancelled() => return,
                        };
                        match next {
                            Ok(Some(ev)) => {
                                last_id = stream.last_event_id().map(str::to_string);
                                delivered = true;
                                self.on_event(ev, &nudges).await;
                            }
                            Ok(None) => break "the hub closed the event stream".to_string(),
                            Err(e) => break crate::error_chain(&e),
                        }
                    };
                    last_id = stream.last_event_id().map(str::to_string).or(last_id);
                    hint = stream.retry_hint();
                    if delivered || opened_at.elapsed() >= STREAM_HEALTHY_AFTER {
                        failures = 0;
                    }
                    why
                }
                Err(e) => crate::error_chain(&e),
            };
            failures += 1;
            let wait = hub_client::client::backoff(Duration::from_secs(1), failures - 1)
                .min(STREAM_BACKOFF_CAP + STREAM_BACKOFF_CAP / 2)
                .max(hint.unwrap_or_default().min(STREAM_BACKOFF_CAP));
            {
                let mut s = self.lock();
                if s.events_error.as_deref() != Some(why.as_str()) {
                    warn!(error = %why, retry_in = ?wait, "hub event stream down; nudges wait until it is back (polls go on)");
                }
                s.events = "disconnected".into();
                s.events_error = Some(why);
            }
            crate::metrics::global().set_hub_stream_up(false);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn on_event(&self, ev: sse::Event, nudges: &Nudges) {
        if ev.event != "nudge" {
            debug!(event = %ev.event, "hub event ignored");
            return;
        }
        match Nudge::parse(&ev.data) {
            Ok(n) => {
                info!(reason = %n.reason, digest = n.digest.as_deref().unwrap_or("-"), id = ev.id.as_deref().unwrap_or("-"), "nudge from the hub");
                // The newest nudge waits for the loop; an older one it replaces
                // would only have asked for the same check.
                if nudges.send(n) {
                    debug!("a nudge the loop had not taken yet was replaced by a newer one");
                }
            }
            Err(what) => {
                warn!(error = %what, id = ev.id.as_deref().unwrap_or("-"), "a nudge from the hub was not understood; ignored")
            }
        }
    }
}

/// The URL as shown in status and reports: no user or password in it.
impl crate::update::ports::Hub for Hub {
    fn settings(&self) -> &HubSettings {
        Hub::settings(self)
    }
    fn desired(&self) -> BoxFuture<'_, Result<Option<Desired>, HubError>> {
        Hub::desired(self).boxed()
    }
    fn worker(&self) -> BoxFuture<'_, Result<WorkerView, HubError>> {
        Hub::worker(self).boxed()
    }
    fn drain_notice<'a>(
        &'a self,
        draining: bool,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), HubError>> {
        Hub::drain_notice(self, draining, reason).boxed()
    }
}

fn without_credentials(url: &url::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
