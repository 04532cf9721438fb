//! The control socket's server: binding (stale sockets replaced, live ones not
//! stolen, mode 0660, group `gpu-agent` where it exists) and the routes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::api::{ActionResult, CheckRequest, ErrorBody, Status, UpdateRequest};
use crate::config::Settings;
use crate::registry::is_sha256_digest;
use crate::update::{Journal, Phase, View};

/// The refusal while another action is accepted and not yet done.
const QUEUED: &str =
    "another agentctl action was accepted and has not ended yet; try again when it ends";

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

/// Work for the daemon loop, with where to send the answer. Each job holds
/// the one [`Ticket`] until it has run.
#[derive(Debug)]
pub enum Job {
    Check {
        reply: oneshot::Sender<ActionResult>,
        ticket: Ticket,
    },
    Update {
        digest: String,
        reply: oneshot::Sender<ActionResult>,
        ticket: Ticket,
    },
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
    pub settings: Arc<Settings>,
    pub view: watch::Receiver<View>,
    pub jobs: mpsc::Sender<Job>,
    pub journal: Journal,
    /// Set while an accepted action waits or runs.
    pub busy: Arc<AtomicBool>,
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
        .route("/v1/check", post(check))
        .route("/v1/update", post(update))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such call: see agentctl --help".into(),
            )
        })
        .with_state(state);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        warn!(error = %e, "control socket server stopped");
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(ErrorBody { error: message })).into_response()
}

fn rfc3339(t: Option<time::OffsetDateTime>) -> Option<String> {
    t.and_then(|t| t.format(&Rfc3339).ok())
}

fn status_of(settings: &Settings, v: &View) -> Status {
    Status {
        agent_id: settings.agent.id.clone(),
        phase: v.phase.as_str().to_string(),
        current_digest: v.state.current_digest.clone(),
        last_good_digest: v.state.last_good_digest.clone(),
        drained: v.state.drained,
        pinned: v.state.pinned.clone(),
        bad_digests: v.state.bad_digests.clone(),
        last_check: rfc3339(v.last_check),
        next_check: rfc3339(v.next_check),
        last_error: v.last_error.clone(),
        image: settings.image.name.to_string(),
        policy: settings.image.policy.to_string(),
        pending: v
            .state
            .pending
            .as_ref()
            .and_then(|p| serde_json::to_value(p).ok()),
        drain_reason: v.state.drain_reason.clone(),
        drained_at: rfc3339(v.state.drained_at),
        pinned_digest: v.state.pinned_digest.clone(),
    }
}

async fn status(State(s): State<ControlState>) -> Response {
    let v = s.view.borrow().clone();
    Json(status_of(&s.settings, &v)).into_response()
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
    match tokio::task::spawn_blocking(move || journal.history()).await {
        Ok(Ok(mut h)) => {
            if let Some(n) = n {
                let skip = h.len().saturating_sub(n);
                h.drain(..skip);
            }
            Json(h).into_response()
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Parses a JSON body (an empty body is `{}`); malformed input is a 400 that says why.
fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, String> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(text).map_err(|e| format!("malformed request body: {e}"))
}

/// Why an action cannot start now, if it cannot.
fn refusal(v: &View) -> Option<String> {
    if v.state.drained || v.phase == Phase::Drained {
        return Some("the worker is drained for maintenance: run `agentctl undrain` first".into());
    }
    if v.phase.is_updating() || v.phase == Phase::Checking || v.state.pending.is_some() {
        let to = v
            .state
            .pending
            .as_ref()
            .map(|p| format!(" to {}", p.to))
            .unwrap_or_default();
        return Some(format!(
            "an update{to} is in progress (phase: {}); try again when it ends",
            v.phase
        ));
    }
    None
}

async fn send(s: &ControlState, job: Job) -> Result<(), String> {
    s.jobs
        .send(job)
        .await
        .map_err(|_| "the agent is shutting down".to_string())
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

async fn check(State(s): State<ControlState>, bytes: Bytes) -> Response {
    let req: CheckRequest = match body(&bytes) {
        Ok(r) => r,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    if let Some(why) = refusal(&s.view.borrow()) {
        return error(StatusCode::CONFLICT, why);
    }
    let Some(ticket) = Ticket::take(&s.busy) else {
        return error(StatusCode::CONFLICT, QUEUED.into());
    };
    let (reply, rx) = oneshot::channel();
    if let Err(why) = send(&s, Job::Check { reply, ticket }).await {
        return error(StatusCode::INTERNAL_SERVER_ERROR, why);
    }
    if req.wait {
        answer(rx).await
    } else {
        Json(ActionResult {
            outcome: "started".into(),
            digest: None,
            error: None,
        })
        .into_response()
    }
}

async fn update(State(s): State<ControlState>, bytes: Bytes) -> Response {
    let req: UpdateRequest = match body(&bytes) {
        Ok(r) => r,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    if !is_sha256_digest(&req.digest) {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "{:?} is not a digest: write sha256:<64 hex digits>",
                req.digest
            ),
        );
    }
    if let Some(why) = refusal(&s.view.borrow()) {
        return error(StatusCode::CONFLICT, why);
    }
    let Some(ticket) = Ticket::take(&s.busy) else {
        return error(StatusCode::CONFLICT, QUEUED.into());
    };
    let (reply, rx) = oneshot::channel();
    if let Err(resp) = send(
        &s,
        Job::Update {
            digest: req.digest,
            reply,
            ticket,
        },
    )
    .await
    {
        return error(StatusCode::INTERNAL_SERVER_ERROR, resp);
    }
    answer(rx).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::journal::{Pending, Step, Trigger};

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
        let mut v = View::default();
        assert_eq!(refusal(&v), None);
        v.phase = Phase::Draining;
        v.state.pending = Some(Pending {
            from: Some("sha256:a".into()),
            to: "sha256:b".into(),
            trigger: Trigger::Poll,
            step: Step::Draining,
            started_at: time::OffsetDateTime::now_utc(),
            error: None,
        });
        let why = refusal(&v).unwrap();
        assert!(
            why.contains("in progress") && why.contains("sha256:b") && why.contains("draining"),
            "{why}"
        );
        let mut v = View::default();
        v.state.drained = true;
        assert!(refusal(&v).unwrap().contains("agentctl undrain"));
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
