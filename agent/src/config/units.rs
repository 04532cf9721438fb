//! Human units in config values: durations (`"90s"`, `"5m"`, `"1h30m"`) and
//! byte sizes (`"16g"`, `"512m"`, `1073741824`).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A duration written as a string such as `"90s"`, `"5m"`, `"1h30m"` or `"250ms"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationStr(pub Duration);

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration: write e.g. \"90s\", \"5m\" or \"1h30m\"".into());
    }
    if t.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "duration {s:?} has no unit: write e.g. \"{t}s\" or \"{t}m\""
        ));
    }
    let d = humantime::parse_duration(t).map_err(|e| {
        format!("invalid duration {s:?} ({e}): write e.g. \"90s\", \"5m\" or \"1h30m\"")
    })?;
    if d > MAX_DURATION {
        return Err(format!("duration {s:?} is longer than a year"));
    }
    Ok(d)
}

/// No duration in the config may be longer (it would overflow the clocks it is added to).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationStr;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string such as \"90s\", \"5m\" or \"1h30m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationStr, E> {
                parse_duration(v).map(DurationStr).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// A size in bytes written as an integer or a string with a unit (`b`, `k`, `m`, `g`, `t`;
/// powers of 1024, as `docker run --shm-size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix("ib")
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| {
        format!("invalid size {s:?}: write e.g. \"16g\", \"512m\" or a number of bytes")
    })?;
    n.checked_mul(mult)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("invalid size {s:?}: must be above zero and fit in 64 bits"))
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"16g\" or a number of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .ok()
                    .filter(|&b| b > 0)
                    .map(ByteSize)
                    .ok_or_else(|| E::custom("size must be above zero"))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert!(parse_duration("90").unwrap_err().contains("no unit"));
        assert!(parse_duration("5x")
            .unwrap_err()
            .contains("invalid duration"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("600000000000y").is_err());
        assert!(parse_duration("366d")
            .unwrap_err()
            .contains("longer than a year"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16g").unwrap(), 16 << 30);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("64kb").unwrap(), 64 << 10);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("0").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999t").is_err());
    }
}
