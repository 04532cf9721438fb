//! `agentctl history [-n N]`: the audit trail.

use serde::Serialize;

use super::client::Client;
use super::output::{millis, short_digest, table, timestamp, Output};
use super::{CliError, Exit};
use crate::update::journal::HistoryEntry;

/// Show the audit trail of updates, rollbacks and drains, oldest first.
///
/// One line per entry: when, what (update, rollback, drain, undrain, pin,
/// unpin), from which digest to which (the first 12 hex digits), the outcome
/// (success, rolled_back, failed, aborted), what triggered it (poll, nudge,
/// cli, hub, startup, fleet, config), the worker's downtime for updates, and
/// the error (or a drain's reason); for a change of the worker's settings,
/// the keys that changed (names only).
/// With --json, the full entries.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only the last N entries.
    #[arg(short = 'n', long = "last", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub n: Option<u32>,
}

pub async fn run(args: Args, client: &Client, out: Output) -> Result<Exit, CliError> {
    let reply = client.history(args.n).await?;
    out.answer(&reply, true, |h| render(h));
    Ok(Exit::Ok)
}

/// The entries as a table, oldest first.
pub fn render(entries: &[HistoryEntry]) -> String {
    if entries.is_empty() {
        return "no history yet".into();
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                timestamp(e.at),
                name(&e.kind),
                format!(
                    "{} → {}",
                    short_digest(e.from.as_deref()),
                    short_digest(e.to.as_deref())
                ),
                name(&e.outcome),
                name(&e.trigger),
                e.downtime_ms.map_or_else(|| "-".into(), millis),
                detail(e),
            ]
        })
        .collect();
    table(
        &[
            "AT",
            "KIND",
            "FROM → TO",
            "OUTCOME",
            "TRIGGER",
            "DOWNTIME",
            "DETAIL",
        ],
        &rows,
    )
}

/// The error (or a drain's reason), after the settings a change of them
/// alone changed (`changed worker.env.MODEL: not healthy within 15s`).
fn detail(e: &HistoryEntry) -> String {
    let text = match (&e.error, &e.reason) {
        (Some(error), _) => Some(one_line(error)),
        (None, Some(reason)) => Some(format!("reason: {}", one_line(reason))),
        (None, None) => None,
    };
    match (e.changed.is_empty(), text) {
        (true, Some(t)) => t,
        (true, None) => "-".into(),
        (false, Some(t)) => format!("changed {}: {t}", e.changed.join(", ")),
        (false, None) => format!("changed {}", e.changed.join(", ")),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The wire name of a unit enum (`rolled_back`).
fn name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::journal::{Kind, Outcome, Trigger};
    use time::macros::datetime;

    #[test]
    fn the_table_reads_at_a_glance() {
        let d = |c: char| Some(format!("sha256:{}", c.to_string().repeat(64)));
        let entries = vec![
            HistoryEntry {
                at: datetime!(2026-11-22 07:00:00 UTC),
                kind: Kind::Update,
                from: None,
                to: d('a'),
                outcome: Outcome::Success,
                trigger: Trigger::Startup,
                error: None,
                downtime_ms: Some(0),
                reason: None,
                user: None,
                marked_bad: None,
                gpu_hold: None,
                changed: Vec::new(),
                spec: None,
            },
            HistoryEntry {
                at: datetime!(2026-11-22 07:10:00.5 UTC),
                kind: Kind::Update,
                from: d('a'),
                to: d('b'),
                outcome: Outcome::RolledBack,
                trigger: Trigger::Cli,
                error: Some("worker not healthy within 15s:\n  last output".into()),
                downtime_ms: Some(17_250),
                reason: None,
                user: None,
                marked_bad: None,
                gpu_hold: None,
                changed: Vec::new(),
                spec: None,
            },
            HistoryEntry {
                at: datetime!(2026-11-22 07:20:00 UTC),
                kind: Kind::Drain,
                from: None,
                to: None,
                outcome: Outcome::Success,
                trigger: Trigger::Cli,
                error: None,
                downtime_ms: None,
                reason: Some("bios update".into()),
                user: None,
                marked_bad: None,
                gpu_hold: None,
                changed: Vec::new(),
                spec: None,
            },
        ];
        assert_eq!(
            render(&entries),
            "\
AT                    KIND    FROM → TO                    OUTCOME      TRIGGER  DOWNTIME  DETAIL
2026-11-22T07:00:00Z  update  - → aaaaaaaaaaaa             success      startup  0ms       -
2026-11-22T07:10:00Z  update  aaaaaaaaaaaa → bbbbbbbbbbbb  rolled_back  cli      17.2s     worker not healthy within 15s: last output
2026-11-22T07:20:00Z  drain   - → -                        success      cli      -         reason: bios update
"
        );
        assert_eq!(render(&[]), "no history yet");
    }
}
