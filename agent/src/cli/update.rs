//! `agentctl update --digest sha256:…`: deploy one digest now.

use super::client::Client;
use super::output::{action_line, Output};
use super::{CliError, Exit};

/// Deploy one image digest now, through the same safe path as any update.
///
/// The agent pulls the digest from its repository while the old worker
/// serves, drains the old worker, swaps, verifies the new worker, and rolls
/// back to the last good digest if anything fails. agentctl blocks until the
/// update ends (as long as the drain timeout allows) and exits 0 when the
/// new worker runs, 1 when it was rolled back, aborted or failed, and 4 when
/// the agent refuses (an update already in progress, the worker drained for
/// maintenance). Deploying a digest marked bad tries it again. Interrupting
/// agentctl does not stop the update: agentctl status shows how it goes.
///
/// With --dry-run nothing changes: the agent says what the update would do
/// now, gate by gate (as agentctl check --dry-run does for a check), and
/// agentctl exits 0 whatever the verdict, 4 while an update runs.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image digest to deploy: sha256: and 64 lowercase hex digits, as
    /// `docker buildx imagetools inspect` or the registry shows it.
    #[arg(long, value_name = "sha256:…", value_parser = parse_digest)]
    pub digest: String,
    /// Say what the update would do now, gate by gate, without doing it.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(args: Args, client: &Client, out: Output) -> Result<Exit, CliError> {
    if args.dry_run {
        return super::dry_run::run(Some(&args.digest), client, out).await;
    }
    let reply = client
        .showing_progress(out, "the update", client.update(&args.digest))
        .await?;
    let ok = reply.value.ok();
    out.answer(&reply, ok, action_line);
    Ok(if ok { Exit::Ok } else { Exit::Failed })
}

/// `sha256:` and 64 lowercase hex digits (a clap usage error otherwise).
pub fn parse_digest(s: &str) -> Result<String, String> {
    let hex = s.strip_prefix("sha256:").ok_or_else(|| {
        "a digest is sha256: and 64 hex digits; a tag cannot be deployed with --digest".to_string()
    })?;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!(
            "after sha256: a digest has 64 lowercase hex digits, not {hex:?}"
        ));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sha256_digests_pass() {
        let good = format!("sha256:{}", "0123456789abcdef".repeat(4));
        assert_eq!(parse_digest(&good).unwrap(), good);
        for bad in [
            "latest".to_string(),
            "sha256:".to_string(),
            "sha256:abc".to_string(),
            format!("sha256:{}", "0123456789ABCDEF".repeat(4)),
            format!("sha512:{}", "0".repeat(128)),
            format!("{good}0"),
            format!(" {good}"),
        ] {
            assert!(parse_digest(&bad).is_err(), "{bad}");
        }
    }
}
