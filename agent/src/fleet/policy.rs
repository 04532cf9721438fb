//! The group's rollout policy and the pure rules that read it: how many slots
//! a group of `n` live hosts has, whether a digest must halt, whether the
//! canaries have baked. No I/O here; the gate and `gpu-fleet` call these.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Below this many hosts that tried a digest, `halt_ratio` is not judged
/// (one failure out of one try is 100 %); `halt_after` alone decides.
pub const HALT_RATIO_MIN_TRIED: u32 = 10;

/// `max_unavailable`: a count of hosts, or a percentage of the group's live hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxUnavailable {
    Count(u32),
    Percent(u32),
}

impl MaxUnavailable {
    /// The number of slots for a group of `live` hosts: at least 1.
    pub fn slots(self, live: u32) -> u32 {
        match self {
            MaxUnavailable::Count(n) => n.max(1),
            MaxUnavailable::Percent(p) => ((u64::from(live) * u64::from(p)) / 100).max(1) as u32,
        }
    }
}

impl fmt::Display for MaxUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxUnavailable::Count(n) => write!(f, "{n}"),
            MaxUnavailable::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl FromStr for MaxUnavailable {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            match p.trim().parse::<u32>() {
                Ok(p) if (1..=100).contains(&p) => Ok(MaxUnavailable::Percent(p)),
                _ => Err(format!(
                    "max_unavailable {s:?}: write a percentage from 1% to 100%"
                )),
            }
        } else {
            match s.parse::<u32>() {
                Ok(n) if n >= 1 => Ok(MaxUnavailable::Count(n)),
                _ => Err(format!(
                    "max_unavailable {s:?}: write a count of at least 1 or a percentage like 5%"
                )),
            }
        }
    }
}

impl Serialize for MaxUnavailable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for MaxUnavailable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses `"5%"` or `"5"` (a percentage 0–100) for `halt_ratio`.
pub fn parse_percent(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let t = t.strip_suffix('%').unwrap_or(t).trim();
    match t.parse::<u32>() {
        Ok(p) if p <= 100 => Ok(p),
        _ => Err(format!("{s:?}: write a percentage from 0% to 100%")),
    }
}

/// The group's policy, stored as JSON under `policy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Hosts draining, swapping or verifying at once.
    pub max_unavailable: MaxUnavailable,
    /// Hosts that try a new digest alone before the rest.
    pub canary: u32,
    /// How long the canaries stay verified and healthy before the rest go.
    #[serde(with = "secs")]
    pub bake: Duration,
    /// Rolled-back hosts that halt a digest (0: never by count).
    pub halt_after: u32,
    /// Percentage of the hosts that tried a digest whose rollback halts it (0: off).
    pub halt_ratio: u32,
}

impl Default for Policy {
    /// The SPEC's defaults: 1, 1, 10m, 1, 0 %.
    fn default() -> Self {
        Policy {
            max_unavailable: MaxUnavailable::Count(1),
            canary: 1,
            bake: Duration::from_secs(600),
            halt_after: 1,
            halt_ratio: 0,
        }
    }
}

impl Policy {
    /// Whether `failed` rollbacks out of `tried` hosts (host faults excluded)
    /// halt the digest.
    pub fn should_halt(&self, failed: u32, tried: u32) -> bool {
        if failed == 0 {
            return false;
        }
        if self.halt_after > 0 && failed >= self.halt_after {
            return true;
        }
        self.halt_ratio > 0
            && tried >= HALT_RATIO_MIN_TRIED
            && u64::from(failed) * 100 >= u64::from(self.halt_ratio) * u64::from(tried)
    }
}

/// What a host that is not a canary waits for, from the digest's outcomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CanaryGate {
    /// The canaries have been verified and baked: go on to the slots.
    Open,
    /// Fewer than `canary` hosts verified so far.
    Verifying { verified: u32, canary: u32 },
    /// Verified; the bake ends at this unix time (seconds).
    Baking { until: i64 },
}

/// `verified_at`: unix times at which hosts verified the digest.
pub fn canary_gate(policy: &Policy, verified_at: &[i64], now: i64) -> CanaryGate {
    if policy.canary == 0 {
        return CanaryGate::Open;
    }
    if (verified_at.len() as u32) < policy.canary {
        return CanaryGate::Verifying {
            verified: verified_at.len() as u32,
            canary: policy.canary,
        };
    }
    let mut v = verified_at.to_vec();
    v.sort_unstable();
    // The bake starts when the `canary`-th host verified.
    let until = v[policy.canary as usize - 1] + policy.bake.as_secs() as i64;
    if now >= until {
        CanaryGate::Open
    } else {
        CanaryGate::Baking { until }
    }
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_from_count_or_percent() {
        assert_eq!("2".parse::<MaxUnavailable>().unwrap().slots(1000), 2);
        assert_eq!("5%".parse::<MaxUnavailable>().unwrap().slots(1000), 50);
        assert_eq!("5%".parse::<MaxUnavailable>().unwrap().slots(10), 1);
        assert_eq!("10%".parse::<MaxUnavailable>().unwrap().slots(0), 1);
        assert!("0".parse::<MaxUnavailable>().is_err());
        assert!("0%".parse::<MaxUnavailable>().is_err());
        assert!("101%".parse::<MaxUnavailable>().is_err());
        assert!("x".parse::<MaxUnavailable>().is_err());
    }

    #[test]
    fn halts_at_halt_after_or_ratio() {
        let p = Policy::default();
        assert!(!p.should_halt(0, 5));
        assert!(p.should_halt(1, 1));
        let p = Policy {
            halt_after: 3,
            halt_ratio: 20,
            ..Policy::default()
        };
        assert!(!p.should_halt(1, 1), "ratio waits for a sample");
        assert!(!p.should_halt(1, 9));
        assert!(!p.should_halt(1, 10));
        assert!(p.should_halt(2, 10));
        assert!(p.should_halt(3, 100));
        let off = Policy {
            halt_after: 0,
            halt_ratio: 0,
            ..Policy::default()
        };
        assert!(!off.should_halt(50, 50));
    }

    #[test]
    fn canaries_then_bake() {
        let p = Policy {
            canary: 2,
            bake: Duration::from_secs(60),
            ..Policy::default()
        };
        assert_eq!(
            canary_gate(&p, &[100], 1000),
            CanaryGate::Verifying {
                verified: 1,
                canary: 2
            }
        );
        assert_eq!(
            canary_gate(&p, &[100, 130], 150),
            CanaryGate::Baking { until: 190 }
        );
        assert_eq!(canary_gate(&p, &[130, 100], 190), CanaryGate::Open);
        let none = Policy {
            canary: 0,
            ..Policy::default()
        };
        assert_eq!(canary_gate(&none, &[], 0), CanaryGate::Open);
    }

    #[test]
    fn policy_json_round_trip() {
        let p = Policy {
            max_unavailable: MaxUnavailable::Percent(5),
            ..Policy::default()
        };
        let j = serde_json::to_string(&p).unwrap();
        assert!(j.contains("\"5%\"") && j.contains("\"10m\""), "{j}");
        assert_eq!(serde_json::from_str::<Policy>(&j).unwrap(), p);
        assert_eq!(parse_percent("25%").unwrap(), 25);
        assert!(parse_percent("120%").is_err());
    }
}
