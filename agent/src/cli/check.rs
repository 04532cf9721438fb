//! `agentctl check`: look for a new digest now, like a nudge from the hub.

use super::client::Client;
use super::output::{action_line, Output};
use super::{CliError, Exit};

/// Check for a new worker image digest now (like a nudge from the hub).
///
/// The agent resolves its tag or version range (or asks the hub) at once
/// instead of at the next poll. If that names a new digest, the update runs
/// through the usual path: pull while the old worker serves, drain, swap,
/// verify, and roll back to the last good digest on failure. Without --wait
/// agentctl returns as soon as the check has started; with --wait it blocks
/// until the update ends (as long as the drain timeout allows) and exits 1
/// if it was rolled back, aborted or failed. Interrupting agentctl does not
/// stop the update: agentctl status shows how it goes.
///
/// With --dry-run nothing changes: the agent says which digest the check
/// would find and what decided it (tag, semver range, the hub, the fleet
/// rollout, a pin), then each gate with its verdict (pass, would_refuse or
/// unknown) and why: held (drained or pinned), bad mark, back-off, the hub's
/// swap budget, min_age, the cosign signature, the GPU pre-flight, the hub,
/// CUDA (when the image is on the host already) and the fleet slot (from
/// what the host knows; none is taken), what would be pulled, and the
/// worker's spec. It exits 0 whatever the verdict (see --json's "verdict":
/// would_update, up_to_date, would_refuse or unknown), 4 while an update
/// runs.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Block until the update the check starts (if any) has ended, and exit
    /// with its outcome.
    #[arg(long, conflicts_with = "dry_run")]
    pub wait: bool,
    /// Say what the check would do now, gate by gate, without doing it.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(args: Args, client: &Client, out: Output) -> Result<Exit, CliError> {
    if args.dry_run {
        return super::dry_run::run(None, client, out).await;
    }
    let reply = if args.wait {
        client
            .showing_progress(out, "the update", client.check(true))
            .await?
    } else {
        client.check(false).await?
    };
    let ok = reply.value.ok();
    out.answer(&reply, ok, action_line);
    Ok(if ok { Exit::Ok } else { Exit::Failed })
}
