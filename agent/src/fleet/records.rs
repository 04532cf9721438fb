//! What lies under each key of a group (JSON), see [`super::keys`].

use serde::{Deserialize, Serialize};

use super::FleetError;

pub use super::Outcome as OutcomeKind;

/// The state of the group's latest rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Rolling,
    Paused,
    Halted,
    Complete,
    Aborted,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Rolling => "rolling",
            RolloutState::Paused => "paused",
            RolloutState::Halted => "halted",
            RolloutState::Complete => "complete",
            RolloutState::Aborted => "aborted",
        }
    }
}

/// `rollout`: the group's latest rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRecord {
    /// The digest the group moves to.
    pub digest: String,
    /// What the operator named (`repo:tag` or the digest).
    pub reference: String,
    /// The digest most hosts ran before (an abort goes back to it).
    pub previous: Option<String>,
    pub state: RolloutState,
    /// Unix seconds.
    pub started_at: i64,
    pub updated_at: i64,
    /// Why the state is what it is (the halt's reason, who paused).
    #[serde(default)]
    pub note: Option<String>,
}

impl RolloutRecord {
    /// The digest the group wants each host on: the previous one after an abort.
    pub fn desired(&self) -> Option<&str> {
        match self.state {
            RolloutState::Aborted => self.previous.as_deref(),
            _ => Some(&self.digest),
        }
    }
}

/// `hosts/<host>`: one live host (under its lease).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub id: String,
    pub digest: Option<String>,
    pub phase: String,
    pub gpu: String,
    pub last_event: Option<String>,
    /// Unix seconds of the last change.
    pub updated_at: i64,
}

/// Whether a slot queue entry waits for a slot or holds one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    Waiting,
    Holding,
}

/// `slots/<host>`: a host's place in the slot queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    pub host: String,
    pub digest: String,
    pub state: SlotState,
    /// Unix seconds when it queued, and when it got the slot.
    pub since: i64,
    #[serde(default)]
    pub holding_since: Option<i64>,
}

/// `outcomes/<digest>/<host>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    pub outcome: OutcomeKind,
    pub at: i64,
    #[serde(default)]
    pub detail: String,
}

/// `halted/<digest>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaltRecord {
    pub at: i64,
    pub failed: u32,
    pub tried: u32,
    pub reason: String,
}

/// Decodes a JSON record, naming the key when it is not one.
pub fn decode<T: serde::de::DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, FleetError> {
    serde_json::from_slice(value).map_err(|e| FleetError::Record {
        key: String::from_utf8_lossy(key).into_owned(),
        message: format!("not a record this version reads ({e})"),
    })
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialize")
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Counts of the outcomes of one digest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OutcomeCounts {
    pub verified: u32,
    pub rolled_back: u32,
    pub host_fault: u32,
}

impl OutcomeCounts {
    pub fn add(&mut self, o: OutcomeKind) {
        match o {
            OutcomeKind::Verified => self.verified += 1,
            OutcomeKind::RolledBack => self.rolled_back += 1,
            OutcomeKind::HostFault => self.host_fault += 1,
        }
    }
    /// Hosts whose try counts for the digest (host faults do not).
    pub fn tried(&self) -> u32 {
        self.verified + self.rolled_back
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aborted_rollout_wants_the_previous_digest() {
        let mut r = RolloutRecord {
            digest: "sha256:b".into(),
            reference: "r:t".into(),
            previous: Some("sha256:a".into()),
            state: RolloutState::Rolling,
            started_at: 1,
            updated_at: 1,
            note: None,
        };
        assert_eq!(r.desired(), Some("sha256:b"));
        r.state = RolloutState::Halted;
        assert_eq!(r.desired(), Some("sha256:b"));
        r.state = RolloutState::Aborted;
        assert_eq!(r.desired(), Some("sha256:a"));
    }

    #[test]
    fn host_faults_do_not_count_as_tries() {
        let mut c = OutcomeCounts::default();
        c.add(OutcomeKind::Verified);
        c.add(OutcomeKind::HostFault);
        c.add(OutcomeKind::RolledBack);
        assert_eq!(c.tried(), 2);
        assert!(decode::<HostRecord>(b"k", b"garbage").is_err());
    }
}
