//! The key layout: everything of a group lives under one prefix,
//! `/gpu-agent/fleet/<group>/` (the table is in `docs/fleet.md`).
//!
//! | key | value | lease |
//! | --- | --- | --- |
//! | `policy` | [`super::Policy`] (JSON) | none |
//! | `rollout` | [`super::RolloutRecord`] | none |
//! | `hosts/<host>` | [`super::HostRecord`]: liveness and what the host runs | the host's |
//! | `slots/<host>` | [`super::records::SlotRecord`]: the slot queue; the first `cap` by create revision hold a slot | the host's while it waits, none once it holds |
//! | `canary/<digest>/<n>` | the host that took canary seat `n` | none |
//! | `outcomes/<digest>/<host>` | [`super::records::OutcomeRecord`] | none |
//! | `halted/<digest>` | [`super::records::HaltRecord`] | none |

/// The root of every group's keys.
pub const ROOT: &str = "/gpu-agent/fleet/";

/// The keys of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(group: &str) -> Self {
        Keys {
            prefix: format!("{ROOT}{group}/"),
        }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn policy(&self) -> String {
        format!("{}policy", self.prefix)
    }
    pub fn rollout(&self) -> String {
        format!("{}rollout", self.prefix)
    }
    pub fn hosts(&self) -> String {
        format!("{}hosts/", self.prefix)
    }
    pub fn host(&self, host: &str) -> String {
        format!("{}hosts/{host}", self.prefix)
    }
    pub fn slots(&self) -> String {
        format!("{}slots/", self.prefix)
    }
    pub fn slot(&self, host: &str) -> String {
        format!("{}slots/{host}", self.prefix)
    }
    pub fn canaries(&self, digest: &str) -> String {
        format!("{}canary/{digest}/", self.prefix)
    }
    pub fn canary(&self, digest: &str, seat: u32) -> String {
        format!("{}canary/{digest}/{seat:04}", self.prefix)
    }
    pub fn outcomes(&self, digest: &str) -> String {
        format!("{}outcomes/{digest}/", self.prefix)
    }
    pub fn outcome(&self, digest: &str, host: &str) -> String {
        format!("{}outcomes/{digest}/{host}", self.prefix)
    }
    pub fn halted_all(&self) -> String {
        format!("{}halted/", self.prefix)
    }
    pub fn halted(&self, digest: &str) -> String {
        format!("{}halted/{digest}", self.prefix)
    }
    /// The last path segment of a key (a host id under `hosts/` or `slots/`).
    pub fn leaf(key: &str) -> &str {
        key.rsplit('/').next().unwrap_or(key)
    }
}

/// Whether `g` can name a group (it becomes a key segment).
pub fn valid_group(g: &str) -> bool {
    !g.is_empty()
        && g.len() <= 128
        && g.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The default group for an image repository: its path with `/` and `:` as `_`.
pub fn group_for_repository(repo: &str) -> String {
    repo.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_under_one_prefix_per_group() {
        let k = Keys::new("h100");
        assert_eq!(k.policy(), "/gpu-agent/fleet/h100/policy");
        assert_eq!(k.slot("host-1"), "/gpu-agent/fleet/h100/slots/host-1");
        assert_eq!(
            k.canary("sha256:ab", 2),
            "/gpu-agent/fleet/h100/canary/sha256:ab/0002"
        );
        assert_eq!(Keys::leaf(&k.host("a.b")), "a.b");
        assert!(Keys::new("h1").prefix() != Keys::new("h10").prefix());
    }

    #[test]
    fn group_names() {
        assert!(valid_group("h100-workers"));
        assert!(!valid_group("a/b"));
        assert!(!valid_group(""));
        assert_eq!(
            group_for_repository("registry.local:5000/ml/worker"),
            "registry.local_5000_ml_worker"
        );
    }
}
