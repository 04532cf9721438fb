//! `[[notify]]`: webhooks told about each history entry (see `crate::notify`).
//!
//! ```toml
//! [[notify]]
//! url = "https://hooks.example.com/gpu-agent"
//! format = "json"                                # or "slack"
//! events = ["rolled_back", "failed", "aborted"]  # outcomes; default: all
//! ```
//!
//! Like every array, a drop-in's `[[notify]]` list replaces the main file's.

use url::Url;

use super::fragments::NotifyFragment;
use super::{ConfigError, Origin};
use crate::update::Outcome;

/// How a notification's body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyFormat {
    /// The history entry as JSON, with the agent's id, the image and a `text` line.
    Json,
    /// Slack's incoming-webhook message: `{"text": ...}`.
    Slack,
}

/// One webhook.
#[derive(Clone, PartialEq, Eq)]
pub struct NotifySettings {
    pub url: Url,
    pub format: NotifyFormat,
    /// The outcomes sent; `None`: all.
    pub events: Option<Vec<Outcome>>,
}

impl NotifySettings {
    /// The URL without its path, query or credentials, for logs and errors:
    /// a webhook URL's path is often its secret (Slack's are).
    pub fn target(&self) -> String {
        let host = self.url.host_str().unwrap_or("?");
        match self.url.port() {
            Some(p) => format!("{}://{host}:{p}", self.url.scheme()),
            None => format!("{}://{host}", self.url.scheme()),
        }
    }

    /// Whether an entry with `outcome` is sent.
    pub fn wants(&self, outcome: Outcome) -> bool {
        self.events.as_ref().is_none_or(|e| e.contains(&outcome))
    }
}

impl std::fmt::Debug for NotifySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifySettings")
            .field("url", &format!("{}/…", self.target()))
            .field("format", &self.format)
            .field("events", &self.events)
            .finish()
    }
}

const OUTCOMES: &str = "success, rolled_back, failed, aborted";

pub(super) fn validate(
    list: Option<Vec<NotifyFragment>>,
    o: &Origin,
) -> Result<Vec<NotifySettings>, ConfigError> {
    let mut out = Vec::new();
    for (i, n) in list.unwrap_or_default().into_iter().enumerate() {
        let key = |k: &str| format!("notify[{i}].{k}");
        let invalid = |k: &str, m: String| ConfigError::Invalid {
            key: key(k),
            origin: o.of("notify"),
            message: m,
        };
        let raw = n.url.ok_or_else(|| {
            invalid(
                "url",
                "is required: the webhook's http:// or https:// URL".to_string(),
            )
        })?;
        let url = Url::parse(&raw).map_err(|e| invalid("url", format!("not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(invalid("url", "use an http:// or https:// URL".to_string()));
        }
        let format = match n.format.as_deref() {
            None | Some("json") => NotifyFormat::Json,
            Some("slack") => NotifyFormat::Slack,
            Some(f) => {
                return Err(invalid(
                    "format",
                    format!("{f:?} is not a format: use \"json\" or \"slack\""),
                ))
            }
        };
        let events = match n.events {
            None => None,
            Some(list) if list.is_empty() => {
                return Err(invalid(
                    "events",
                    format!("is empty: list outcomes ({OUTCOMES}) or leave it out for all"),
                ))
            }
            Some(list) => {
                let mut events = Vec::new();
                for e in list {
                    let outcome: Outcome = serde_json::from_value(serde_json::Value::String(
                        e.clone(),
                    ))
                    .map_err(|_| {
                        invalid("events", format!("{e:?} is not an outcome: use {OUTCOMES}"))
                    })?;
                    if !events.contains(&outcome) {
                        events.push(outcome);
                    }
                }
                Some(events)
            }
        };
        out.push(NotifySettings {
            url,
            format,
            events,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::load_from_strs;

    const MINIMAL: &str = "[agent]\nid = \"host-1\"\n[image]\nrepository = \"127.0.0.1:5055/acme/worker\"\ntag = \"stable\"\n";

    fn load(extra: &str) -> Result<Vec<NotifySettings>, String> {
        load_from_strs(&[(PathBuf::from("/etc/a.toml"), format!("{MINIMAL}{extra}"))])
            .map(|s| s.notify)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_spec_example_loads_and_defaults_to_json_and_all_events() {
        let n = load(
            "[[notify]]\nurl = \"https://hooks.example.com/gpu-agent\"\nformat = \"json\"\n\
             events = [\"rolled_back\", \"failed\", \"aborted\"]\n\
             [[notify]]\nurl = \"http://127.0.0.1:9/x\"\n\
             [[notify]]\nurl = \"https://hooks.slack.com/services/T/B/secret\"\nformat = \"slack\"\n",
        )
        .unwrap();
        assert_eq!(n.len(), 3);
        assert_eq!(n[0].format, NotifyFormat::Json);
        assert!(n[0].wants(Outcome::RolledBack) && !n[0].wants(Outcome::Success));
        assert_eq!(n[1].format, NotifyFormat::Json);
        assert!(n[1].wants(Outcome::Success) && n[1].wants(Outcome::Aborted));
        assert_eq!(n[2].format, NotifyFormat::Slack);
        // The secret path stays out of logs.
        assert_eq!(n[2].target(), "https://hooks.slack.com");
        assert!(!format!("{:?}", n[2]).contains("secret"));
        assert!(load("").unwrap().is_empty());
    }

    #[test]
    fn bad_notify_tables_name_the_key() {
        for (extra, want) in [
            ("[[notify]]\nformat = \"json\"\n", "notify[0].url"),
            ("[[notify]]\nurl = \"hooks.example.com\"\n", "not a URL"),
            ("[[notify]]\nurl = \"ftp://h/x\"\n", "http:// or https://"),
            (
                "[[notify]]\nurl = \"http://h/x\"\nformat = \"teams\"\n",
                "\"teams\" is not a format",
            ),
            (
                "[[notify]]\nurl = \"http://h/x\"\n[[notify]]\nurl = \"http://h/y\"\nevents = [\"rolledback\"]\n",
                "notify[1].events",
            ),
            ("[[notify]]\nurl = \"http://h/x\"\nevents = []\n", "is empty"),
            ("[[notify]]\nurl = \"http://h/x\"\nretries = 3\n", "unknown field"),
        ] {
            let e = load(extra).unwrap_err();
            assert!(e.contains(want), "{extra}: {e}");
            assert!(e.contains("/etc/a.toml"), "{extra}: {e}");
        }
    }

    #[test]
    fn a_repository_written_as_a_url_says_to_drop_the_scheme() {
        let e = load_from_strs(&[(
            PathBuf::from("/etc/a.toml"),
            MINIMAL.replace("127.0.0.1:5055/acme/worker", "https://ghcr.io/acme/worker"),
        )])
        .unwrap_err()
        .to_string();
        assert!(e.contains("image.repository"), "{e}");
        assert!(e.contains("drop the `https://`"), "{e}");
        assert!(!e.contains("port"), "{e}");
    }
}
