//! The protocol's JSON bodies (hub protocol v1), as the hub sends and takes them.
//!
//! Every answer the agent acts on is checked here, so that a garbage answer is
//! an error naming the field, never a digest the agent would try to deploy.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `GET /v1/agents/{id}/desired`, answered `200`: the digest this host should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// The image repository (registry host/path), e.g. `ghcr.io/acme/worker`.
    pub repository: String,
    /// A manifest digest, `sha256:` and 64 lowercase hex digits.
    pub digest: String,
}

impl Desired {
    /// Checks the fields; the message names the one that is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.repository.trim().is_empty() {
            return Err("'repository' is empty".into());
        }
        if crate::text::has_control(&self.repository) || self.repository.len() > 512 {
            return Err(format!(
                "'repository' is not an image name: {}",
                shorten(&self.repository)
            ));
        }
        if !is_sha256_digest(&self.digest) {
            return Err(format!(
                "'digest' is not a sha256 digest: {:?}",
                shorten(&self.digest)
            ));
        }
        Ok(())
    }
}

/// The data of a `nudge` event: check now. A nudge naming a digest means that digest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nudge {
    #[serde(default)]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl Nudge {
    /// Parses and checks an event's data; the reason comes back sanitized
    /// (control characters escaped, at most 200 characters).
    pub fn parse(data: &str) -> Result<Nudge, String> {
        let mut n: Nudge = serde_json::from_str(data)
            .map_err(|e| format!("nudge data is not the expected JSON ({e})"))?;
        if let Some(d) = &n.digest {
            if !is_sha256_digest(d) {
                return Err(format!(
                    "nudge 'digest' is not a sha256 digest: {:?}",
                    shorten(d)
                ));
            }
        }
        n.reason = shorten(&n.reason);
        Ok(n)
    }
}

/// `POST /v1/agents/{id}/drain`: the hub stops (`true`) or resumes (`false`)
/// sending jobs to this host's worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainNotice {
    pub draining: bool,
    #[serde(default)]
    pub reason: String,
}

/// `GET /v1/workers/{id}`: what the hub sees of this host's worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerView {
    pub registered: bool,
    #[serde(default)]
    pub digest: Option<String>,
    /// The jobs the hub has given the worker that are not finished. `None`
    /// when the hub did not say: the agent then cannot use it as a drain
    /// signal (it never reads a missing count as 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<u64>,
}

/// `POST /v1/agents/{id}/report`: the agent's status object (the fields of
/// `agentctl status --json`) plus, when something happened, `event`: the
/// history entry it wrote.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    #[serde(flatten)]
    pub status: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Value>,
}

/// `sha256:` followed by 64 lowercase hex digits.
pub fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Quoted answers are cut to 200 characters in errors.
pub(crate) fn shorten(s: &str) -> String {
    shorten_to(s, 200)
}

/// `s` with its control characters escaped, cut to `max` characters (see
/// [`crate::text::sanitize`]): every quoted answer of the hub goes through it.
pub(crate) fn shorten_to(s: &str, max: usize) -> String {
    crate::text::sanitize(s, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn hub_text_arrives_escaped_and_capped() {
        let n = Nudge::parse(&format!(
            r#"{{"reason":"\u001b[2J\u001b]0;pwned\u0007{}"}}"#,
            "x".repeat(500)
        ))
        .unwrap();
        assert!(
            n.reason.starts_with("\\u{1b}[2J\\u{1b}]0;pwned\\u{7}"),
            "{}",
            n.reason
        );
        assert!(!crate::text::has_control(&n.reason));
        assert!(n.reason.ends_with("more characters)"), "{}", n.reason);
        let bad = Desired {
            repository: "ghcr.io/acme/\u{1b}[31mworker".into(),
            digest: D.into(),
        };
        let err = bad.validate().unwrap_err();
        assert!(
            err.contains("\\u{1b}[31m") && !crate::text::has_control(&err),
            "{err}"
        );
    }

    #[test]
    fn desired_checks_its_digest() {
        let ok = Desired {
            repository: "ghcr.io/acme/worker".into(),
            digest: D.into(),
        };
        assert!(ok.validate().is_ok());
        let bad = Desired {
            digest: "sha256:XYZ".into(),
            ..ok.clone()
        };
        assert!(bad.validate().unwrap_err().contains("'digest'"));
        let empty = Desired {
            repository: " ".into(),
            ..ok
        };
        assert!(empty.validate().unwrap_err().contains("'repository'"));
    }

    #[test]
    fn nudge_parses_with_and_without_digest() {
        assert_eq!(
            Nudge::parse(r#"{"reason":"merge"}"#).unwrap(),
            Nudge {
                reason: "merge".into(),
                digest: None
            }
        );
        let n = Nudge::parse(&format!(r#"{{"reason":"r","digest":"{D}"}}"#)).unwrap();
        assert_eq!(n.digest.as_deref(), Some(D));
        assert!(Nudge::parse(r#"{"digest":"latest"}"#)
            .unwrap_err()
            .contains("not a sha256"));
        assert!(Nudge::parse("not json").is_err());
        // An empty object is a plain "check now".
        assert_eq!(Nudge::parse("{}").unwrap(), Nudge::default());
    }

    #[test]
    fn report_flattens_the_status_and_adds_the_event() {
        let mut status = Map::new();
        status.insert("agent_id".into(), "h1".into());
        status.insert("phase".into(), "idle".into());
        let r = Report {
            status,
            event: Some(serde_json::json!({"kind": "update", "outcome": "success"})),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["agent_id"], "h1");
        assert_eq!(v["event"]["kind"], "update");
        let no_event = Report { event: None, ..r };
        assert!(serde_json::to_value(&no_event)
            .unwrap()
            .get("event")
            .is_none());
    }

    #[test]
    fn worker_view_defaults() {
        let w: WorkerView = serde_json::from_str(r#"{"registered":false}"#).unwrap();
        assert_eq!(
            w,
            WorkerView {
                registered: false,
                digest: None,
                in_flight: None
            }
        );
        assert!(serde_json::from_str::<WorkerView>(r#"{"registered":"yes"}"#).is_err());
    }

    #[test]
    fn digest_shape() {
        assert!(is_sha256_digest(D));
        assert!(!is_sha256_digest(&D.to_uppercase()));
        assert!(!is_sha256_digest(&D[..70]));
        assert!(!is_sha256_digest("sha512:00"));
    }
}
