//! What the agent keeps on disk under `agent.state_dir`:
//!
//! - `state.json`: the update journal: current, last good and bad digests, the
//!   drain/pin holds, and the update in progress with the step it reached.
//!   Written atomically (temp file, fsync, rename, fsync of the folder) before
//!   every step, so a crash at any point leaves the last step on disk.
//! - `history.jsonl`: the append-only audit trail, one JSON object a line,
//!   fsynced after each append. A line that does not parse (a torn last line
//!   from a crash mid-write, a line cut inside a UTF-8 character, garbage) is
//!   skipped when read, never rewritten and never fatal. When an append would
//!   take the file past `agent.history_max`, it is first renamed to
//!   `history.jsonl.1` (replacing the older part), so the history on disk stays
//!   under twice that. `agentctl history -n N` reads the file backwards, so it
//!   answers in the same time on a host that kept years of history.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use atomicwrites::{AtomicFile, OverwriteBehavior};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::{info, warn};

use super::phase::Phase;
use crate::docker::{Container, SpecHash};

pub const STATE_FILE: &str = "state.json";
pub const HISTORY_FILE: &str = "history.jsonl";
/// The older part of the history, kept beside it after a rotation.
pub const HISTORY_OLD_FILE: &str = "history.jsonl.1";
/// `agent.history_max` when the config does not say.
pub const DEFAULT_HISTORY_MAX: u64 = 16 * 1024 * 1024;
/// How much of the history file a backwards read takes at a time.
const TAIL_CHUNK: u64 = 64 * 1024;
/// How many bad marks and earlier good digests the state keeps.
const KEEP: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why an update ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Poll,
    Nudge,
    Cli,
    Hub,
    Startup,
    /// The fleet group's rollout named the digest (`gpu-fleet rollout start`).
    Fleet,
    /// The worker's settings in the config differ from the running
    /// container's (after a reload, at a start or a poll): the same digest
    /// is rolled out with them.
    Config,
}

/// Reads `pending.step`: one of the update's steps (`Phase::is_step`).
fn step<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Phase, D::Error> {
    let p = Phase::deserialize(d)?;
    if p.is_step() {
        Ok(p)
    } else {
        Err(serde::de::Error::custom(format!(
            "pending.step {p} is not an update step"
        )))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub from: Option<String>,
    pub to: String,
    pub trigger: Trigger,
    /// How far it got: the phase of the step, saved before the step starts.
    #[serde(deserialize_with = "step")]
    pub step: Phase,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// Why a rollback began.
    #[serde(default)]
    pub error: Option<String>,
    /// What asked for it: an update, an operator's rollback or pin (the
    /// history entry's kind).
    #[serde(default)]
    pub kind: Kind,
    /// For a pin: the reference to hold once the digest is verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    /// A change of the worker's settings alone (`from` = `to`, trigger
    /// `config`): the settings the new container is made of (`gpu-agent.spec`) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_spec: Option<String>,
    /// ... those of the container it replaces (`None`: it carries none, made
    /// by a version before the label), which tell the two apart ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_spec: Option<String>,
    /// ... and the keys that differ (`worker.env.HUB_URL`): names, never values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
}

impl Pending {
    /// The digest stays and only the worker's settings change.
    pub fn settings_only(&self) -> bool {
        self.from.as_deref() == Some(self.to.as_str())
    }

    /// `c` is the container the update replaces: the old digest (and, for a
    /// change of settings alone, the old settings).
    pub fn is_old(&self, c: &Container) -> bool {
        self.from.is_some()
            && c.digest == self.from
            && (!self.settings_only()
                || c.spec.as_ref().map(|s| &s.hash) == self.from_spec.as_ref())
    }

    /// `c` is a container of what the update deploys.
    pub fn is_new(&self, c: &Container) -> bool {
        c.digest.as_deref() == Some(self.to.as_str()) && !self.is_old(c)
    }
}

/// Worker settings that failed verification and were rolled back: not tried
/// again until the config changes (or an operator's `agentctl check`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigHeld {
    /// Their hash (`gpu-agent.spec`).
    pub spec: String,
    /// The keys that differed from the worker's (names only).
    pub changed: Vec<String>,
    pub error: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// The settings a running worker made before containers carried them
/// (no `gpu-agent.spec` label) is taken to have: the config's when it was
/// adopted, so that it is not restarted for nothing and a later change of
/// the config is still seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdoptedSpec {
    /// The container's id.
    pub container: String,
    pub spec: SpecHash,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadDigest {
    pub digest: String,
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// The persisted state of the agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    pub version: u32,
    pub current_digest: Option<String>,
    pub last_good_digest: Option<String>,
    /// Good digests before the last good one, newest last.
    pub previous_good: Vec<String>,
    pub bad_digests: Vec<BadDigest>,
    pub drained: bool,
    /// The maintenance drain has stopped the worker (false while it waits
    /// for in-flight jobs: a restart then resumes the drain).
    pub drain_complete: bool,
    /// The operator's reason for the maintenance drain.
    pub drain_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub drained_at: Option<OffsetDateTime>,
    /// What the operator pinned (a digest or a tag) ...
    pub pinned: Option<String>,
    /// ... and the digest it named then.
    pub pinned_digest: Option<String>,
    /// Updates are held after a hardware-class GPU fault (what it was and
    /// what to do), until an operator's `agentctl check` or `update`.
    pub gpu_hold: Option<String>,
    /// The digest the hub last asked for (`hub.desired_from_hub`), followed
    /// while the hub cannot be asked; `None`: no opinion or never heard.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub_desired: Option<String>,
    /// The hub was told `draining: true` and has not yet acknowledged the
    /// `false` that ends it: it is sent again until it is (unless the host
    /// is drained for maintenance).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hub_draining: bool,
    /// Strikes against digests: failures not plainly the image's own (a
    /// pull the registry refuses, a container the engine will not create),
    /// kept across restarts; the third marks the digest bad.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub strikes: BTreeMap<String, u32>,
    /// The digest whose last rollbacks blamed nothing: it is tried again
    /// only after `retry.until`, and marked bad at `image.max_attempts`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// When the agent first saw each recent digest (Unix seconds), for
    /// `image.verify.min_age`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub first_seen: BTreeMap<String, i64>,
    /// The swaps the hub triggered lately (at most a few an hour).
    pub hub_swaps: crate::trust::SwapLimiter,
    /// The config's worker settings failed verification and were rolled
    /// back: held until the config changes (status: `config_held`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_held: Option<ConfigHeld>,
    /// The settings taken for a running worker without spec labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adopted_spec: Option<AdoptedSpec>,
    pub pending: Option<Pending>,
}

/// Rollbacks of one digest that blamed nothing, and when it may be tried again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    pub digest: String,
    pub attempts: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
    pub last_error: String,
}

impl State {
    pub fn is_bad(&self, digest: &str) -> bool {
        self.bad_digests.iter().any(|b| b.digest == digest)
    }

    /// Marks `digest` bad; it is no longer an earlier good digest to roll back to.
    pub fn mark_bad(&mut self, digest: &str, reason: &str, at: OffsetDateTime) {
        let reason = &crate::text::sanitize(reason, crate::text::MAX_TEXT * 4);
        self.previous_good.retain(|d| d != digest);
        self.bad_digests.retain(|b| b.digest != digest);
        self.bad_digests.push(BadDigest {
            digest: digest.to_string(),
            reason: reason.to_string(),
            at,
        });
        // Over the bound, marks from repeated pull or create failures go
        // first (a flood of digests the registry does not have), then the
        // oldest: an operator's or a rollback's mark outlives them.
        while self.bad_digests.len() > KEEP {
            let i = self
                .bad_digests
                .iter()
                .position(|b| b.reason.ends_with("times)"))
                .unwrap_or(0);
            self.bad_digests.remove(i);
        }
    }

    /// Rebuilds what the history knows after the state file was lost: the
    /// good digests in order, the bad marks (of rolled-back updates and of
    /// digests an operator rolled back from), the drain and the pin (a tag
    /// pin comes back as a pin of the digest it named). The current digest is
    /// left to the engine (the running worker is adopted).
    pub fn rebuild_from(&mut self, history: &[HistoryEntry]) {
        for e in history {
            let deploys = matches!(e.kind, Kind::Update | Kind::Rollback | Kind::Pin);
            match (e.kind, e.outcome, &e.to) {
                (_, Outcome::Success, Some(to)) if deploys => {
                    self.commit(to);
                    match (e.kind, &e.from) {
                        (Kind::Rollback, Some(from)) if from != to => self.mark_bad(
                            from,
                            "rolled back by an operator (agentctl rollback)",
                            e.at,
                        ),
                        (Kind::Pin, _) => {
                            self.pinned = Some(to.clone());
                            self.pinned_digest = Some(to.clone());
                        }
                        _ => {}
                    }
                }
                (_, Outcome::RolledBack | Outcome::Failed, Some(to))
                    if deploys && e.marked_bad.unwrap_or(e.outcome == Outcome::RolledBack) =>
                {
                    self.mark_bad(to, e.error.as_deref().unwrap_or("rolled back"), e.at)
                }
                (Kind::Unpin, Outcome::Success, _) => {
                    self.pinned = None;
                    self.pinned_digest = None;
                }
                (Kind::Drain, Outcome::Success, _) => {
                    self.drained = true;
                    self.drain_complete = true;
                    self.drain_reason = e.reason.clone();
                    self.drained_at = Some(e.at);
                }
                (Kind::Undrain, _, _) => {
                    self.drained = false;
                    self.drain_complete = false;
                    self.drain_reason = None;
                    self.drained_at = None;
                }
                _ => {}
            }
            if e.trigger == Trigger::Config {
                self.config_held = match (e.outcome, &e.spec) {
                    (Outcome::RolledBack | Outcome::Failed, Some(spec)) => Some(ConfigHeld {
                        spec: spec.clone(),
                        changed: e.changed.clone(),
                        error: e.error.clone().unwrap_or_default(),
                        at: e.at,
                    }),
                    (Outcome::Success, _) => None,
                    _ => self.config_held.take(),
                };
            }
            self.gpu_hold = e.gpu_hold.clone();
        }
        self.current_digest = None;
        // Whether the hub heard the end of a drain is not in the history:
        // tell it again (a `false` it already has is harmless).
        self.hub_draining = !history.is_empty();
    }

    /// The good digest an operator's rollback goes back to: the last good
    /// one when the worker runs something else, else the one before it.
    pub fn rollback_target(&self) -> Option<&str> {
        match (&self.current_digest, &self.last_good_digest) {
            (Some(c), Some(g)) if c != g => Some(g),
            _ => self.previous_good.last().map(String::as_str),
        }
    }

    /// `digest` runs and passed verification.
    pub fn commit(&mut self, digest: &str) {
        if let Some(prev) = self.last_good_digest.take() {
            if prev != digest {
                self.previous_good.retain(|d| d != &prev && d != digest);
                self.previous_good.push(prev);
                let excess = self.previous_good.len().saturating_sub(KEEP);
                self.previous_good.drain(..excess);
            }
        }
        self.current_digest = Some(digest.to_string());
        self.last_good_digest = Some(digest.to_string());
        self.bad_digests.retain(|b| b.digest != digest);
        self.strikes.remove(digest);
        self.retry = None;
    }
}

/// One line of the audit trail (the SPEC's `agentctl history` entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub kind: Kind,
    pub from: Option<String>,
    pub to: Option<String>,
    pub outcome: Outcome,
    pub trigger: Trigger,
    pub error: Option<String>,
    /// Who asked for it, for an operator's action (`alice (uid 1000)`, from
    /// the control socket's peer credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// The operator's reason (a maintenance drain's `--reason`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For a failed or rolled-back deploy: whether it left `to` marked bad
    /// (`None` in entries written before this was recorded), so a state
    /// rebuilt from the history marks what was marked, no more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marked_bad: Option<bool>,
    /// The hold after a GPU fault in force when the entry was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_hold: Option<String>,
    /// For a change of the worker's settings (trigger `config`): the keys
    /// that changed (`worker.env.HUB_URL`, `worker.volumes`), names only ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
    /// ... and the hash of the new settings (`gpu-agent.spec`), so that a
    /// state rebuilt from the history still holds settings that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    #[default]
    Update,
    Rollback,
    Drain,
    Undrain,
    Pin,
    Unpin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    RolledBack,
    Failed,
    Aborted,
}

/// The state and history files of one agent. Clones share the history's
/// size limit ([`Journal::set_history_max`]).
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
    history_max: Arc<AtomicU64>,
}

impl Journal {
    /// Opens (creating) the state folder.
    pub fn open(dir: &Path) -> Result<Self, JournalError> {
        std::fs::create_dir_all(dir).map_err(|source| JournalError::Io {
            action: "creating state folder",
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Journal {
            dir: dir.to_path_buf(),
            history_max: Arc::new(AtomicU64::new(DEFAULT_HISTORY_MAX)),
        })
    }

    /// Sets the size past which the history is rotated (`agent.history_max`),
    /// for this journal and every clone of it.
    pub fn set_history_max(&self, bytes: u64) {
        self.history_max.store(bytes.max(1), Ordering::Relaxed);
    }

    pub fn history_max(&self) -> u64 {
        self.history_max.load(Ordering::Relaxed)
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    pub fn history_path(&self) -> PathBuf {
        self.dir.join(HISTORY_FILE)
    }

    /// The older part of the history (after a rotation).
    pub fn history_old_path(&self) -> PathBuf {
        self.dir.join(HISTORY_OLD_FILE)
    }

    /// Reads the state. A missing file is a fresh state. A file that does not
    /// parse is kept aside as `state.json.corrupt-<unix time>` and a fresh state
    /// returned with `recovered = true`: the caller rebuilds it from the engine.
    pub fn load(&self) -> Result<(State, bool), JournalError> {
        let path = self.state_path();
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((State::default(), false))
            }
            Err(source) => {
                return Err(JournalError::Io {
                    action: "reading",
                    path,
                    source,
                })
            }
        };
        match serde_json::from_slice::<State>(&text) {
            Ok(s) => Ok((s, false)),
            Err(e) => {
                let aside = self.dir.join(format!(
                    "{STATE_FILE}.corrupt-{}",
                    OffsetDateTime::now_utc().unix_timestamp()
                ));
                warn!(path = %path.display(), error = %e, kept_as = %aside.display(),
                      "state file does not parse; rebuilding it from the engine");
                std::fs::rename(&path, &aside).map_err(|source| JournalError::Io {
                    action: "moving aside",
                    path: path.clone(),
                    source,
                })?;
                Ok((State::default(), true))
            }
        }
    }

    /// Writes the state atomically and durably.
    pub fn save(&self, state: &State) -> Result<(), JournalError> {
        let path = self.state_path();
        let mut s = state.clone();
        s.version = 1;
        let bytes = serde_json::to_vec_pretty(&s).expect("state serialises");
        AtomicFile::new(&path, OverwriteBehavior::AllowOverwrite)
            .write(|f| {
                f.write_all(&bytes)?;
                f.write_all(b"\n")
            })
            .map_err(|e| JournalError::Io {
                action: "writing",
                path,
                source: match e {
                    atomicwrites::Error::Internal(e) | atomicwrites::Error::User(e) => e,
                },
            })
    }

    /// Appends one entry to the history and fsyncs it.
    pub fn append(&self, entry: &HistoryEntry) -> Result<(), JournalError> {
        let path = self.history_path();
        let io = |action, source| JournalError::Io {
            action,
            path: path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(entry).expect("history entry serialises");
        line.push(b'\n');
        self.rotate_if_full(line.len() as u64)?;
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io("opening", e))?;
        // A torn last line from a crash would glue onto this one: start afresh.
        if needs_newline(&path) {
            f.write_all(b"\n").map_err(|e| io("appending to", e))?;
        }
        f.write_all(&line).map_err(|e| io("appending to", e))?;
        f.sync_data().map_err(|e| io("syncing", e))
    }

    /// Renames the history to `history.jsonl.1` (replacing the older part)
    /// when `adding` more bytes would take it past `agent.history_max`.
    fn rotate_if_full(&self, adding: u64) -> Result<(), JournalError> {
        let path = self.history_path();
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(JournalError::Io {
                    action: "reading the size of",
                    path,
                    source,
                })
            }
        };
        let max = self.history_max();
        if len == 0 || len.saturating_add(adding) <= max {
            return Ok(());
        }
        let old = self.history_old_path();
        std::fs::rename(&path, &old).map_err(|source| JournalError::Io {
            action: "rotating",
            path: path.clone(),
            source,
        })?;
        // The rename is durable before the new file gets its first line.
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        info!(path = %path.display(), kept_as = %old.display(), size = len, max,
              "history rotated (agent.history_max)");
        Ok(())
    }

    /// The whole history (the older part first), oldest first; lines that do
    /// not parse are skipped.
    pub fn history(&self) -> Result<Vec<HistoryEntry>, JournalError> {
        let mut out = Vec::new();
        for path in [self.history_old_path(), self.history_path()] {
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(JournalError::Io {
                        action: "reading",
                        path,
                        source,
                    })
                }
            };
            out.extend(
                bytes
                    .split(|b| *b == b'\n')
                    .filter_map(|l| parse_line(&path, l)),
            );
        }
        Ok(out)
    }

    /// The last `n` entries, oldest first, read from the end of the history
    /// (into its older part when the newer one holds fewer): the time it
    /// takes does not grow with the history.
    pub fn history_tail(&self, n: usize) -> Result<Vec<HistoryEntry>, JournalError> {
        let mut newest_first = Vec::with_capacity(n.min(1024));
        for path in [self.history_path(), self.history_old_path()] {
            if newest_first.len() >= n {
                break;
            }
            let want = n - newest_first.len();
            read_backwards(&path, want, &mut newest_first).map_err(|source| JournalError::Io {
                action: "reading",
                path: path.clone(),
                source,
            })?;
        }
        newest_first.reverse();
        Ok(newest_first)
    }
}

/// One history line, or `None` (logged) for a blank line or one that does
/// not parse: torn, cut inside a UTF-8 character, or garbage.
fn parse_line(path: &Path, line: &[u8]) -> Option<HistoryEntry> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    match serde_json::from_slice(line) {
        Ok(e) => Some(e),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "skipping a history line that does not parse");
            None
        }
    }
}

/// Pushes up to `want` entries of the file at `path` onto `out`, newest
/// first, reading it from the end in [`TAIL_CHUNK`] blocks. A missing file
/// holds none.
fn read_backwards(path: &Path, want: usize, out: &mut Vec<HistoryEntry>) -> std::io::Result<()> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let goal = out.len() + want;
    let mut pos = f.seek(SeekFrom::End(0))?;
    // The bytes from `pos` to the start of the lines already taken: the
    // end of a line whose start is further back.
    let mut rest: Vec<u8> = Vec::new();
    while pos > 0 && out.len() < goal {
        let start = pos.saturating_sub(TAIL_CHUNK);
        let mut block = vec![0u8; (pos - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut block)?;
        block.extend_from_slice(&rest);
        rest = block;
        let mut end = rest.len();
        while out.len() < goal {
            let Some(nl) = rest[..end].iter().rposition(|b| *b == b'\n') else {
                break;
            };
            out.extend(parse_line(path, &rest[nl + 1..end]));
            end = nl;
        }
        rest.truncate(end);
        pos = start;
    }
    // The file's first line has no newline before it.
    if pos == 0 && out.len() < goal {
        out.extend(parse_line(path, &rest));
    }
    Ok(())
}

fn needs_newline(path: &Path) -> bool {
    let Ok(mut f) = File::open(path) else {
        return false;
    };
    if f.seek(SeekFrom::End(-1)).is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    f.read_exact(&mut b).is_ok() && b[0] != b'\n'
}

#[cfg(test)]
#[path = "journal_tests.rs"]
mod tests;
