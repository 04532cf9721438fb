//! [`MockHub`]: a hub that speaks protocol v1 over real HTTP, for tests and demos.
//!
//! It keeps everything in memory: the desired digest per agent, a backlog of
//! nudges per agent (the last [`BACKLOG`], replayed after `Last-Event-ID`), the
//! workers it has seen register, and every protocol call it received. A
//! [`Mode`] makes it misbehave (down, garbage, slow, unauthorized) for the
//! protocol calls only; [`MockHub::stop`] and [`MockHub::restart`] take it
//! down for real (listener closed, every connection cut) and back on the same
//! port with the same state.
//!
//! Besides protocol v1 it serves two routes of the fleet's own hub↔worker API,
//! which need no token and ignore the mode, so that example and test workers
//! can register: `POST /v1/workers/{id}/register` (`{"digest": "sha256:…"}`,
//! or the form or text body `digest=sha256:…` that busybox `wget --post-data`
//! sends) and `POST /v1/workers/{id}/in_flight` (`{"in_flight": N}` or
//! `in_flight=N`). The `mock-hub` binary drives it through control routes
//! under `/mock/` (see [`router`]'s table), which also ignore the mode.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use crate::wire::{is_sha256_digest, Desired, DrainNotice, Nudge, WorkerView};

/// Nudges kept per agent for replay after `Last-Event-ID`.
pub const BACKLOG: usize = 100;
/// The default interval of keep-alive comments on an event stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// The reconnection delay sent first on every event stream (`retry:`).
pub const RETRY_MS: u64 = 1000;

/// How the mock answers protocol calls (the registration and control routes
/// ignore it).
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Mode {
    #[default]
    Normal,
    /// Every protocol call is answered `503`.
    Down,
    /// Every protocol call is answered `200` with a body that is not JSON or
    /// not the protocol's shape; the event stream is `200 text/html`.
    Garbage,
    /// Sleeps this long before answering (then answers normally).
    Slow(Duration),
    /// Every protocol call is answered `401`, whatever the token.
    Unauthorized,
}

/// One protocol call, as the mock received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: SystemTime,
    /// Order of arrival, from 1.
    pub seq: u64,
    pub agent: String,
    /// `"desired"`, `"events"`, `"report"`, `"drain"` or `"worker"`.
    pub call: &'static str,
    /// The request body (JSON; a body that is not JSON is kept as a string;
    /// `null` for GETs); for `"events"`, `{"last_event_id": "…" or null}`.
    pub body: Value,
}

/// A running mock hub. Cheap to clone: clones share the hub.
#[derive(Clone)]
pub struct MockHub {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MockHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockHub")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

struct Inner {
    addr: SocketAddr,
    token: Option<String>,
    state: Mutex<HubState>,
    server: Mutex<Option<Server>>,
}

/// The accept loop; it owns the connections, so stopping it cuts them.
struct Server {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

struct HubState {
    mode: Mode,
    keep_alive: Duration,
    desired: HashMap<String, Desired>,
    workers: HashMap<String, WorkerView>,
    refused: HashSet<String>,
    received: Vec<Received>,
    reports: HashMap<String, Vec<Value>>,
    drains: HashMap<String, Vec<DrainNotice>>,
    last_event_id: u64,
    /// Per agent: (event id, the event's text as sent).
    backlog: HashMap<String, VecDeque<(u64, Bytes)>>,
    /// Per agent: the open event streams, by stream number.
    streams: HashMap<String, HashMap<u64, mpsc::UnboundedSender<Bytes>>>,
    next_stream: u64,
    connects: HashMap<String, usize>,
}

impl MockHub {
    /// Starts a hub on `127.0.0.1` and a free port. With a token, every
    /// protocol call must carry `Authorization: Bearer <token>`.
    pub async fn start(token: Option<String>) -> std::io::Result<MockHub> {
        MockHub::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), token).await
    }

    pub async fn start_on(addr: SocketAddr, token: Option<String>) -> std::io::Result<MockHub> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            addr,
            token,
            state: Mutex::new(HubState {
                mode: Mode::Normal,
                keep_alive: KEEP_ALIVE,
                desired: HashMap::new(),
                workers: HashMap::new(),
                refused: HashSet::new(),
                received: Vec::new(),
                reports: HashMap::new(),
                drains: HashMap::new(),
                last_event_id: 0,
                backlog: HashMap::new(),
                streams: HashMap::new(),
                next_stream: 0,
                connects: HashMap::new(),
            }),
            server: Mutex::new(None),
        });
        let server = serve(&inner, listener);
        *lock(&inner.server) = Some(server);
        tracing::info!(%addr, token = inner.token.is_some(), "mock hub listening");
        Ok(MockHub { inner })
    }

    /// `http://127.0.0.1:PORT/`
    pub fn url(&self) -> url::Url {
        url::Url::parse(&format!("http://{}/", self.inner.addr)).expect("a socket address is a URL")
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// What `GET /v1/agents/{agent}/desired` answers: `200` with this, or `204`
    /// for `None`. Not checked, so that a test can serve a bad digest.
    pub fn set_desired(&self, agent: &str, desired: Option<Desired>) {
        let mut st = self.state();
        match desired {
            Some(d) => st.desired.insert(agent.to_string(), d),
            None => st.desired.remove(agent),
        };
    }

    /// Sends event `nudge` to the agent's open streams and keeps it in the
    /// agent's backlog; returns its event id (monotonic over the hub).
    pub fn nudge(&self, agent: &str, nudge: Nudge) -> u64 {
        let mut st = self.state();
        st.last_event_id += 1;
        let id = st.last_event_id;
        let data = serde_json::to_string(&nudge).expect("a nudge serialises");
        let frame = Bytes::from(format!("id: {id}\nevent: nudge\ndata: {data}\n\n"));
        let backlog = st.backlog.entry(agent.to_string()).or_default();
        backlog.push_back((id, frame.clone()));
        while backlog.len() > BACKLOG {
            backlog.pop_front();
        }
        let mut sent = 0;
        if let Some(streams) = st.streams.get_mut(agent) {
            streams.retain(|_, tx| tx.send(frame.clone()).is_ok());
            sent = streams.len();
        }
        tracing::info!(agent, id, reason = %nudge.reason, digest = ?nudge.digest, streams = sent, "nudge");
        id
    }

    /// The `in_flight` of the agent's worker view.
    pub fn set_worker_in_flight(&self, agent: &str, n: u64) {
        self.state().worker_mut(agent).in_flight = Some(n);
    }

    /// While `refuse` is true, the worker's registrations are answered `403`
    /// and not recorded (and [`MockHub::register`] does nothing).
    pub fn refuse_registration(&self, agent: &str, refuse: bool) {
        let mut st = self.state();
        if refuse {
            st.refused.insert(agent.to_string());
        } else {
            st.refused.remove(agent);
        }
    }

    /// As if the agent's worker registered with this digest (refused, and
    /// then a no-op, while [`MockHub::refuse_registration`] is on).
    pub fn register(&self, agent: &str, digest: Option<&str>) {
        let _ = self.state().register(agent, digest.map(str::to_string));
    }

    /// As if the worker went away: not registered, no digest (`in_flight` kept).
    pub fn unregister(&self, agent: &str) {
        let mut st = self.state();
        let w = st.worker_mut(agent);
        w.registered = false;
        w.digest = None;
        tracing::info!(agent, "worker unregistered");
    }

    /// What `GET /v1/workers/{agent}` answers in normal mode.
    pub fn worker(&self, agent: &str) -> WorkerView {
        self.state().worker(agent)
    }

    pub fn set_mode(&self, mode: Mode) {
        tracing::info!(?mode, "mock hub mode");
        self.state().mode = mode;
    }

    pub fn mode(&self) -> Mode {
        self.state().mode.clone()
    }

    /// The interval of keep-alive comments on event streams opened from now on
    /// (default [`KEEP_ALIVE`]).
    pub fn set_keep_alive(&self, every: Duration) {
        self.state().keep_alive = every;
    }

    /// Every protocol call so far (also those refused by the mode or the
    /// token), in order of arrival.
    pub fn received(&self) -> Vec<Received> {
        self.state().received.clone()
    }

    /// The report bodies accepted from the agent, in order.
    pub fn reports(&self, agent: &str) -> Vec<Value> {
        self.state().reports.get(agent).cloned().unwrap_or_default()
    }

    /// The drain notices accepted from the agent, in order.
    pub fn drains(&self, agent: &str) -> Vec<DrainNotice> {
        self.state().drains.get(agent).cloned().unwrap_or_default()
    }

    /// Event streams of the agent open now.
    pub fn stream_count(&self, agent: &str) -> usize {
        self.state().streams.get(agent).map_or(0, HashMap::len)
    }

    /// Event-stream connections of the agent accepted so far.
    pub fn connects(&self, agent: &str) -> usize {
        self.state().connects.get(agent).copied().unwrap_or(0)
    }

    /// Goes down for real: stops listening and cuts every open connection
    /// (event streams included). The state is kept for [`MockHub::restart`].
    pub async fn stop(&self) {
        let server = lock(&self.inner.server).take();
        if let Some(s) = server {
            let _ = s.shutdown.send(());
            let _ = s.task.await;
            tracing::info!(addr = %self.inner.addr, "mock hub stopped");
        }
    }

    /// Listens again on the same address, with the same state. A no-op when running.
    pub async fn restart(&self) -> std::io::Result<()> {
        if lock(&self.inner.server).is_some() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.inner.addr).await?;
        let server = serve(&self.inner, listener);
        let mut slot = lock(&self.inner.server);
        if slot.is_none() {
            *slot = Some(server);
            tracing::info!(addr = %self.inner.addr, "mock hub restarted");
        }
        Ok(())
    }

    fn state(&self) -> MutexGuard<'_, HubState> {
        lock(&self.inner.state)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl HubState {
    fn worker(&self, agent: &str) -> WorkerView {
        self.workers
            .get(agent)
            .cloned()
            .unwrap_or_else(unknown_worker)
    }

    fn worker_mut(&mut self, agent: &str) -> &mut WorkerView {
        self.workers
            .entry(agent.to_string())
            .or_insert_with(unknown_worker)
    }

    /// `false` when refused.
    fn register(&mut self, agent: &str, digest: Option<String>) -> bool {
        if self.refused.contains(agent) {
            tracing::info!(agent, ?digest, "worker registration refused");
            return false;
        }
        tracing::info!(agent, ?digest, "worker registered");
        let w = self.worker_mut(agent);
        w.registered = true;
        w.digest = digest;
        true
    }
}

fn unknown_worker() -> WorkerView {
    WorkerView {
        registered: false,
        digest: None,
        in_flight: Some(0),
    }
}

fn serve(inner: &Arc<Inner>, listener: TcpListener) -> Server {
    let app = router(inner.clone());
    let (shutdown, mut stop) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                _ = &mut stop => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
                        conns.spawn(async move {
                            let _ = tcp.set_nodelay(true);
                            let io = hyper_util::rt::TokioIo::new(tcp);
                            if let Err(e) = hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, svc)
                                .await
                            {
                                tracing::debug!(%peer, error = %e, "mock hub connection ended");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "mock hub accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        // Dropping a connection's task closes its socket: streams end at once.
        conns.shutdown().await;
    });
    Server { shutdown, task }
}

/// The routes:
///
/// | route | what |
/// | --- | --- |
/// | `GET /v1/agents/{id}/desired` | protocol v1 |
/// | `GET /v1/agents/{id}/events` | protocol v1 |
/// | `POST /v1/agents/{id}/report` | protocol v1 |
/// | `POST /v1/agents/{id}/drain` | protocol v1 |
/// | `GET /v1/workers/{id}` | protocol v1 |
/// | `POST /v1/workers/{id}/register` | worker registration (no token) |
/// | `POST /v1/workers/{id}/in_flight` | the worker's in-flight count (no token) |
/// | `PUT`, `DELETE /mock/agents/{id}/desired` | set (a `Desired`) or clear |
/// | `POST /mock/agents/{id}/nudge` | send a `Nudge` (empty body: `{}`); answers `{"id": N}` |
/// | `GET /mock/agents/{id}/reports`, `/drains` | what the agent sent |
/// | `PUT /mock/mode` | `{"mode": "normal"\|"down"\|"garbage"\|"unauthorized"\|"slow", "slow_ms": N}` |
/// | `POST /mock/workers/{id}/refuse` | `{"refuse": bool}` |
/// | `GET /mock/workers/{id}` | the worker view |
/// | `GET /mock/received` | every protocol call so far |
fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/v1/agents/{id}/desired", get(desired))
        .route("/v1/agents/{id}/events", get(events))
        .route("/v1/agents/{id}/report", post(report))
        .route("/v1/agents/{id}/drain", post(drain))
        .route("/v1/workers/{id}", get(worker))
        .route("/v1/workers/{id}/register", post(register))
        .route("/v1/workers/{id}/in_flight", post(in_flight))
        .route(
            "/mock/agents/{id}/desired",
            put(control_set_desired).delete(control_clear_desired),
        )
        .route("/mock/agents/{id}/nudge", post(control_nudge))
        .route("/mock/agents/{id}/reports", get(control_reports))
        .route("/mock/agents/{id}/drains", get(control_drains))
        .route("/mock/mode", put(control_mode))
        .route("/mock/workers/{id}/refuse", post(control_refuse))
        .route("/mock/workers/{id}", get(control_worker))
        .route("/mock/received", get(control_received))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .with_state(inner)
}

type Hub = State<Arc<Inner>>;

fn hub(inner: &Arc<Inner>) -> MockHub {
    MockHub {
        inner: inner.clone(),
    }
}

fn error(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({ "error": msg }))).into_response()
}

impl Inner {
    /// Records a protocol call, then applies the mode and the token check.
    /// `Err` is the answer to give instead of the normal one.
    async fn gate(
        &self,
        agent: &str,
        call: &'static str,
        body: Value,
        headers: &HeaderMap,
    ) -> Result<(), Response> {
        let mode = {
            let mut st = lock(&self.state);
            let seq = st.received.len() as u64 + 1;
            st.received.push(Received {
                at: SystemTime::now(),
                seq,
                agent: agent.to_string(),
                call,
                body,
            });
            st.mode.clone()
        };
        tracing::debug!(agent, call, ?mode, "protocol call");
        match mode {
            Mode::Normal => {}
            Mode::Slow(d) => tokio::time::sleep(d).await,
            Mode::Down => {
                return Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the mock hub is down",
                ))
            }
            Mode::Unauthorized => {
                return Err(error(
                    StatusCode::UNAUTHORIZED,
                    "the mock hub refuses every token",
                ))
            }
            Mode::Garbage => return Err(garbage(call)),
        }
        if let Some(token) = &self.token {
            let got = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            match got {
                None => {
                    return Err(error(
                        StatusCode::UNAUTHORIZED,
                        "missing Authorization: Bearer token",
                    ))
                }
                Some(v) if v.strip_prefix("Bearer ") != Some(token.as_str()) => {
                    tracing::info!(agent, call, "wrong token");
                    return Err(error(StatusCode::UNAUTHORIZED, "wrong bearer token"));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// A `200` that is not what the protocol promises.
fn garbage(call: &str) -> Response {
    let html = || {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body><h1>Welcome to nginx!</h1></body></html>",
        )
            .into_response()
    };
    match call {
        // JSON, but the wrong shape.
        "worker" => (
            StatusCode::OK,
            Json(json!({"registered": "maybe", "in_flight": -1})),
        )
            .into_response(),
        // Claims JSON, is not.
        "desired" => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "<html>{\"digest\": sha256:",
        )
            .into_response(),
        _ => html(),
    }
}

/// A body as JSON, or (when it is not JSON) as a string.
fn body_value(body: &Bytes) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

async fn desired(State(inner): Hub, Path(agent): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = inner.gate(&agent, "desired", Value::Null, &headers).await {
        return r;
    }
    match lock(&inner.state).desired.get(&agent) {
        Some(d) => (StatusCode::OK, Json(d.clone())).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

async fn worker(State(inner): Hub, Path(agent): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = inner.gate(&agent, "worker", Value::Null, &headers).await {
        return r;
    }
    let w = lock(&inner.state).worker(&agent);
    (StatusCode::OK, Json(w)).into_response()
}

async fn report(
    State(inner): Hub,
    Path(agent): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let v = body_value(&body);
    if let Err(r) = inner.gate(&agent, "report", v.clone(), &headers).await {
        return r;
    }
    if !v.is_object() {
        return error(StatusCode::BAD_REQUEST, "a report is a JSON object");
    }
    tracing::info!(agent, report = %v, "report");
    lock(&inner.state).reports.entry(agent).or_default().push(v);
    StatusCode::NO_CONTENT.into_response()
}

async fn drain(
    State(inner): Hub,
    Path(agent): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let v = body_value(&body);
    if let Err(r) = inner.gate(&agent, "drain", v.clone(), &headers).await {
        return r;
    }
    let notice: DrainNotice = match serde_json::from_value(v) {
        Ok(n) => n,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("a drain notice is {{\"draining\": bool, \"reason\": \"...\"}}: {e}"),
            )
        }
    };
    tracing::info!(agent, draining = notice.draining, reason = %notice.reason, "drain notice");
    lock(&inner.state)
        .drains
        .entry(agent)
        .or_default()
        .push(notice);
    StatusCode::NO_CONTENT.into_response()
}

async fn events(State(inner): Hub, Path(agent): Path<String>, headers: HeaderMap) -> Response {
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = json!({ "last_event_id": last });
    if let Err(r) = inner.gate(&agent, "events", body, &headers).await {
        return r;
    }
    let after = last.as_deref().and_then(|s| s.trim().parse::<u64>().ok());
    let (tx, rx) = mpsc::unbounded_channel();
    // Under one lock with nudge(): no nudge is both replayed and sent, or neither.
    let (number, keep_alive, first) = {
        let mut st = lock(&inner.state);
        *st.connects.entry(agent.clone()).or_default() += 1;
        st.next_stream += 1;
        let number = st.next_stream;
        st.streams
            .entry(agent.clone())
            .or_default()
            .insert(number, tx);
        let mut first = format!("retry: {RETRY_MS}\n\n").into_bytes();
        if let (Some(after), Some(backlog)) = (after, st.backlog.get(&agent)) {
            for (_, frame) in backlog.iter().filter(|(id, _)| *id > after) {
                first.extend_from_slice(frame);
            }
        }
        (number, st.keep_alive, Bytes::from(first))
    };
    tracing::info!(agent, last_event_id = ?last, stream = number, "event stream opened");
    let open = OpenStream {
        first: Some(first),
        rx,
        keep_alive: tokio::time::interval_at(tokio::time::Instant::now() + keep_alive, keep_alive),
        _guard: StreamGuard {
            inner: Arc::downgrade(&inner),
            agent,
            number,
        },
    };
    let stream = futures_util::stream::unfold(open, |mut s| async move {
        if let Some(first) = s.first.take() {
            return Some((Ok::<_, Infallible>(first), s));
        }
        tokio::select! {
            frame = s.rx.recv() => frame.map(|f| (Ok(f), s)),
            _ = s.keep_alive.tick() => Some((Ok(Bytes::from_static(b": keep-alive\n\n")), s)),
        }
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

struct OpenStream {
    first: Option<Bytes>,
    rx: mpsc::UnboundedReceiver<Bytes>,
    keep_alive: tokio::time::Interval,
    _guard: StreamGuard,
}

/// Takes the stream off the agent's list when its body is dropped (the
/// client went away or the connection was cut).
struct StreamGuard {
    inner: Weak<Inner>,
    agent: String,
    number: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            let mut st = lock(&inner.state);
            if let Some(s) = st.streams.get_mut(&self.agent) {
                s.remove(&self.number);
            }
            tracing::info!(agent = %self.agent, stream = self.number, "event stream closed");
        }
    }
}

/// The value of `key` in a JSON object body, or in a form or `key=value` text
/// body (what busybox `wget --post-data` sends). `Ok(None)`: no such key.
fn field(body: &Bytes, key: &str) -> Result<Option<String>, String> {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if text.starts_with('{') {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("bad JSON body: {e}"))?;
        return Ok(match v.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        });
    }
    for (k, v) in url::form_urlencoded::parse(text.as_bytes()) {
        if k == key {
            return Ok(Some(v.trim().to_string()));
        }
    }
    Err(format!("expected JSON {{\"{key}\": ...}} or {key}=..."))
}

async fn register(State(inner): Hub, Path(agent): Path<String>, body: Bytes) -> Response {
    let digest = match field(&body, "digest") {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    if let Some(d) = &digest {
        if !is_sha256_digest(d) {
            return error(StatusCode::BAD_REQUEST, "'digest' is not a sha256 digest");
        }
    }
    if lock(&inner.state).register(&agent, digest) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::FORBIDDEN, "registration refused by the hub")
    }
}

async fn in_flight(State(inner): Hub, Path(agent): Path<String>, body: Bytes) -> Response {
    let n = match field(&body, "in_flight").map(|v| v.map(|s| s.parse::<u64>())) {
        Ok(Some(Ok(n))) => n,
        Ok(None) | Ok(Some(Err(_))) => {
            return error(StatusCode::BAD_REQUEST, "'in_flight' must be a count")
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    hub(&inner).set_worker_in_flight(&agent, n);
    StatusCode::NO_CONTENT.into_response()
}

async fn control_set_desired(
    State(inner): Hub,
    Path(agent): Path<String>,
    body: Bytes,
) -> Response {
    let d: Desired = match serde_json::from_slice(&body) {
        Ok(d) => d,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"repository\": ..., \"digest\": ...}}: {e}"),
            )
        }
    };
    if let Err(e) = d.validate() {
        tracing::warn!(agent, error = %e, "serving a desired digest the agent will refuse");
    }
    tracing::info!(agent, repository = %d.repository, digest = %d.digest, "desired set");
    hub(&inner).set_desired(&agent, Some(d));
    StatusCode::NO_CONTENT.into_response()
}

async fn control_clear_desired(State(inner): Hub, Path(agent): Path<String>) -> Response {
    tracing::info!(agent, "desired cleared");
    hub(&inner).set_desired(&agent, None);
    StatusCode::NO_CONTENT.into_response()
}

async fn control_nudge(State(inner): Hub, Path(agent): Path<String>, body: Bytes) -> Response {
    let nudge = if body.iter().all(u8::is_ascii_whitespace) {
        Nudge::default()
    } else {
        match Nudge::parse(&String::from_utf8_lossy(&body)) {
            Ok(n) => n,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        }
    };
    let id = hub(&inner).nudge(&agent, nudge);
    (StatusCode::OK, Json(json!({ "id": id }))).into_response()
}

async fn control_reports(State(inner): Hub, Path(agent): Path<String>) -> Response {
    Json(hub(&inner).reports(&agent)).into_response()
}

async fn control_drains(State(inner): Hub, Path(agent): Path<String>) -> Response {
    Json(hub(&inner).drains(&agent)).into_response()
}

async fn control_worker(State(inner): Hub, Path(agent): Path<String>) -> Response {
    Json(hub(&inner).worker(&agent)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModeBody {
    mode: String,
    #[serde(default)]
    slow_ms: Option<u64>,
}

async fn control_mode(State(inner): Hub, body: Bytes) -> Response {
    let m: ModeBody = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad mode body: {e}")),
    };
    let mode = match (m.mode.as_str(), m.slow_ms) {
        ("normal", _) => Mode::Normal,
        ("down", _) => Mode::Down,
        ("garbage", _) => Mode::Garbage,
        ("unauthorized", _) => Mode::Unauthorized,
        ("slow", Some(ms)) => Mode::Slow(Duration::from_millis(ms)),
        ("slow", None) => return error(StatusCode::BAD_REQUEST, "mode \"slow\" needs slow_ms"),
        (other, _) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("unknown mode {other:?} (normal, down, garbage, unauthorized, slow)"),
            )
        }
    };
    hub(&inner).set_mode(mode);
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefuseBody {
    refuse: bool,
}

async fn control_refuse(State(inner): Hub, Path(agent): Path<String>, body: Bytes) -> Response {
    match serde_json::from_slice::<RefuseBody>(&body) {
        Ok(r) => {
            tracing::info!(agent, refuse = r.refuse, "worker registration refusal");
            hub(&inner).refuse_registration(&agent, r.refuse);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            &format!("expected {{\"refuse\": bool}}: {e}"),
        ),
    }
}

async fn control_received(State(inner): Hub) -> Response {
    let list: Vec<Value> = hub(&inner)
        .received()
        .into_iter()
        .map(|r| {
            json!({
                "at_ms": r.at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
                "seq": r.seq,
                "agent": r.agent,
                "call": r.call,
                "body": r.body,
            })
        })
        .collect();
    Json(list).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_from_json_form_and_text_bodies() {
        let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let b = |s: &str| Bytes::from(s.to_string());
        let json_body = format!(r#"{{"digest":"{d}"}}"#);
        assert_eq!(field(&b(&json_body), "digest").unwrap().as_deref(), Some(d));
        assert_eq!(
            field(&b(&format!("digest={d}\n")), "digest")
                .unwrap()
                .as_deref(),
            Some(d)
        );
        assert_eq!(
            field(&b("digest=sha256%3Aab"), "digest")
                .unwrap()
                .as_deref(),
            Some("sha256:ab")
        );
        assert_eq!(
            field(&b(r#"{"in_flight":3}"#), "in_flight")
                .unwrap()
                .as_deref(),
            Some("3")
        );
        assert_eq!(field(&b(""), "digest").unwrap(), None);
        assert!(field(&b("{nope"), "digest").is_err());
        assert!(field(&b("something else"), "digest").is_err());
    }
}
