//! `agentctl drain`: take the worker out of service for maintenance.

use super::client::Client;
use super::output::{action_line, because, Output};
use super::{CliError, Exit};
use crate::config::parse_duration;
use crate::control::api::{ActionResult, DrainRequest};

/// Drain the worker for maintenance and hold updates until agentctl undrain.
///
/// The agent stops new jobs from reaching the worker (through the worker's
/// drain endpoint, worker.drain.http), waits for the jobs in flight to end (up to
/// --timeout, default worker.drain.timeout), then stops the worker. At the
/// deadline worker.drain.on_timeout decides: abort gives the worker its jobs
/// back and refuses the drain, proceed stops the worker anyway. While drained
/// no update runs; agentctl undrain starts the worker again.
///
/// Without --wait agentctl returns as soon as the drain has started (agentctl
/// status shows when the worker is drained); with --wait it blocks until the
/// worker is stopped (as long as the timeout allows) and exits 0, or exits 1
/// when the drain was aborted or failed (the message says how many jobs were
/// still in flight). Exit 4 when the agent refuses in its current state (an
/// update in progress, for example). Interrupting agentctl does not stop the
/// drain.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Why the worker is drained (shown by agentctl status and history).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// How long the jobs in flight may take, like 90s, 10m or 1h30m (default:
    /// the agent's worker.drain.timeout).
    #[arg(long, value_name = "D", value_parser = parse_timeout)]
    pub timeout: Option<String>,
    /// Block until the worker is stopped (or the drain aborted), and exit
    /// with the outcome.
    #[arg(long)]
    pub wait: bool,
}

pub async fn run(args: Args, client: &Client, out: Output) -> Result<Exit, CliError> {
    let req = DrainRequest {
        reason: args.reason,
        timeout: args.timeout,
        wait: args.wait,
    };
    let reply = if req.wait {
        client
            .showing_progress(out, "the drain", client.drain(&req))
            .await?
    } else {
        client.drain(&req).await?
    };
    let ok = matches!(reply.value.outcome.as_str(), "started" | "drained");
    out.answer(&reply, ok, line);
    Ok(if ok { Exit::Ok } else { Exit::Failed })
}

/// A duration the config would take (`90s`, `10m`, `1h30m`), kept as written:
/// the agent reads it again.
pub fn parse_timeout(s: &str) -> Result<String, String> {
    parse_duration(s)?;
    Ok(s.to_string())
}

/// What the drain led to, in one line.
pub fn line(r: &ActionResult) -> String {
    match r.outcome.as_str() {
        "started" => "drain started: the worker gets no new jobs and stops once the jobs in \
                      flight end; agentctl status shows when it is drained"
            .into(),
        "drained" => {
            "drained: the worker is stopped; updates are held until agentctl undrain".into()
        }
        // The error says what became of the worker (it keeps serving, or
        // the drain resumes when the agent starts again).
        "aborted" => format!("drain aborted{}", because(r)),
        "failed" => format!("drain failed{}", because(r)),
        _ => action_line(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_checked_and_sent_as_written() {
        for good in ["90s", "10m", "1h30m", "250ms"] {
            assert_eq!(parse_timeout(good).unwrap(), good);
        }
        for bad in ["", "10", "ten minutes", "-5m", "5 parsecs", "2y"] {
            assert!(parse_timeout(bad).is_err(), "{bad:?}");
        }
        assert!(parse_timeout("10").unwrap_err().contains("no unit"));
    }

    #[test]
    fn every_drain_outcome_reads() {
        let r = |o: &str, e: Option<&str>| ActionResult {
            outcome: o.into(),
            digest: None,
            error: e.map(str::to_string),
        };
        assert_eq!(
            line(&r("drained", None)),
            "drained: the worker is stopped; updates are held until agentctl undrain"
        );
        assert!(line(&r("started", None)).starts_with("drain started: "));
        assert_eq!(
            line(&r("aborted", Some("3 jobs still in flight after 10m"))),
            "drain aborted: 3 jobs still in flight after 10m"
        );
        assert_eq!(
            line(&r("failed", Some("docker stop: timeout"))),
            "drain failed: docker stop: timeout"
        );
    }
}
