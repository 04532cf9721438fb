//! `agentctl status`: what the agent is doing and what the worker runs.

use time::OffsetDateTime;

use super::client::Client;
use super::output::{key_values, moment, short_digest, when, Output};
use super::{CliError, Exit};
use crate::control::api::Status;

/// Show what the agent is doing and what the worker runs.
///
/// The phase (idle, checking, pulling, draining, swapping, verifying,
/// rolling_back, drained, failed), the digest the worker runs and the last
/// one that passed verification, whether the worker is drained or pinned, the
/// digests marked bad (and why), when the agent last checked for a new digest
/// and when it checks next, its last error, the update in progress, and worker
/// settings from the config that failed and are held until it changes.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args, client: &Client, out: Output) -> Result<Exit, CliError> {
    let reply = client.status().await?;
    out.answer(&reply, true, |s| render(s, OffsetDateTime::now_utc()));
    Ok(Exit::Ok)
}

/// The status as aligned `key: value` lines.
pub fn render(s: &Status, now: OffsetDateTime) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("agent", s.agent_id.clone()),
        ("phase", s.phase.clone()),
        ("image", format!("{} ({})", s.image, s.policy)),
        (
            "current",
            s.current_digest.clone().unwrap_or_else(|| "none".into()),
        ),
        (
            "last good",
            s.last_good_digest.clone().unwrap_or_else(|| "none".into()),
        ),
        ("drained", drained(s, now)),
        ("pinned", pinned(s)),
    ];
    if s.bad_digests.is_empty() {
        rows.push(("bad digests", "none".into()));
    }
    for (i, b) in s.bad_digests.iter().enumerate() {
        let key = if i == 0 { "bad digests" } else { "" };
        let at = moment(b.at, now);
        rows.push((key, format!("{}  marked {at}: {}", b.digest, b.reason)));
    }
    rows.push((
        "last check",
        s.last_check
            .as_deref()
            .map_or_else(|| "never".into(), |t| when(t, now)),
    ));
    rows.push((
        "next check",
        s.next_check
            .as_deref()
            .map_or_else(|| "none scheduled".into(), |t| when(t, now)),
    ));
    rows.push((
        "last error",
        s.last_error.clone().unwrap_or_else(|| "none".into()),
    ));
    rows.push((
        "update",
        s.pending
            .as_ref()
            .map_or_else(|| "none in progress".into(), |p| pending(p, now)),
    ));
    if let Some(h) = &s.config_held {
        rows.push(("config held", config_held(h, now)));
    }
    if let Some(u) = &s.state_unsaved {
        rows.push(("disk", format!("{u} (the agent goes on from memory)")));
    }
    if let Some(f) = &s.fleet {
        rows.push(("fleet", fleet(f)));
    }
    if let Some(h) = &s.hub {
        rows.push(("hub", hub(h)));
    }
    key_values(&rows)
}

/// `group gpu-workers: slot 0 for sha256:…; rollout of sha256:… rolling; waiting: …`.
fn fleet(f: &crate::fleet::FleetView) -> String {
    let mut out = format!("group {}", f.group);
    if !f.etcd_reachable {
        out.push_str(" (etcd not reachable: no update starts)");
    }
    match (f.slot, &f.slot_digest) {
        (Some(n), Some(d)) => out.push_str(&format!("; holds slot {n} for {d}")),
        (Some(n), None) => out.push_str(&format!("; holds slot {n}")),
        _ => {}
    }
    if let (Some(d), Some(st)) = (&f.rollout_digest, &f.rollout_state) {
        out.push_str(&format!("; rollout of {d} {}", st.as_str()));
    }
    if let Some(w) = &f.waiting {
        out.push_str(&format!("; waiting: {w}"));
    }
    crate::text::sanitize(&out, crate::text::MAX_TEXT * 2)
}

/// `https://hub (desired digests, events connected): sha256:… wanted; last error: …`.
fn hub(h: &crate::hub::HubStatus) -> String {
    let mut line = format!(
        "{} ({}events {})",
        h.url,
        if h.desired_from_hub {
            "decides the digest; "
        } else {
            ""
        },
        h.events
    );
    if let Some(d) = &h.desired {
        line.push_str(&format!("; wants {d}"));
    }
    match (&h.last_error, &h.events_error) {
        (Some(e), _) => line.push_str(&format!("; last error: {e}")),
        (None, Some(e)) => line.push_str(&format!("; event stream: {e}")),
        (None, None) => {}
    }
    line
}

/// `worker.env.MODEL failed 2026-… (3m ago): … (updates wait until the config changes)`.
fn config_held(h: &crate::update::ConfigHeld, now: OffsetDateTime) -> String {
    let keys = if h.changed.is_empty() {
        "the worker settings".to_string()
    } else {
        h.changed.join(", ")
    };
    crate::text::sanitize(
        &format!(
            "{keys} failed {}: {} (updates wait until the config changes; agentctl check tries them again)",
            moment(h.at, now),
            h.error
        ),
        crate::text::MAX_TEXT * 2,
    )
}

/// `yes since … (4m ago): reason (updates are held until agentctl undrain)`.
fn drained(s: &Status, now: OffsetDateTime) -> String {
    if !s.drained {
        return "no".into();
    }
    let mut line = "yes".to_string();
    if let Some(at) = &s.drained_at {
        line.push_str(&format!(" since {}", when(at, now)));
    }
    if let Some(reason) = &s.drain_reason {
        line.push_str(&format!(": {reason}"));
    }
    line.push_str(" (updates are held until agentctl undrain)");
    line
}

/// `stable (sha256:…; updates are held until agentctl unpin)`: the digest a
/// tag resolved to when it was pinned.
fn pinned(s: &Status) -> String {
    let Some(p) = &s.pinned else {
        return "no".into();
    };
    match s.pinned_digest.as_deref().filter(|d| d != p) {
        Some(d) => format!("{p} ({d}; updates are held until agentctl unpin)"),
        None => format!("{p} (updates are held until agentctl unpin)"),
    }
}

/// The update in progress: `from → to, step draining, trigger cli, started … (12s ago)`.
fn pending(p: &serde_json::Value, now: OffsetDateTime) -> String {
    let text = |k: &str| p.get(k).and_then(|v| v.as_str());
    let mut s = format!(
        "{} → {}",
        short_digest(text("from")),
        short_digest(text("to"))
    );
    if let Some(step) = text("step") {
        s.push_str(&format!(", step {step}"));
    }
    if let Some(trigger) = text("trigger") {
        s.push_str(&format!(", trigger {trigger}"));
    }
    let changed: Vec<&str> = p
        .get("changed")
        .and_then(|c| c.as_array())
        .map(|c| c.iter().filter_map(|k| k.as_str()).collect())
        .unwrap_or_default();
    if !changed.is_empty() {
        s.push_str(&format!(" ({})", changed.join(", ")));
    }
    if let Some(at) = text("started_at") {
        s.push_str(&format!(", started {}", when(at, now)));
    }
    if let Some(e) = text("error") {
        s.push_str(&format!("\nrolling back because: {e}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::journal::BadDigest;
    use time::macros::datetime;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn a_busy_status_reads_at_a_glance() {
        let now = datetime!(2026-11-22 07:15:23 UTC);
        let s = Status {
            agent_id: "gpu-host-17".into(),
            phase: "draining".into(),
            current_digest: Some(digest('a')),
            last_good_digest: Some(digest('a')),
            drained: false,
            pinned: None,
            bad_digests: vec![BadDigest {
                digest: digest('b'),
                reason: "not healthy within 15s".into(),
                at: datetime!(2026-11-22 07:11:23 UTC),
            }],
            last_check: Some("2026-11-22T07:15:11Z".into()),
            next_check: Some("2026-11-22T07:19:23Z".into()),
            last_error: None,
            image: "ghcr.io/acme/worker".into(),
            policy: "tag stable".into(),
            pending: Some(serde_json::json!({
                "from": digest('a'), "to": digest('c'), "step": "draining",
                "trigger": "cli", "started_at": "2026-11-22T07:15:13Z"
            })),
            drain_reason: None,
            drained_at: None,
            pinned_digest: None,
            state_unsaved: None,
            hub: None,
            fleet: None,
            config_held: None,
        };
        let text = render(&s, now);
        let expected = format!(
            "agent:        gpu-host-17
phase:        draining
image:        ghcr.io/acme/worker (tag stable)
current:      {a}
last good:    {a}
drained:      no
pinned:       no
bad digests:  {b}  marked 2026-11-22T07:11:23Z (4m ago): not healthy within 15s
last check:   2026-11-22T07:15:11Z (12s ago)
next check:   2026-11-22T07:19:23Z (in 4m)
last error:   none
update:       aaaaaaaaaaaa → cccccccccccc, step draining, trigger cli, started 2026-11-22T07:15:13Z (10s ago)
",
            a = digest('a'),
            b = digest('b')
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn a_fresh_agent_says_none_and_never() {
        let s = Status {
            agent_id: "h".into(),
            phase: "idle".into(),
            current_digest: None,
            last_good_digest: None,
            drained: true,
            pinned: Some("sha256:x".into()),
            bad_digests: vec![],
            last_check: None,
            next_check: None,
            last_error: Some("registry down\nsecond line".into()),
            image: "r".into(),
            policy: "version ^2".into(),
            pending: None,
            drain_reason: None,
            drained_at: None,
            pinned_digest: None,
            state_unsaved: None,
            hub: None,
            fleet: None,
            config_held: None,
        };
        let text = render(&s, datetime!(2026-11-22 07:15:23 UTC));
        for line in [
            "current:      none",
            "drained:      yes (updates are held until agentctl undrain)",
            "pinned:       sha256:x (updates are held until agentctl unpin)",
            "bad digests:  none",
            "last check:   never",
            "last error:   registry down\n              second line",
            "update:       none in progress",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
    }

    #[test]
    fn a_maintenance_drain_and_a_tag_pin_say_why_and_what() {
        let s = Status {
            agent_id: "h".into(),
            phase: "drained".into(),
            current_digest: Some(digest('a')),
            last_good_digest: Some(digest('a')),
            drained: true,
            pinned: Some("v2".into()),
            bad_digests: vec![],
            last_check: None,
            next_check: None,
            last_error: None,
            image: "r".into(),
            policy: "tag stable".into(),
            pending: None,
            drain_reason: Some("driver upgrade".into()),
            drained_at: Some("2026-11-22T07:11:23Z".into()),
            pinned_digest: Some(digest('a')),
            state_unsaved: None,
            hub: None,
            fleet: None,
            config_held: None,
        };
        let text = render(&s, datetime!(2026-11-22 07:15:23 UTC));
        let drained = "drained:      yes since 2026-11-22T07:11:23Z (4m ago): driver upgrade \
                       (updates are held until agentctl undrain)\n";
        assert!(text.contains(drained), "{text}");
        let pinned = format!(
            "pinned:       v2 ({}; updates are held until agentctl unpin)\n",
            digest('a')
        );
        assert!(text.contains(&pinned), "{text}");
        // A digest pin does not repeat itself.
        let s = Status {
            pinned: Some(digest('a')),
            drained: false,
            ..s
        };
        let text = render(&s, datetime!(2026-11-22 07:15:23 UTC));
        let pinned = format!(
            "pinned:       {} (updates are held until agentctl unpin)\n",
            digest('a')
        );
        assert!(text.contains(&pinned), "{text}");
        assert!(text.contains("drained:      no\n"), "{text}");
    }
}
