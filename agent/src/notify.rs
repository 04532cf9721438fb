//! Webhook notifications (`[[notify]]`, SPEC "Notifications and monitoring"):
//! each history entry whose outcome a webhook asked for is POSTed to it, as
//! generic JSON or as Slack's incoming-webhook text.
//!
//! Sending never holds the caller: [`Notifier::send`] puts the entry on one
//! bounded queue per webhook and returns; a task per webhook POSTs it with a
//! timeout and retries connection errors, timeouts, 429 and 5xx with
//! exponential backoff and jitter. A queue that is full drops the new entry
//! (a warning and `gpu_agent_notify_total{result="dropped"}`); a receiver
//! that refuses an entry (another 4xx) is not retried. The webhook's URL path
//! (Slack's is a secret) never reaches the logs: they name scheme, host and
//! port only.
//!
//! ```no_run
//! # async fn f(settings: &gpu_agent::config::Settings, entry: &gpu_agent::update::HistoryEntry) {
//! let notifier = gpu_agent::notify::Notifier::spawn(settings);
//! notifier.send(entry); // returns at once
//! notifier.shutdown(std::time::Duration::from_secs(5)).await;
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::config::{NotifyFormat, NotifySettings, Settings};
use crate::update::{HistoryEntry, Kind, Outcome};

/// How hard to try. [`Default`] is what the agent uses.
#[derive(Debug, Clone, Copy)]
pub struct NotifyOptions {
    /// One POST, connection included.
    pub timeout: Duration,
    /// Tries per entry, the first included.
    pub attempts: u32,
    /// The first backoff; it doubles per retry (half of it random), up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Entries waiting per webhook; more are dropped.
    pub queue: usize,
}

impl Default for NotifyOptions {
    fn default() -> Self {
        // Six tries over about two minutes: a receiver restarting is waited
        // for, one that is gone does not hold the queue for long.
        NotifyOptions {
            timeout: Duration::from_secs(10),
            attempts: 6,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(60),
            queue: 100,
        }
    }
}

/// Who the entries are about: the same for every entry of one agent.
#[derive(Debug, Clone)]
struct Source {
    agent: String,
    worker: String,
    image: String,
}

struct Webhook {
    settings: NotifySettings,
    tx: mpsc::Sender<Arc<HistoryEntry>>,
    task: JoinHandle<()>,
}

/// The webhooks of one config. Dropping it lets each task send what is
/// queued and end; [`Notifier::shutdown`] bounds how long that may take.
pub struct Notifier {
    webhooks: Vec<Webhook>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.webhooks.iter().map(|w| w.settings.target()))
            .finish()
    }
}

impl Notifier {
    /// Starts one task per `settings.notify` webhook, with the default
    /// options. Call inside the tokio runtime.
    pub fn spawn(settings: &Settings) -> Notifier {
        Notifier::spawn_with(settings, NotifyOptions::default())
    }

    pub fn spawn_with(settings: &Settings, opts: NotifyOptions) -> Notifier {
        if settings.notify.is_empty() {
            return Notifier {
                webhooks: Vec::new(),
            };
        }
        crate::init_tls();
        let roots = settings
            .agent
            .ca_file
            .as_deref()
            .and_then(|p| match crate::config::read_ca_file(p) {
                Ok(c) => Some(c),
                Err(why) => {
                    warn!(error = %why, "agent.ca_file: notifications use the system's roots only");
                    None
                }
            })
            .unwrap_or_default();
        let http = reqwest::Client::builder()
            .user_agent(concat!("gpu-agent/", env!("CARGO_PKG_VERSION")))
            .timeout(opts.timeout)
            .connect_timeout(opts.timeout.min(Duration::from_secs(5)))
            // A webhook that moved is a config to fix, not a redirect to follow
            // (a POST would become a GET, or go to another host).
            .redirect(reqwest::redirect::Policy::none())
            .tls_certs_merge(roots)
            .build();
        let http = match http {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %crate::error_chain(&e), "notifications are off: the HTTP client cannot be built");
                return Notifier {
                    webhooks: Vec::new(),
                };
            }
        };
        let source = Arc::new(Source {
            agent: settings.agent.id.clone(),
            worker: settings.worker.name.clone(),
            image: settings.image.name.to_string(),
        });
        let webhooks = settings
            .notify
            .iter()
            .map(|n| {
                let (tx, rx) = mpsc::channel(opts.queue.max(1));
                let task = tokio::spawn(deliver(
                    rx,
                    n.clone(),
                    http.clone(),
                    Arc::clone(&source),
                    opts,
                ));
                Webhook {
                    settings: n.clone(),
                    tx,
                    task,
                }
            })
            .collect();
        Notifier { webhooks }
    }

    /// Whether no webhook is configured.
    pub fn is_empty(&self) -> bool {
        self.webhooks.is_empty()
    }

    /// Queues `entry` for every webhook that wants its outcome; never waits.
    pub fn send(&self, entry: &HistoryEntry) {
        let mut shared = None;
        for w in self
            .webhooks
            .iter()
            .filter(|w| w.settings.wants(entry.outcome))
        {
            let e = shared.get_or_insert_with(|| Arc::new(entry.clone()));
            match w.tx.try_send(Arc::clone(e)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    crate::metrics::global().observe_notify("dropped");
                    warn!(
                        target_url = %w.settings.target(),
                        outcome = ?entry.outcome,
                        "notification dropped: the webhook's queue is full (is the receiver down or slow?)"
                    );
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    crate::metrics::global().observe_notify("dropped");
                    warn!(target_url = %w.settings.target(), "notification dropped: its sender has stopped");
                }
            }
        }
    }

    /// Stops taking entries and gives the tasks up to `within` to send what
    /// is queued; then stops them. For the agent's stop and a reload.
    pub async fn shutdown(self, within: Duration) {
        let tasks: Vec<JoinHandle<()>> = self
            .webhooks
            .into_iter()
            .map(|w| {
                drop(w.tx);
                w.task
            })
            .collect();
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        if tokio::time::timeout(within, futures_util::future::join_all(tasks))
            .await
            .is_err()
        {
            warn!(
                within_ms = within.as_millis() as u64,
                "notifications still queued were not sent before the stop"
            );
            for a in aborts {
                a.abort();
            }
        }
    }
}

/// One webhook's task: POSTs the queued entries one at a time, in order.
async fn deliver(
    mut rx: mpsc::Receiver<Arc<HistoryEntry>>,
    settings: NotifySettings,
    http: reqwest::Client,
    source: Arc<Source>,
    opts: NotifyOptions,
) {
    let target = settings.target();
    while let Some(entry) = rx.recv().await {
        let body = body(settings.format, &source, &entry);
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            let sent = http.post(settings.url.clone()).json(&body).send().await;
            let (retry, why) = match sent {
                Ok(r) if r.status().is_success() => break "sent",
                Ok(r) => {
                    let s = r.status();
                    (
                        s.is_server_error() || s.as_u16() == 429 || s.as_u16() == 408,
                        format!("the receiver answered {s}"),
                    )
                }
                Err(e) => (
                    true,
                    crate::error_chain(&e).replace(settings.url.as_str(), &target),
                ),
            };
            if !retry || attempt >= opts.attempts.max(1) {
                warn!(
                    target_url = %target,
                    attempt,
                    error = %why,
                    outcome = ?entry.outcome,
                    "notification not delivered"
                );
                break "failed";
            }
            let delay = backoff(opts.base_delay, opts.max_delay, attempt - 1);
            debug!(
                target_url = %target,
                attempt,
                error = %why,
                delay_ms = delay.as_millis() as u64,
                "notification failed: retrying"
            );
            tokio::time::sleep(delay).await;
        };
        crate::metrics::global().observe_notify(result);
    }
}

/// `base · 2^attempt`, capped at `max`; its upper half random.
fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let nominal = base
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(max);
    let half = nominal / 2;
    half + Duration::from_millis(rand::rng().random_range(0..=half.as_millis() as u64))
}

/// The POST body of `entry` in `format`.
fn body(format: NotifyFormat, source: &Source, entry: &HistoryEntry) -> Value {
    match format {
        NotifyFormat::Json => {
            let mut v = json!({
                "agent": source.agent,
                "worker": source.worker,
                "image": source.image,
                "text": summary(source, entry),
            });
            if let (Some(obj), Ok(Value::Object(e))) =
                (v.as_object_mut(), serde_json::to_value(entry))
            {
                obj.extend(e);
            }
            v
        }
        NotifyFormat::Slack => json!({ "text": slack_text(source, entry) }),
    }
}

fn kind_word(k: Kind) -> &'static str {
    match k {
        Kind::Update => "update",
        Kind::Rollback => "rollback",
        Kind::Drain => "drain",
        Kind::Undrain => "undrain",
        Kind::Pin => "pin",
        Kind::Unpin => "unpin",
    }
}

fn outcome_words(o: Outcome) -> &'static str {
    match o {
        Outcome::Success => "succeeded",
        Outcome::RolledBack => "rolled back",
        Outcome::Failed => "failed",
        Outcome::Aborted => "aborted",
    }
}

fn digest(d: Option<&str>) -> String {
    crate::cli::output::short_digest(d)
}

/// One line an operator reads at a glance:
/// `host-1: update of gpu-worker rolled back (0123456789ab → fedcba987654, trigger poll): not healthy within 60s`.
fn summary(source: &Source, e: &HistoryEntry) -> String {
    let digests = if e.from.is_none() && e.to.is_none() {
        String::new()
    } else {
        format!(
            "{} → {}, ",
            digest(e.from.as_deref()),
            digest(e.to.as_deref())
        )
    };
    let mut s = format!(
        "{}: {} of {} {} ({digests}trigger {})",
        source.agent,
        kind_word(e.kind),
        source.worker,
        outcome_words(e.outcome),
        label(&e.trigger),
    );
    if !e.changed.is_empty() {
        s.push_str(&format!(" (changed {})", e.changed.join(", ")));
    }
    if let Some(err) = &e.error {
        s.push_str(": ");
        s.push_str(err);
    }
    if let Some(r) = &e.reason {
        s.push_str(&format!(" (reason: {r})"));
    }
    s
}

/// Slack's text: an emoji for the outcome, the summary with `&`, `<`, `>`
/// escaped as Slack asks, and the image.
fn slack_text(source: &Source, e: &HistoryEntry) -> String {
    let emoji = match e.outcome {
        Outcome::Success => ":white_check_mark:",
        Outcome::RolledBack => ":rotating_light:",
        Outcome::Failed => ":x:",
        Outcome::Aborted => ":warning:",
    };
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    format!(
        "{emoji} gpu-agent {}\n`{}`",
        escape(&summary(source, e)),
        escape(&source.image)
    )
}

fn label(v: &impl serde::Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::Trigger;
    use time::OffsetDateTime;

    fn source() -> Source {
        Source {
            agent: "host-1".into(),
            worker: "gpu-worker".into(),
            image: "ghcr.io/acme/worker".into(),
        }
    }

    fn entry(outcome: Outcome, error: Option<&str>) -> HistoryEntry {
        HistoryEntry {
            at: OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
            kind: Kind::Update,
            from: Some(format!("sha256:{}", "01".repeat(32))),
            to: Some(format!("sha256:{}", "fe".repeat(32))),
            outcome,
            trigger: Trigger::Poll,
            error: error.map(str::to_string),
            downtime_ms: Some(1200),
            reason: None,
            user: None,
            marked_bad: None,
            gpu_hold: None,
            changed: Vec::new(),
            spec: None,
        }
    }

    #[test]
    fn the_summary_reads_at_a_glance() {
        let s = summary(
            &source(),
            &entry(Outcome::RolledBack, Some("not healthy within 60s")),
        );
        assert_eq!(
            s,
            "host-1: update of gpu-worker rolled back (010101010101 → fefefefefefe, trigger poll): not healthy within 60s"
        );
        let mut drain = entry(Outcome::Success, None);
        drain.kind = Kind::Drain;
        drain.trigger = Trigger::Cli;
        (drain.from, drain.to) = (None, None);
        drain.reason = Some("bios".into());
        assert_eq!(
            summary(&source(), &drain),
            "host-1: drain of gpu-worker succeeded (trigger cli) (reason: bios)"
        );
    }

    #[test]
    fn json_carries_the_entry_and_who_it_is_about() {
        let v = body(
            NotifyFormat::Json,
            &source(),
            &entry(Outcome::Success, None),
        );
        assert_eq!(v["agent"], "host-1");
        assert_eq!(v["image"], "ghcr.io/acme/worker");
        assert_eq!(v["outcome"], "success");
        assert_eq!(v["kind"], "update");
        assert_eq!(v["trigger"], "poll");
        assert_eq!(v["downtime_ms"], 1200);
        assert_eq!(v["at"], "2027-01-15T08:00:00Z");
        assert!(v["text"].as_str().unwrap().contains("succeeded"));
    }

    #[test]
    fn slack_text_escapes_what_slack_reads_as_markup() {
        let v = body(
            NotifyFormat::Slack,
            &source(),
            &entry(Outcome::Failed, Some("<html> & co")),
        );
        let t = v["text"].as_str().unwrap();
        assert!(t.starts_with(":x: gpu-agent host-1: update"), "{t}");
        assert!(t.contains("&lt;html&gt; &amp; co"), "{t}");
        assert_eq!(v.as_object().unwrap().len(), 1);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let (b, m) = (Duration::from_millis(100), Duration::from_millis(500));
        for _ in 0..50 {
            let d0 = backoff(b, m, 0);
            assert!(d0 >= Duration::from_millis(50) && d0 <= b, "{d0:?}");
            let d2 = backoff(b, m, 2);
            assert!(d2 >= Duration::from_millis(200) && d2 <= Duration::from_millis(400));
            let d9 = backoff(b, m, 9);
            assert!(d9 >= m / 2 && d9 <= m, "{d9:?}");
        }
    }
}
