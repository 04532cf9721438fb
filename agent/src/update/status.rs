//! What the update shows of itself: the [`View`] it publishes on a `watch`
//! channel after every change, and the SPEC's status object ([`Status`],
//! `agentctl status --json` and the hub's reports) made from it.

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::journal::{BadDigest, ConfigHeld, State};
use super::machine::Phase;
use crate::config::Settings;

/// What the updater shows of itself to watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub phase: Phase,
    pub state: State,
    pub last_error: Option<String>,
    pub last_check: Option<OffsetDateTime>,
    pub next_check: Option<OffsetDateTime>,
    /// What the disk did not take (the state, history entries): the agent
    /// goes on from memory and writes them when the disk allows.
    pub unsaved: Option<String>,
}

impl Default for View {
    fn default() -> Self {
        View {
            phase: Phase::Idle,
            state: State::default(),
            last_error: None,
            last_check: None,
            next_check: None,
            unsaved: None,
        }
    }
}

/// `agentctl status --json`: the SPEC's status object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub agent_id: String,
    /// `idle`, `checking`, `pulling`, `draining`, `swapping`, `verifying`,
    /// `rolling_back`, `drained`, `failed`.
    pub phase: String,
    pub current_digest: Option<String>,
    pub last_good_digest: Option<String>,
    pub drained: bool,
    pub pinned: Option<String>,
    pub bad_digests: Vec<BadDigest>,
    /// RFC 3339.
    pub last_check: Option<String>,
    /// RFC 3339.
    pub next_check: Option<String>,
    pub last_error: Option<String>,
    /// The image repository and what of it is followed (`tag stable`, `version ^2.3`).
    pub image: String,
    pub policy: String,
    /// The update in progress, if any: `{from, to, step, trigger, started_at}`.
    pub pending: Option<serde_json::Value>,
    /// The operator's reason for the maintenance drain (with `drained`).
    #[serde(default)]
    pub drain_reason: Option<String>,
    /// RFC 3339: when the maintenance drain was asked for.
    #[serde(default)]
    pub drained_at: Option<String>,
    /// The digest `pinned` resolved to when it was pinned (the same as
    /// `pinned` for a digest pin).
    #[serde(default)]
    pub pinned_digest: Option<String>,
    /// What the disk did not take (`null` when everything is written): the
    /// agent goes on from memory and writes it when the disk allows.
    #[serde(default)]
    pub state_unsaved: Option<String>,
    /// What the agent knows of the hub (`null` without `[hub]`).
    #[serde(default)]
    pub hub: Option<HubStatus>,
    /// The host's fleet group (`null` without `[fleet]`): group, slot,
    /// rollout, why it waits (docs/fleet.md).
    #[serde(default)]
    pub fleet: Option<crate::fleet::FleetView>,
    /// The config's worker settings failed verification and were rolled
    /// back (`null` when not): `{spec, changed, error, at}`; updates wait
    /// until the config changes.
    #[serde(default)]
    pub config_held: Option<ConfigHeld>,
}

/// What the agent knows of the hub now (`agentctl status --json` → `hub`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubStatus {
    pub url: String,
    /// The hub decides the digest (`hub.desired_from_hub`).
    pub desired_from_hub: bool,
    /// The event stream: `connected`, `connecting` or `disconnected`.
    pub events: String,
    /// Why the event stream is down (while it is).
    #[serde(default)]
    pub events_error: Option<String>,
    /// RFC 3339: the last call the hub answered.
    #[serde(default)]
    pub last_contact: Option<String>,
    /// The last call that failed and why; cleared by the next answered call.
    #[serde(default)]
    pub last_error: Option<String>,
    /// The digest the hub last asked for (`null`: no opinion, or not asked).
    #[serde(default)]
    pub desired: Option<String>,
}

fn rfc3339(t: Option<time::OffsetDateTime>) -> Option<String> {
    t.and_then(|t| t.format(&Rfc3339).ok())
}

/// The status object (`agentctl status --json`, and the hub's reports).
pub fn status_of(settings: &Settings, v: &View, hub: Option<HubStatus>) -> Status {
    Status {
        agent_id: settings.agent.id.clone(),
        phase: v.phase.as_str().to_string(),
        current_digest: v.state.current_digest.clone(),
        last_good_digest: v.state.last_good_digest.clone(),
        drained: v.state.drained,
        pinned: v.state.pinned.clone(),
        bad_digests: v.state.bad_digests.clone(),
        last_check: rfc3339(v.last_check),
        next_check: rfc3339(v.next_check),
        last_error: v.last_error.clone(),
        image: settings.image.name.to_string(),
        policy: settings.image.policy.to_string(),
        pending: v
            .state
            .pending
            .as_ref()
            .and_then(|p| serde_json::to_value(p).ok()),
        drain_reason: v.state.drain_reason.clone(),
        drained_at: rfc3339(v.state.drained_at),
        pinned_digest: v.state.pinned_digest.clone(),
        state_unsaved: v.unsaved.clone(),
        hub,
        fleet: None,
        config_held: v.state.config_held.clone(),
    }
}
