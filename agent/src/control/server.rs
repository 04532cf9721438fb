//! The control socket's server: binding (stale sockets replaced, live ones not
//! stolen, mode 0660, group `gpu-agent` where it exists) and the routes.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::api::{
    ActionResult, CheckRequest, DrainRequest, ErrorBody, Health, PinRequest, UpdateRequest,
};
use super::dry_run::{dry_run, DryRunJob};
use super::peer::Peer;
use crate::config::Settings;
use crate::registry::is_sha256_digest;
use crate::update::{status_of, Journal, Phase, View};

/// The refusal while another action is accepted and not yet done.
const QUEUED: &str =
    "another agentctl action was accepted and has not ended yet; try again when it ends";

/// How long an undrain waits for the drain it cancels to end (a drain probe
/// times out after 5 s; the stop after a finished wait takes `stop_timeout`).
const UNDRAIN_WAIT: Duration = Duration::from_secs(60);

/// The group allowed to use the socket besides root.
const SOCKET_GROUP: &str = "gpu-agent";

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("another gpu-agent is already listening on {path}: stop it first, or give this one another agent.control_socket")]
    InUse { path: PathBuf },
    #[error("control socket {path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
}

pub use crate::update::Action;

/// Work for the daemon loop, with where to send the answer. Each job holds
/// the one [`Ticket`] until it has run.
#[derive(Debug)]
pub struct Job {
    pub action: Action,
    pub reply: oneshot::Sender<ActionResult>,
    pub ticket: Ticket,
    /// Who asked (`alice (uid 1000)`), from the connection's peer credentials.
    pub user: Option<String>,
}

/// One action at a time: taken when a job is accepted, given back when it is
/// dropped (drop it before answering, so the next request finds it free).
#[derive(Debug)]
pub struct Ticket(Arc<AtomicBool>);

impl Ticket {
    fn take(busy: &Arc<AtomicBool>) -> Option<Ticket> {
        busy.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .ok()
            .map(|_| Ticket(busy.clone()))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// What the routes need.
#[derive(Clone)]
pub struct ControlState {
    /// The running config (replaced on SIGHUP).
    pub settings: watch::Receiver<Arc<Settings>>,
    pub view: watch::Receiver<View>,
    pub jobs: mpsc::Sender<Job>,
    /// Dry runs, for the loop to answer between its turns.
    pub dry_runs: mpsc::Sender<DryRunJob>,
    pub journal: Journal,
    /// Set while an accepted action waits or runs.
    pub busy: Arc<AtomicBool>,
    /// Ends the wait of a maintenance drain (`agentctl undrain` during one).
    pub drain_cancel: Arc<AtomicBool>,
    /// Answers `agentctl health`.
    pub health: Arc<dyn HealthSource>,
    /// The hub, with `[hub]` in the config.
    pub hub: Option<Arc<crate::hub::Hub>>,
    /// The fleet group, with `[fleet]` in the config.
    pub fleet: Option<Arc<dyn crate::update::ports::Fleet>>,
}

/// What answers `GET /v1/health`: it looks at the engine and probes the
/// worker now, beside (never through) the update loop.
pub trait HealthSource: Send + Sync {
    fn health(&self, view: View) -> Pin<Box<dyn Future<Output = Health> + Send + '_>>;
}

/// Binds the socket at `path`: a socket file left by a crash is replaced, one
/// a live agent answers on is not.
pub async fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let io = |action, source| ControlError::Io {
        path: path.to_path_buf(),
        action,
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating its folder", e))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(ControlError::InUse {
                path: path.to_path_buf(),
            });
        }
        info!(path = %path.display(), "replacing a stale control socket");
        std::fs::remove_file(path).map_err(|e| io("removing the stale socket", e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| io("binding", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| io("setting its mode", e))?;
    if let Some(gid) = group_id(SOCKET_GROUP) {
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(|e| io("giving it to group gpu-agent", e))?;
    }
    Ok(listener)
}

/// The gid of `name` from /etc/group, if the group exists.
fn group_id(name: &str) -> Option<u32> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// Serves the control API until `shutdown`.
pub async fn serve(listener: UnixListener, state: ControlState, shutdown: CancellationToken) {
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/history", get(history))
        .route("/v1/health", get(health))
        .route("/v1/check", post(check))
        .route("/v1/update", post(update))
        .route("/v1/drain", post(drain))
        .route("/v1/undrain", post(undrain))
        .route("/v1/rollback", post(rollback))
        .route("/v1/pin", post(pin))
        .route("/v1/unpin", post(unpin))
        .route("/v1/dry-run", post(dry_run))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such call: see agentctl --help".into(),
            )
        })
        .with_state(state);
    // Each connection carries its caller's credentials: `ConnectInfo<Peer>`.
    let app = app.into_make_service_with_connect_info::<super::peer::Peer>();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        warn!(error = %e, "control socket server stopped");
    }
}

pub(super) fn error(status: StatusCode, message: String) -> Response {
    (status, Json(ErrorBody { error: message })).into_response()
}

async fn status(State(s): State<ControlState>) -> Response {
    let v = s.view.borrow().clone();
    let settings = s.settings.borrow().clone();
    let hub = s.hub.as_ref().map(|h| h.status());
    let mut st = status_of(&settings, &v, hub);
    st.fleet = s.fleet.as_ref().map(|f| f.view());
    Json(st).into_response()
}

#[derive(Deserialize)]
struct HistoryQuery {
    n: Option<usize>,
}

async fn history(
    State(s): State<ControlState>,
    q: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let n = match q {
        Ok(Query(q)) => q.n,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad query: {e}")),
    };
    let journal = s.journal.clone();
    // `-n`: read from the end, so a long history answers as fast as a short one.
    let read = move || match n {
        Some(n) => journal.history_tail(n),
        None => journal.history(),
    };
    match tokio::task::spawn_blocking(read).await {
        Ok(Ok(h)) => Json(h).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Parses a JSON body (an empty body is `{}`); malformed input is a 400 that says why.
pub(crate) fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(text).map_err(|e| format!("malformed request body: {e}"))
}

/// Why `action` cannot start now, if it cannot: the update's one table
/// ([`crate::update::allows`]), asked with the view the loop published last.
pub(crate) fn refusal(action: &Action, v: &View) -> Option<String> {
    crate::update::allows(action, v.phase, &v.state).err()
}

/// Takes the ticket and hands `action` to the loop; the receiver gets the
/// result when it has run. An `Err` is the answer to give instead.
async fn submit(
    s: &ControlState,
    action: Action,
    peer: Peer,
) -> Result<oneshot::Receiver<ActionResult>, Response> {
    if let Some(why) = refusal(&action, &s.view.borrow()) {
        return Err(error(StatusCode::CONFLICT, why));
    }
    let Some(ticket) = Ticket::take(&s.busy) else {
        return Err(error(StatusCode::CONFLICT, QUEUED.into()));
    };
    let (reply, rx) = oneshot::channel();
    // Who asked, for the history (reads the password database: off the async threads).
    let user = tokio::task::spawn_blocking(move || peer.describe())
        .await
        .ok();
    s.jobs
        .send(Job {
            action,
            reply,
            ticket,
            user,
        })
        .await
        .map_err(|_| {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the agent is shutting down".into(),
            )
        })?;
    Ok(rx)
}

async fn answer(rx: oneshot::Receiver<ActionResult>) -> Response {
    match rx.await {
        Ok(r) => Json(r).into_response(),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the agent stopped before the action ended".into(),
        ),
    }
}

fn started() -> Response {
    Json(ActionResult {
        outcome: "started".into(),
        digest: None,
        error: None,
    })
    .into_response()
}

/// Submits `action` and answers when it has run.
async fn run(s: &ControlState, action: Action, peer: Peer) -> Response {
    match submit(s, action, peer).await {
        Ok(rx) => answer(rx).await,
        Err(resp) => resp,
    }
}

async fn check(
    State(s): State<ControlState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    bytes: Bytes,
) -> Response {
    let req: CheckRequest = match body(&bytes) {
        Ok(r) => r,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    match submit(&s, Action::Check, peer).await {
        Ok(rx) if req.wait => answer(rx).await,
        Ok(_) => started(),
        Err(resp) => resp,
    }
}

/// The `update` call's body as an action; an `Err` is the 400's text.
pub(crate) fn update_action(bytes: &[u8]) -> Result<Action, String> {
    let req: UpdateRequest = body(bytes)?;
    if !is_sha256_digest(&req.digest) {
        return Err(format!(
            "{:?} is not a digest: write sha256:<64 hex digits>",
            req.digest
        ));
    }
    Ok(Action::Update { digest: req.digest })
}

async fn update(
    State(s): State<ControlState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    bytes: Bytes,
) -> Response {
    match update_action(&bytes) {
        Ok(action) => run(&s, action, peer).await,
        Err(why) => error(StatusCode::BAD_REQUEST, why),
    }
}

/// The `drain` call's body as an action and its `wait`; an `Err` is the 400's text.
pub(crate) fn drain_action(bytes: &[u8]) -> Result<(Action, bool), String> {
    let req: DrainRequest = body(bytes)?;
    let timeout = match req.timeout.as_deref().map(crate::config::parse_duration) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(why)) => return Err(format!("drain timeout: {why}")),
    };
    let reason = req.reason.filter(|r| !r.trim().is_empty());
    Ok((Action::Drain { reason, timeout }, req.wait))
}

async fn drain(
    State(s): State<ControlState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    bytes: Bytes,
) -> Response {
    let (action, wait) = match drain_action(&bytes) {
        Ok(r) => r,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    match submit(&s, action, peer).await {
        Ok(rx) if wait => answer(rx).await,
        Ok(_) => started(),
        Err(resp) => resp,
    }
}

async fn undrain(
    State(s): State<ControlState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    bytes: Bytes,
) -> Response {
    if let Err(why) = body::<Empty>(&bytes) {
        return error(StatusCode::BAD_REQUEST, why);
    }
    let in_progress = |v: &View| v.state.drained && !v.state.drain_complete;
    let drain_running = |v: &View| in_progress(v) && v.phase == Phase::Draining;
    if drain_running(&s.view.borrow()) {
        // The drain still waits for in-flight jobs: end the wait (the worker
        // never stopped, and gets its jobs back), and see how it ended.
        s.drain_cancel.store(true, Ordering::SeqCst);
        info!("agentctl undrain: cancelling the maintenance drain in progress");
        let mut view = s.view.clone();
        let ended = tokio::time::timeout(
            UNDRAIN_WAIT,
            view.wait_for(|v| !in_progress(v) && v.phase != Phase::Draining),
        )
        .await;
        match ended {
            Ok(Ok(v)) if !v.state.drained => {
                let digest = v.state.current_digest.clone();
                return Json(ActionResult {
                    outcome: "undrained".into(),
                    digest,
                    error: None,
                })
                .into_response();
            }
            // The drain had stopped the worker already: undrain as usual,
            // once the drain job has given back the ticket.
            Ok(Ok(_)) => {}
            Ok(Err(_)) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the agent is shutting down".into(),
                )
            }
            Err(_) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "the drain did not end within {} s of the cancel; agentctl status shows where it is",
                        UNDRAIN_WAIT.as_secs()
                    ),
                )
            }
        }
    }
    // A drain job that just ended may still hold the ticket for a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match submit(&s, Action::Undrain, peer).await {
            Ok(rx) => return answer(rx).await,
            Err(_) if s.busy.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(resp) => return resp,
        }
    }
}

async fn rollback(
    State(s): State<ControlState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    bytes: Bytes,
) -> Response {
    if let Err(why) = body::<Empty>(&bytes) {
        return error(StatusCode::BAD_REQUEST, why);
    }
    run(&s, Action::Rollback, peer).await
}

/// The `pin` call's body as an action; an `Err` is the 400's text.
pub(crate) fn pin_action(bytes: &[u8]) -> Result<Action, String> {
    let req: PinRequest = body(bytes)?;
    check_reference(&req.reference)?;
    Ok(Action::Pin {
        reference: req.reference,
    })
}

async fn pin(
    State(s): State<ControlState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    bytes: Bytes,
) -> Response {
    match pin_action(&bytes) {
        Ok(action) => run(&s, action, peer).await,
        Err(why) => error(StatusCode::BAD_REQUEST, why),
    }
}

async fn unpin(
    State(s): State<ControlState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    bytes: Bytes,
) -> Response {
    if let Err(why) = body::<Empty>(&bytes) {
        return error(StatusCode::BAD_REQUEST, why);
    }
    run(&s, Action::Unpin, peer).await
}

async fn health(State(s): State<ControlState>) -> Response {
    let v = s.view.borrow().clone();
    Json(s.health.health(v).await).into_response()
}

/// A call without parameters takes no body or `{}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Empty {}

/// A pin names a digest or a tag (the OCI tag grammar).
pub(crate) fn check_reference(r: &str) -> Result<(), String> {
    if r.starts_with("sha256:") {
        return if is_sha256_digest(r) {
            Ok(())
        } else {
            Err(format!(
                "{r:?} is not a digest: write sha256:<64 hex digits>"
            ))
        };
    }
    let mut chars = r.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if first_ok
        && r.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        Ok(())
    } else {
        Err(format!(
            "{r:?} is neither a digest (sha256:<64 hex digits>) nor a tag ([A-Za-z0-9_][A-Za-z0-9._-]{{0,127}})"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::journal::{Pending, Trigger};

    #[tokio::test]
    async fn a_fresh_socket_is_private_a_stale_one_replaced_a_live_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/agent.sock");
        let live = bind(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        // A second agent must not steal the socket of a live one.
        match bind(&path).await {
            Err(ControlError::InUse { .. }) => {}
            other => panic!("expected InUse, got {other:?}"),
        }
        // After a crash the file stays, with nobody listening: it is replaced.
        drop(live);
        assert!(path.exists());
        let again = bind(&path).await.unwrap();
        drop(again);
    }

    #[test]
    fn one_ticket_at_a_time() {
        let busy = Arc::new(AtomicBool::new(false));
        let t = Ticket::take(&busy).expect("free");
        assert!(Ticket::take(&busy).is_none(), "a second action got in");
        drop(t);
        assert!(Ticket::take(&busy).is_some(), "the ticket came back");
    }

    #[test]
    fn actions_are_refused_while_drained_or_updating() {
        let update = Action::Update {
            digest: "sha256:c".into(),
        };
        let mut v = View::default();
        assert_eq!(refusal(&update, &v), None);
        v.phase = Phase::Draining;
        v.state.pending = Some(Pending {
            from: Some("sha256:a".into()),
            to: "sha256:b".into(),
            trigger: Trigger::Poll,
            step: Phase::Draining,
            started_at: time::OffsetDateTime::now_utc(),
            error: None,
            kind: Default::default(),
            pin: None,
            to_spec: None,
            from_spec: None,
            changed: Vec::new(),
        });
        let why = refusal(&update, &v).unwrap();
        assert!(
            why.contains("in progress") && why.contains("sha256:b") && why.contains("draining"),
            "{why}"
        );
        // A plain poll is a check, not an update.
        let v = View {
            phase: Phase::Checking,
            ..View::default()
        };
        assert!(refusal(&Action::Check, &v)
            .unwrap()
            .contains("checking the registry"));
        let mut v = View::default();
        v.state.drained = true;
        v.state.drain_complete = true;
        v.state.drain_reason = Some("kernel upgrade".into());
        for a in [
            Action::Check,
            update.clone(),
            Action::Rollback,
            Action::Pin {
                reference: "v2".into(),
            },
        ] {
            assert!(
                refusal(&a, &v).unwrap().contains("agentctl undrain"),
                "{a:?}"
            );
        }
        let again = Action::Drain {
            reason: None,
            timeout: None,
        };
        let why = refusal(&again, &v).unwrap();
        assert!(
            why.contains("already drained") && why.contains("kernel upgrade"),
            "{why}"
        );
        assert_eq!(refusal(&Action::Undrain, &v), None);
    }

    #[test]
    fn maintenance_commands_say_why_they_cannot_run() {
        let mut v = View::default();
        assert!(refusal(&Action::Undrain, &v)
            .unwrap()
            .contains("not drained"));
        assert!(refusal(&Action::Unpin, &v).unwrap().contains("not pinned"));
        assert!(refusal(&Action::Rollback, &v)
            .unwrap()
            .contains("no earlier good digest"));
        v.state.commit("sha256:a");
        v.state.commit("sha256:b");
        assert_eq!(refusal(&Action::Rollback, &v), None);
        v.state.pinned = Some("v1".into());
        let why = refusal(
            &Action::Update {
                digest: "sha256:c".into(),
            },
            &v,
        )
        .unwrap();
        assert!(
            why.contains("pinned to v1") && why.contains("agentctl unpin"),
            "{why}"
        );
        assert!(refusal(&Action::Rollback, &v).unwrap().contains("pinned"));
        assert_eq!(
            refusal(
                &Action::Pin {
                    reference: "v2".into()
                },
                &v
            ),
            None
        );
        assert_eq!(refusal(&Action::Unpin, &v), None);
    }

    #[test]
    fn pin_references_are_digests_or_tags() {
        let d = format!("sha256:{}", "ab".repeat(32));
        for good in [d.as_str(), "v1", "stable", "1.2.3-rc_1", "_x"] {
            assert!(check_reference(good).is_ok(), "{good}");
        }
        let long = "a".repeat(129);
        for bad in [
            "",
            "sha256:abc",
            "-v1",
            ".x",
            "a/b",
            "a:b",
            "with space",
            long.as_str(),
        ] {
            assert!(check_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn request_bodies_become_checked_actions() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let body = format!(r#"{{"digest": "{d}"}}"#);
        assert_eq!(
            update_action(body.as_bytes()),
            Ok(Action::Update { digest: d.clone() })
        );
        assert!(update_action(br#"{"digest": "latest"}"#)
            .unwrap_err()
            .contains("not a digest"));
        assert_eq!(
            drain_action(br#"{"reason": " ", "timeout": "10m", "wait": true}"#),
            Ok((
                Action::Drain {
                    reason: None,
                    timeout: Some(Duration::from_secs(600))
                },
                true
            ))
        );
        assert!(drain_action(br#"{"timeout": "soon"}"#)
            .unwrap_err()
            .starts_with("drain timeout"));
        assert_eq!(
            pin_action(br#"{"reference": "v2.4"}"#),
            Ok(Action::Pin {
                reference: "v2.4".into()
            })
        );
        assert!(pin_action(br#"{"reference": "-x"}"#).is_err());
        assert!(pin_action(b"").unwrap_err().contains("malformed"));
    }

    #[test]
    fn malformed_bodies_are_refused_with_the_reason() {
        assert!(body::<CheckRequest>(&Bytes::from_static(b"")).is_ok());
        assert!(
            body::<CheckRequest>(&Bytes::from_static(b"{\"wait\": true}"))
                .unwrap()
                .wait
        );
        for bad in [&b"not json"[..], b"{\"wait\": 5}", b"{\"wiat\": true}"] {
            let why = body::<CheckRequest>(&Bytes::copy_from_slice(bad)).unwrap_err();
            assert!(why.starts_with("malformed request body"), "{why}");
        }
        assert!(body::<UpdateRequest>(&Bytes::from_static(b"{}")).is_err());
    }
}
