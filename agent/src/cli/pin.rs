//! `agentctl pin REF`: deploy a digest or a tag and hold the worker there.

use super::client::Client;
use super::output::{action_line, Output};
use super::update::parse_digest;
use super::{CliError, Exit};
use crate::config::valid_tag;
use crate::control::api::ActionResult;

/// Deploy a digest or a tag and hold the worker there until agentctl unpin.
///
/// REF is a digest (sha256: and 64 lowercase hex digits) or a tag of the
/// configured repository (v2.4.1, stable); the agent resolves a tag once,
/// when it is pinned. Unless the worker already runs it, the digest is
/// deployed through the usual path (pull, drain, swap, verify, roll back on
/// failure); from then on updates are held: polls, nudges and the hub do not
/// move the worker until agentctl unpin. Pinning a digest marked bad clears
/// the mark. agentctl blocks until the pinned digest runs (as long as the
/// drain timeout allows) and exits 0; 1 when the deploy was rolled back,
/// aborted or failed; 4 when the agent refuses (an update in progress,
/// drained). Interrupting agentctl does not stop the deploy.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A digest (sha256:…) or a tag of the configured repository.
    #[arg(value_name = "REF", value_parser = parse_reference)]
    pub reference: String,
}

pub async fn run(args: Args, client: &Client, out: Output) -> Result<Exit, CliError> {
    let reply = client
        .showing_progress(out, "the pin", client.pin(&args.reference))
        .await?;
    let ok = matches!(reply.value.outcome.as_str(), "updated" | "up_to_date");
    out.answer(&reply, ok, |r| line(r, &args.reference));
    Ok(if ok { Exit::Ok } else { Exit::Failed })
}

/// A digest (`sha256:<64 hex>`) or a tag (`[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`);
/// a clap usage error otherwise.
pub fn parse_reference(s: &str) -> Result<String, String> {
    if s.starts_with("sha256:") {
        return parse_digest(s);
    }
    if valid_tag(s) {
        return Ok(s.to_string());
    }
    if s.contains(['/', ':', '@']) {
        return Err(format!(
            "{s:?} is not a digest or a tag: pin takes a digest (sha256: and 64 hex digits) or \
             a tag of the configured repository (v2), not a whole image reference"
        ));
    }
    Err(format!(
        "{s:?} is not a digest or a tag: a tag is 1 to 128 letters, digits, '_', '.' or '-', \
         and does not start with '.' or '-'"
    ))
}

/// What the pin led to, in one line.
pub fn line(r: &ActionResult, reference: &str) -> String {
    let pinned = match r.digest.as_deref() {
        Some(d) if d != reference => format!("{reference} ({d})"),
        _ => reference.to_string(),
    };
    match r.outcome.as_str() {
        "updated" => {
            format!("pinned to {pinned}: the worker runs it; updates are held until agentctl unpin")
        }
        "up_to_date" => format!(
            "pinned to {pinned}, which the worker already ran; updates are held until agentctl \
             unpin"
        ),
        _ => format!("pinning {reference} did not complete: {}", action_line(r)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_and_tags_pass() {
        let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
        for good in [
            digest.as_str(),
            "latest",
            "v2.4.1",
            "_x",
            "sha256",
            "a-b_c.d",
            &"a".repeat(128),
        ] {
            assert_eq!(parse_reference(good).unwrap(), good);
        }
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        let cases = [
            ("sha256:abc", "64 lowercase hex digits"),
            ("ghcr.io/acme/worker:v2", "not a whole image reference"),
            ("worker@sha256:00", "not a whole image reference"),
            ("sha512:00", "not a whole image reference"),
            ("", "1 to 128"),
            (".hidden", "does not start with"),
            ("-v2", "does not start with"),
            ("v 2", "1 to 128"),
            ("ümlaut", "1 to 128"),
        ];
        for (bad, why) in cases {
            let e = parse_reference(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(parse_reference(&"a".repeat(129)).is_err());
    }

    #[test]
    fn a_pin_says_what_it_holds() {
        let r = |o: &str, d: &str| ActionResult {
            outcome: o.into(),
            digest: Some(d.into()),
            error: None,
        };
        assert_eq!(
            line(&r("updated", "sha256:aa"), "v2"),
            "pinned to v2 (sha256:aa): the worker runs it; updates are held until agentctl unpin"
        );
        assert_eq!(
            line(&r("up_to_date", "sha256:aa"), "sha256:aa"),
            "pinned to sha256:aa, which the worker already ran; updates are held until agentctl unpin"
        );
        let failed = ActionResult {
            outcome: "rolled_back".into(),
            digest: Some("sha256:aa".into()),
            error: Some("not healthy within 15s".into()),
        };
        assert_eq!(
            line(&failed, "v2"),
            "pinning v2 did not complete: rolled back: sha256:aa failed and the last good \
             digest runs again: not healthy within 15s"
        );
    }
}
