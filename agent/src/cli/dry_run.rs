//! `--dry-run` of `agentctl check` and `agentctl update`: the agent's report of
//! what the action would do now (`POST /v1/dry-run`), as text or JSON.

use super::client::Client;
use super::output::{key_values, table, Output};
use super::{CliError, Exit};
use crate::control::api::DryRun;

/// Asks for the dry run of `check` (no digest) or `update --digest`, prints
/// it, and exits 0 whatever its verdict (the verdict is in the output).
pub async fn run(digest: Option<&str>, client: &Client, out: Output) -> Result<Exit, CliError> {
    let reply = client.dry_run(digest).await?;
    out.answer(&reply, true, text);
    Ok(Exit::Ok)
}

/// The report for an operator: the verdict and target, then one line per gate.
pub fn text(r: &DryRun) -> String {
    let command = match (r.action.as_str(), &r.target.digest) {
        ("update", Some(d)) => format!("agentctl update --digest {d}"),
        (a, _) => format!("agentctl {a}"),
    };
    let mut rows = vec![
        ("verdict", format!("{}: {}", r.verdict.as_str(), r.summary)),
        (
            "current",
            r.current_digest.clone().unwrap_or_else(|| "none".into()),
        ),
        (
            "target",
            format!(
                "{} (decided by {}: {})",
                r.target.digest.as_deref().unwrap_or("unknown"),
                r.target.decided_by,
                r.target.detail
            ),
        ),
    ];
    if let Some(p) = &r.pull {
        let present = match p.present {
            Some(true) => "present",
            Some(false) => "not present",
            None => "unknown",
        };
        rows.push(("pull", format!("{} ({present}): {}", p.image, p.detail)));
    }
    rows.push(("spec", format!("{}: {}", r.spec.verdict, r.spec.detail)));
    if !r.spec.differences.is_empty() {
        rows.push(("", r.spec.differences.join(", ")));
    }
    let gates: Vec<Vec<String>> = r
        .gates
        .iter()
        .map(|g| {
            vec![
                g.gate.clone(),
                g.verdict.as_str().to_string(),
                g.reason.clone(),
            ]
        })
        .collect();
    format!(
        "dry run of {command} (nothing was changed)\n{}\n{}",
        key_values(&rows),
        table(&["GATE", "VERDICT", "REASON"], &gates)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::api::{Gate, Outlook, Pull, SpecDiff, Target, Verdict};

    #[test]
    fn the_text_names_the_verdict_the_target_and_every_gate() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = DryRun {
            action: "check".into(),
            verdict: Outlook::WouldRefuse,
            summary: "would not update: bad_mark: marked bad".into(),
            current_digest: None,
            target: Target {
                digest: Some(d.clone()),
                decided_by: "tag".into(),
                detail: "tag stable".into(),
            },
            gates: vec![
                Gate {
                    gate: "held".into(),
                    verdict: Verdict::Pass,
                    reason: "not drained, not pinned".into(),
                },
                Gate {
                    gate: "bad_mark".into(),
                    verdict: Verdict::WouldRefuse,
                    reason: "marked bad".into(),
                },
            ],
            pull: Some(Pull {
                image: format!("r/w@{d}"),
                present: Some(false),
                detail: "pulled while the old worker serves".into(),
            }),
            spec: SpecDiff {
                verdict: "unknown".into(),
                differences: vec![],
                detail: "not recorded".into(),
            },
        };
        let t = text(&r);
        assert!(
            t.starts_with("dry run of agentctl check (nothing was changed)\n"),
            "{t}"
        );
        for want in [
            "verdict:  would_refuse: would not update: bad_mark: marked bad",
            "current:  none",
            &format!("target:   {d} (decided by tag: tag stable)"),
            "(not present): pulled while the old worker serves",
            "spec:     unknown: not recorded",
            "GATE      VERDICT       REASON",
            "held      pass          not drained, not pinned",
            "bad_mark  would_refuse  marked bad",
        ] {
            assert!(t.contains(want), "{want:?} not in:\n{t}");
        }
    }
}
