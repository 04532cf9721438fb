//! `agentctl undrain`: put the worker back in service after a drain.

use super::client::Client;
use super::output::{action_line, because, Output};
use super::{CliError, Exit};
use crate::control::api::ActionResult;

/// Start the worker again after a maintenance drain, and resume updates.
///
/// The agent starts the worker on the digest it ran before the drain, waits
/// for it to pass the same health gate as a new worker after an update, lets
/// jobs reach it again and resumes checking for updates. agentctl blocks
/// until the worker passed its health gate and exits 0, or 1 if it did not
/// (the message says why; agentctl health shows the worker). Exit 4 when the
/// agent refuses in its current state (not drained, for example).
/// Interrupting agentctl does not stop the undrain.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args, client: &Client, out: Output) -> Result<Exit, CliError> {
    let reply = client
        .showing_progress(out, "the worker to start", client.undrain())
        .await?;
    let ok = reply.value.outcome == "undrained";
    out.answer(&reply, ok, line);
    Ok(if ok { Exit::Ok } else { Exit::Failed })
}

/// What the undrain led to, in one line.
pub fn line(r: &ActionResult) -> String {
    match r.outcome.as_str() {
        "undrained" => match &r.digest {
            Some(d) => format!("undrained: the worker runs {d} again and updates resume"),
            None => "undrained: the worker runs again and updates resume".into(),
        },
        "failed" => format!("undrain failed{}", because(r)),
        _ => action_line(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undrain_outcomes_read() {
        let r = ActionResult {
            outcome: "undrained".into(),
            digest: Some("sha256:ab".into()),
            error: None,
        };
        assert_eq!(
            line(&r),
            "undrained: the worker runs sha256:ab again and updates resume"
        );
        let r = ActionResult {
            outcome: "failed".into(),
            digest: None,
            error: Some("worker not healthy within 60s".into()),
        };
        assert_eq!(line(&r), "undrain failed: worker not healthy within 60s");
    }
}
