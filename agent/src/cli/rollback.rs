//! `agentctl rollback`: go back to the previous good digest and stay there.

use super::client::Client;
use super::output::{action_line, because, Output};
use super::{CliError, Exit};
use crate::control::api::ActionResult;

/// Revert now to the good digest before the current one, and stay there.
///
/// The agent deploys the last good digest before the one the worker runs,
/// through the usual path (pull, drain, swap, verify), and marks the digest
/// it leaves bad, so that polling does not bring it back (agentctl update
/// --digest or agentctl pin deploys it again). agentctl blocks until the
/// earlier digest runs and passed verification (as long as the drain timeout
/// allows) and exits 0; 1 when the rollback was itself rolled back, aborted
/// or failed; 4 when the agent refuses (no earlier good digest, an update in
/// progress, drained). Interrupting agentctl does not stop the rollback.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args, client: &Client, out: Output) -> Result<Exit, CliError> {
    // The answer names only the digest rolled back to; for the text, the
    // digest left is the one running now.
    let left = if out.json() {
        None
    } else {
        client
            .status()
            .await
            .ok()
            .and_then(|s| s.value.current_digest)
    };
    let reply = client
        .showing_progress(out, "the rollback", client.rollback())
        .await?;
    let ok = reply.value.outcome == "updated";
    out.answer(&reply, ok, |r| line(r, left.as_deref()));
    Ok(if ok { Exit::Ok } else { Exit::Failed })
}

/// What the rollback led to, in one line; `left` is the digest the worker ran
/// before, if known.
pub fn line(r: &ActionResult, left: Option<&str>) -> String {
    let to = r.digest.as_deref().unwrap_or("the earlier good digest");
    match r.outcome.as_str() {
        "updated" => format!(
            "rolled back to {to}; {} is marked bad, so polling does not bring it back \
             (agentctl update --digest or agentctl pin deploys it again)",
            left.filter(|l| Some(*l) != r.digest.as_deref())
                .unwrap_or("the digest it left")
        ),
        "rolled_back" => format!(
            "not rolled back: {to} failed verification and the worker runs the digest it ran \
             before again{}",
            because(r)
        ),
        "aborted" => format!(
            "rollback aborted before the swap; the worker keeps running its digest{}",
            because(r)
        ),
        "failed" => format!("rollback failed{}", because(r)),
        _ => action_line(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(outcome: &str, error: Option<&str>) -> ActionResult {
        ActionResult {
            outcome: outcome.into(),
            digest: Some("sha256:aa".into()),
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn a_rollback_names_both_digests() {
        assert_eq!(
            line(&r("updated", None), Some("sha256:bb")),
            "rolled back to sha256:aa; sha256:bb is marked bad, so polling does not bring it \
             back (agentctl update --digest or agentctl pin deploys it again)"
        );
        assert!(line(&r("updated", None), None)
            .starts_with("rolled back to sha256:aa; the digest it left is marked bad"));
    }

    #[test]
    fn a_failed_rollback_says_why() {
        assert_eq!(
            line(
                &r("rolled_back", Some("not healthy within 15s")),
                Some("sha256:bb")
            ),
            "not rolled back: sha256:aa failed verification and the worker runs the digest it \
             ran before again: not healthy within 15s"
        );
        assert_eq!(
            line(&r("aborted", Some("pull failed")), None),
            "rollback aborted before the swap; the worker keeps running its digest: pull failed"
        );
        assert_eq!(line(&r("failed", Some("x")), None), "rollback failed: x");
    }
}
