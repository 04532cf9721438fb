//! A bound on the swaps the hub can trigger: a hub that alternates two digests
//! (a bug, or an attacker who controls it) must not cost the host a drain and a
//! swap a minute.
//!
//! [`SwapLimiter`] allows at most `burst` hub-triggered swaps in any `window`;
//! past that, the next one waits until the oldest leaves the window. Swaps the
//! operator asks for, polls of the registry and rollbacks are not counted.
//! The record is small and serializable, so the caller can keep it in its
//! state across restarts.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Hub-triggered swaps allowed per window by default.
pub const DEFAULT_BURST: usize = 3;
/// The default window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapLimiter {
    burst: usize,
    window: Duration,
    /// When the swaps counted started, oldest first (at most `burst`).
    #[serde(with = "times")]
    recent: VecDeque<OffsetDateTime>,
}

impl Default for SwapLimiter {
    fn default() -> Self {
        SwapLimiter::new(DEFAULT_BURST, DEFAULT_WINDOW)
    }
}

impl SwapLimiter {
    /// At most `burst` (at least 1) swaps in any `window`.
    pub fn new(burst: usize, window: Duration) -> SwapLimiter {
        SwapLimiter {
            burst: burst.max(1),
            window,
            recent: VecDeque::new(),
        }
    }

    /// Allows `burst` (at least 1) swaps per window from now on (a reloaded
    /// `hub.max_swaps_per_hour`); the swaps counted so far stay.
    pub fn set_burst(&mut self, burst: usize) {
        self.burst = burst.max(1);
        while self.recent.len() > self.burst {
            self.recent.pop_front();
        }
    }

    /// `Ok` when a hub-triggered swap may start at `now`; else `Err(when)`:
    /// the earliest moment it may (for the status: "deferred until ...").
    pub fn check(&self, now: OffsetDateTime) -> Result<(), OffsetDateTime> {
        let in_window: Vec<&OffsetDateTime> = self
            .recent
            .iter()
            .filter(|t| now - **t < self.window)
            .collect();
        if in_window.len() < self.burst {
            return Ok(());
        }
        // The oldest of the last `burst` swaps must leave the window first.
        let oldest = *in_window[in_window.len() - self.burst];
        Err(oldest + self.window)
    }

    /// Counts a hub-triggered swap started at `now` (call it when the swap
    /// starts, whatever its outcome).
    pub fn record(&mut self, now: OffsetDateTime) {
        self.recent.push_back(now);
        while self.recent.len() > self.burst {
            self.recent.pop_front();
        }
    }
}

mod times {
    use std::collections::VecDeque;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(v: &VecDeque<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
        let texts: Vec<String> = v.iter().filter_map(|t| t.format(&Rfc3339).ok()).collect();
        texts.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<VecDeque<OffsetDateTime>, D::Error> {
        let texts = Vec::<String>::deserialize(d)?;
        texts
            .iter()
            .map(|t| OffsetDateTime::parse(t, &Rfc3339).map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn a_hub_alternating_digests_gets_burst_swaps_per_window() {
        let mut l = SwapLimiter::default();
        let start = datetime!(2026-05-01 10:00 UTC);
        // A hub flipping between two digests every minute for three hours.
        let mut swaps = Vec::new();
        for minute in 0..180 {
            let now = start + time::Duration::minutes(minute);
            if l.check(now).is_ok() {
                l.record(now);
                swaps.push(minute);
            }
        }
        assert_eq!(swaps, vec![0, 1, 2, 60, 61, 62, 120, 121, 122]);
        // The refusal says when the next swap may start.
        let now = start + time::Duration::minutes(130);
        assert_eq!(l.check(now), Err(start + time::Duration::minutes(180)));
    }

    #[test]
    fn swaps_spread_out_are_never_held() {
        let mut l = SwapLimiter::new(2, Duration::from_secs(3600));
        let start = datetime!(2026-05-01 10:00 UTC);
        for i in 0..10 {
            let now = start + time::Duration::minutes(31 * i);
            assert!(l.check(now).is_ok(), "swap {i}");
            l.record(now);
        }
    }

    #[test]
    fn the_record_survives_a_restart() {
        let mut l = SwapLimiter::default();
        let t = datetime!(2026-05-01 10:00 UTC);
        for i in 0..3 {
            l.record(t + time::Duration::minutes(i));
        }
        let text = serde_json::to_string(&l).unwrap();
        let back: SwapLimiter = serde_json::from_str(&text).unwrap();
        assert_eq!(back, l);
        assert!(back.check(t + time::Duration::minutes(5)).is_err());
        assert_eq!(SwapLimiter::new(0, DEFAULT_WINDOW).burst, 1);
    }
}
