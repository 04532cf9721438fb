//! `agentctl unpin`: release a pin.

use super::client::Client;
use super::output::{action_line, Output};
use super::{CliError, Exit};
use crate::control::api::ActionResult;

/// Release a pin: follow the registry (or the hub) again.
///
/// Answered at once. The worker keeps running what it runs now; the next
/// check (at the next poll or nudge) follows the configured tag or version
/// range, or the hub, again, and may update the worker. agentctl check
/// checks now. Exit 0 when unpinned, 4 when the agent refuses in its current
/// state (the message says why).
#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args, client: &Client, out: Output) -> Result<Exit, CliError> {
    let reply = client.unpin().await?;
    let ok = reply.value.outcome == "unpinned";
    out.answer(&reply, ok, line);
    Ok(if ok { Exit::Ok } else { Exit::Failed })
}

/// What the unpin led to, in one line.
pub fn line(r: &ActionResult) -> String {
    match r.outcome.as_str() {
        "unpinned" => "unpinned: the next check follows the registry (or the hub) again; \
                       agentctl check checks now"
            .into(),
        _ => action_line(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpinned_points_at_check() {
        let r = ActionResult {
            outcome: "unpinned".into(),
            digest: None,
            error: None,
        };
        assert_eq!(
            line(&r),
            "unpinned: the next check follows the registry (or the hub) again; agentctl check \
             checks now"
        );
    }
}
