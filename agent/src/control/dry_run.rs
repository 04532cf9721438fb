//! `POST /v1/dry-run`: what `check` or `update --digest` would do now. The
//! loop answers it between its turns ([`DryRunJob`], `Updater::dry_run`,
//! which changes nothing); the server refuses it while an update or a
//! maintenance drain runs, and drops it if one starts before the loop takes it.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::oneshot;

use super::api::DryRunRequest;
use super::server::{body, error, ControlState};
use crate::registry::is_sha256_digest;
use crate::update::{allows_dry_run, DryRun, DryRunOf, View};

/// A dry run for the daemon loop (answered between its turns). It holds no
/// [`Ticket`]: it changes nothing, so it neither waits for one nor blocks
/// an action; the caller's answer is dropped if an update starts first.
#[derive(Debug)]
pub struct DryRunJob {
    pub of: DryRunOf,
    pub reply: oneshot::Sender<DryRun>,
}

/// The `dry-run` call's body; an `Err` is the 400's text.
pub(crate) fn dry_run_of(bytes: &[u8]) -> Result<DryRunOf, String> {
    let req: DryRunRequest = body(bytes)?;
    match req.digest {
        None => Ok(DryRunOf::Check),
        Some(d) if is_sha256_digest(&d) => Ok(DryRunOf::Update(d)),
        Some(d) => Err(format!(
            "{d:?} is not a digest: write sha256:<64 hex digits>"
        )),
    }
}

/// Why a dry run cannot be answered in the state `v` shows, if it cannot.
pub(crate) fn dry_run_refusal(v: &View) -> Option<String> {
    allows_dry_run(v.phase, &v.state)
        .err()
        .map(|why| format!("{why} (a dry run describes the agent at rest)"))
}

/// Hands the dry run to the loop and answers with its report; 409 if an
/// update or a maintenance drain runs, or starts before the loop takes it.
pub(super) async fn dry_run(State(s): State<ControlState>, bytes: Bytes) -> Response {
    let of = match dry_run_of(&bytes) {
        Ok(of) => of,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    if let Some(why) = dry_run_refusal(&s.view.borrow()) {
        return error(StatusCode::CONFLICT, why);
    }
    let (reply, rx) = oneshot::channel();
    if s.dry_runs.send(DryRunJob { of, reply }).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is shutting down".into(),
        );
    }
    let mut view = s.view.clone();
    tokio::select! {
        r = rx => match r {
            Ok(report) => Json(report).into_response(),
            Err(_) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the agent stopped before the dry run ended".into(),
            ),
        },
        // Dropping `rx` tells the loop not to run it.
        Ok(v) = view.wait_for(|v| dry_run_refusal(v).is_some()) => {
            let why = dry_run_refusal(&v).unwrap_or_default();
            error(StatusCode::CONFLICT, why)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::journal::{Pending, Trigger};
    use crate::update::Phase;

    #[test]
    fn dry_runs_are_refused_only_while_an_update_or_a_drain_runs() {
        let mut v = View::default();
        assert_eq!(dry_run_refusal(&v), None);
        // Drained or pinned is what the dry run reports, not a reason to refuse.
        v.phase = Phase::Drained;
        v.state.drained = true;
        v.state.drain_complete = true;
        v.state.pinned = Some("v1".into());
        assert_eq!(dry_run_refusal(&v), None);
        // A check in progress only delays it.
        let v = View {
            phase: Phase::Checking,
            ..View::default()
        };
        assert_eq!(dry_run_refusal(&v), None);
        let mut v = View {
            phase: Phase::Draining,
            ..View::default()
        };
        v.state.drained = true;
        let why = dry_run_refusal(&v).unwrap();
        assert!(why.contains("maintenance drain"), "{why}");
        v.state.drained = false;
        v.phase = Phase::Checking;
        v.state.pending = Some(Pending {
            from: None,
            to: "sha256:b".into(),
            trigger: Trigger::Poll,
            step: Phase::Pulling,
            started_at: time::OffsetDateTime::now_utc(),
            error: None,
            kind: Default::default(),
            pin: None,
            to_spec: None,
            from_spec: None,
            changed: Vec::new(),
        });
        let why = dry_run_refusal(&v).unwrap();
        assert!(
            why.contains("in progress") && why.contains("sha256:b"),
            "{why}"
        );
    }

    #[test]
    fn dry_run_bodies_name_a_check_or_an_update() {
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(dry_run_of(b""), Ok(DryRunOf::Check));
        assert_eq!(dry_run_of(b"{}"), Ok(DryRunOf::Check));
        let body = format!(r#"{{"digest": "{d}"}}"#);
        assert_eq!(dry_run_of(body.as_bytes()), Ok(DryRunOf::Update(d)));
        assert!(dry_run_of(br#"{"digest": "latest"}"#)
            .unwrap_err()
            .contains("not a digest"));
        assert!(dry_run_of(br#"{"wait": true}"#)
            .unwrap_err()
            .starts_with("malformed request body"));
    }
}
