//! A dry run: what `agentctl check` (or `agentctl update --digest D`) would
//! do now, and why, without doing it. [`Updater::dry_run`] takes `&self`: it
//! writes no state and no history, moves no phase, publishes no view and no
//! event, sends no hub notice, takes no fleet slot (the group is read through
//! `view()`, never `decide()`), and asks the engine, the registry, the hub and
//! the GPUs only what reads: the tag or range, the hub's desired digest, the
//! signature and the build time, a GPU snapshot, whether the image is on the
//! host and its environment, whether the worker runs.
//!
//! It follows the real path's order (`target.rs`, `admit.rs`, `sequence.rs`'s
//! `preflight`, the CUDA check after the pull, the fleet slot before the
//! drain) and gives each gate a [`Verdict`] with the reason. Both operator
//! actions are `trigger = cli`, so what they change about the gates holds
//! here too: an operator's check tries a digest in back-off now and lifts a
//! GPU hold; an operator's update deploys a digest marked bad.

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::gpu_gate::{blocking, limits};
use super::machine::{allows, Action};
use super::Updater;
use crate::docker::{Engine, SpecHash};
use crate::fleet::{FleetView, RolloutState};
use crate::gpu::{self, Snapshot};
use crate::registry::{ImageName, Policy};

/// How long any one question of a dry run may take (a registry, hub or engine
/// that does not answer in time makes that gate `unknown`).
pub const STEP_LIMIT: Duration = Duration::from_secs(30);

/// What the dry run is of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DryRunOf {
    /// `agentctl check`: the digest the tag, range, hub, fleet rollout or pin names now.
    Check,
    /// `agentctl update --digest D`.
    Update(String),
}

/// A gate's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// It lets the update go on (or does not apply).
    Pass,
    /// It would stop the update (the reason says how the real action would end).
    WouldRefuse,
    /// It cannot be told now (not answered in time, or only known later in the update).
    Unknown,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::WouldRefuse => "would_refuse",
            Verdict::Unknown => "unknown",
        }
    }
}

/// What the action would lead to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outlook {
    /// An update to `target.digest` would start, and every gate passes.
    WouldUpdate,
    /// The worker runs the target already: nothing would happen.
    UpToDate,
    /// A gate (or the target itself) would stop it: `summary` says which.
    WouldRefuse,
    /// No gate refuses, but the target or a gate cannot be told now.
    Unknown,
}

impl Outlook {
    pub fn as_str(self) -> &'static str {
        match self {
            Outlook::WouldUpdate => "would_update",
            Outlook::UpToDate => "up_to_date",
            Outlook::WouldRefuse => "would_refuse",
            Outlook::Unknown => "unknown",
        }
    }
}

/// One gate of the update and its verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gate {
    /// `held`, `bad_mark`, `backoff`, `hub_swap_budget`, `min_age`,
    /// `signature`, `gpu`, `hub`, `cuda`, `fleet` (in the update's order).
    pub gate: String,
    pub verdict: Verdict,
    pub reason: String,
}

fn gate(name: &str, verdict: Verdict, reason: impl Into<String>) -> Gate {
    Gate {
        gate: name.to_string(),
        verdict,
        reason: reason.into(),
    }
}

/// The digest the action would deploy, and what decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// `null` when it cannot be told (the registry did not answer, the hub
    /// named another repository).
    pub digest: Option<String>,
    /// `tag`, `semver`, `hub`, `fleet`, `pin` or `operator`.
    pub decided_by: String,
    /// In words: `tag stable`, `version ^2: tag 2.4.1`, why it is not known.
    pub detail: String,
}

/// What would be pulled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pull {
    /// `repository@digest`.
    pub image: String,
    /// Whether the engine has it already (`null`: the engine could not be asked).
    pub present: Option<bool>,
    pub detail: String,
}

/// The running container's spec against the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecDiff {
    /// `same`, `differs` or `unknown`.
    pub verdict: String,
    /// The keys that differ (no values: they may be secrets).
    pub differences: Vec<String>,
    pub detail: String,
}

/// `agentctl check --dry-run --json`, `agentctl update --dry-run --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DryRun {
    /// `check` or `update`.
    pub action: String,
    pub verdict: Outlook,
    /// The verdict in one line of words.
    pub summary: String,
    /// The digest the worker runs now.
    pub current_digest: Option<String>,
    pub target: Target,
    /// Every gate, in the order the update meets them (only `held` when the
    /// target runs already or cannot be told).
    pub gates: Vec<Gate>,
    /// What would be pulled (`null` when nothing would be).
    pub pull: Option<Pull>,
    pub spec: SpecDiff,
}

/// The target, or why there is none.
enum Found {
    Digest(Target),
    Refused(Target),
    Unknown(Target),
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

impl<E: Engine> Updater<E> {
    /// What `of` would do now, gate by gate, changing nothing (see the module).
    /// It is answered between the loop's turns: the control server refuses it
    /// while an update or a maintenance drain runs ([`super::allows_dry_run`]).
    pub async fn dry_run(&self, of: &DryRunOf) -> DryRun {
        let current = self.state.current_digest.clone();
        let mut gates = vec![self.dry_held(of)];
        let mut pull = None;
        let found = self.dry_target(of).await;
        let target = match &found {
            Found::Digest(t) | Found::Refused(t) | Found::Unknown(t) => t.clone(),
        };
        let up_to_date = target.digest.is_some() && target.digest == current;
        if let (Found::Digest(t), false) = (&found, up_to_date) {
            let digest = t.digest.clone().unwrap_or_default();
            let p = self.dry_pull(&digest).await;
            gates.extend(self.dry_gates(of, t, &digest, p.present).await);
            pull = Some(p);
        }
        let refusing: Vec<&Gate> = gates
            .iter()
            .filter(|g| g.verdict == Verdict::WouldRefuse)
            .collect();
        let unknown: Vec<&str> = gates
            .iter()
            .filter(|g| g.verdict == Verdict::Unknown)
            .map(|g| g.gate.as_str())
            .collect();
        let digest = target.digest.as_deref().unwrap_or("-");
        let spec = self.dry_spec().await;
        // An operator's check rolls the config's settings out first, before
        // any digest (held ones too: polls leave those, `agentctl check`
        // tries them again), unless the worker is drained (a check is refused).
        let settings_first = spec.verdict == "differs" && !self.state.drained;
        let (verdict, summary) = if settings_first && matches!(of, DryRunOf::Check) {
            (
                Outlook::WouldUpdate,
                format!(
                    "would roll out the config's worker settings ({}) on {} through the update's own steps (GPU pre-flight, fleet slot, drain, verify), then look for a new digest",
                    spec.differences.join(", "),
                    current.as_deref().unwrap_or("nothing")
                ),
            )
        } else if !refusing.is_empty() {
            let why: Vec<String> = refusing
                .iter()
                .map(|g| format!("{}: {}", g.gate, g.reason))
                .collect();
            (
                Outlook::WouldRefuse,
                format!("would not update: {}", why.join("; ")),
            )
        } else if let Found::Refused(t) = &found {
            (
                Outlook::WouldRefuse,
                format!("would not update: {}", t.detail),
            )
        } else if let Found::Unknown(t) = &found {
            (
                Outlook::Unknown,
                format!("cannot tell which digest: {}", t.detail),
            )
        } else if up_to_date {
            (
                Outlook::UpToDate,
                format!("up to date: the worker runs {digest} ({})", target.detail),
            )
        } else if !unknown.is_empty() {
            (
                Outlook::Unknown,
                format!(
                    "would update to {digest} ({}) unless a gate that cannot be told now refuses: {}",
                    target.detail,
                    unknown.join(", ")
                ),
            )
        } else {
            (
                Outlook::WouldUpdate,
                format!(
                    "would update {} to {digest} ({})",
                    current.as_deref().unwrap_or("nothing"),
                    target.detail
                ),
            )
        };
        DryRun {
            action: match of {
                DryRunOf::Check => "check",
                DryRunOf::Update(_) => "update",
            }
            .into(),
            verdict,
            summary,
            current_digest: current,
            target,
            gates,
            pull,
            spec,
        }
    }

    /// `f` within [`STEP_LIMIT`], or why not.
    async fn bounded<T>(&self, what: &str, f: impl Future<Output = T>) -> Result<T, String> {
        tokio::select! {
            r = tokio::time::timeout(STEP_LIMIT, f) => r.map_err(|_| {
                format!("{what}: no answer within {} s", STEP_LIMIT.as_secs())
            }),
            _ = self.shutdown.cancelled() => Err("the agent is shutting down".into()),
        }
    }

    /// Drained or pinned: the one table ([`allows`]) for the action, and for a
    /// check the hold a pin puts on it ([`super::held`]).
    fn dry_held(&self, of: &DryRunOf) -> Gate {
        let action = match of {
            DryRunOf::Check => Action::Check,
            DryRunOf::Update(d) => Action::Update { digest: d.clone() },
        };
        if let Err(why) = allows(&action, self.machine.phase(), &self.state) {
            return gate("held", Verdict::WouldRefuse, why);
        }
        match (&self.state.pinned, of) {
            (Some(p), DryRunOf::Check) => gate(
                "held",
                Verdict::WouldRefuse,
                format!("the worker is pinned to {p}: checks are held (agentctl unpin follows the registry again)"),
            ),
            _ => gate("held", Verdict::Pass, "not drained, not pinned"),
        }
    }

    /// Which digest the action would deploy, as `check` decides it (pin, fleet
    /// rollout, the hub's desired digest, the tag or range), without saving
    /// what the hub says.
    async fn dry_target(&self, of: &DryRunOf) -> Found {
        let target = |digest: Option<String>, by: &str, detail: String| Target {
            digest,
            decided_by: by.into(),
            detail,
        };
        if let DryRunOf::Update(d) = of {
            return Found::Digest(target(
                Some(d.clone()),
                "operator",
                "agentctl update --digest".into(),
            ));
        }
        if let Some(p) = &self.state.pinned {
            let digest = self
                .state
                .pinned_digest
                .clone()
                .or_else(|| crate::registry::is_sha256_digest(p).then(|| p.clone()));
            let detail = format!("pinned to {p} (agentctl pin)");
            return match digest {
                Some(d) => Found::Digest(target(Some(d), "pin", detail)),
                None => Found::Unknown(target(
                    None,
                    "pin",
                    format!("{detail}; the digest it resolved to is not recorded"),
                )),
            };
        }
        if let Some(d) = self.fleet.desired() {
            let detail = format!("the fleet group {}'s rollout", self.fleet.view().group);
            return Found::Digest(target(Some(d), "fleet", detail));
        }
        match self.dry_hub_desired().await {
            Ok(Some((d, detail))) => return Found::Digest(target(Some(d), "hub", detail)),
            Err(why) => return Found::Refused(target(None, "hub", why)),
            Ok(None) => {}
        }
        let policy = &self.settings.image.policy;
        let by = match policy {
            Policy::Tag(_) => "tag",
            Policy::Version(_) => "semver",
        };
        let asked = self
            .bounded(
                "asking the registry",
                self.registry.resolve(&self.settings.image.name, policy),
            )
            .await;
        match asked {
            Ok(Ok(r)) => {
                let detail = match policy {
                    Policy::Tag(t) => format!("tag {t}"),
                    Policy::Version(req) => format!("version {req}: tag {}", r.tag),
                };
                Found::Digest(target(Some(r.digest), by, detail))
            }
            Ok(Err(e)) => Found::Unknown(target(
                None,
                by,
                format!("{policy}: {}", crate::error_chain(&e)),
            )),
            Err(why) => Found::Unknown(target(None, by, format!("{policy}: {why}"))),
        }
    }

    /// The hub's desired digest as `check` takes it (`Updater::hub_desired`),
    /// without saving it: `Ok(None)` follows the registry.
    async fn dry_hub_desired(&self) -> Result<Option<(String, String)>, String> {
        let Some(hub) = self.hub.clone().filter(|h| h.settings().desired_from_hub) else {
            return Ok(None);
        };
        let asked = self
            .bounded("asking the hub for its desired digest", hub.desired())
            .await;
        let unreachable = match asked {
            Ok(Ok(Some(d))) => {
                let same_repo =
                    ImageName::parse(&d.repository).is_ok_and(|n| n == self.settings.image.name);
                if !same_repo {
                    return Err(format!(
                        "the hub asks for {}@{}, but this agent runs {} (image.repository); \
                         a check would not deploy it: fix the hub's answer or the config",
                        d.repository, d.digest, self.settings.image.name
                    ));
                }
                return Ok(Some((
                    d.digest,
                    "the hub's desired digest (hub.desired_from_hub)".into(),
                )));
            }
            Ok(Ok(None)) => return Ok(None),
            Ok(Err(e)) => crate::error_chain(&e),
            Err(why) => why,
        };
        Ok(self.state.hub_desired.clone().map(|d| {
            (
                d,
                format!("the digest the hub named last (it cannot be asked now: {unreachable})"),
            )
        }))
    }

    /// The gates a new `digest` meets, in the update's order.
    async fn dry_gates(
        &self,
        of: &DryRunOf,
        target: &Target,
        digest: &str,
        present: Option<bool>,
    ) -> Vec<Gate> {
        let operator = matches!(of, DryRunOf::Update(_));
        let now = self.now();
        let (gpu, snap) = self.dry_gpu().await;
        vec![
            self.dry_bad_mark(digest, operator),
            self.dry_backoff(digest, operator, now),
            self.dry_swap_budget(target, now),
            self.dry_min_age(digest, now).await,
            self.dry_signature(digest).await,
            gpu,
            self.dry_hub().await,
            self.dry_cuda(digest, snap.as_ref(), present).await,
            self.dry_fleet(digest).await,
        ]
    }

    fn dry_bad_mark(&self, digest: &str, operator: bool) -> Gate {
        let Some(b) = self.state.bad_digests.iter().find(|b| b.digest == digest) else {
            let strikes = self.state.strikes.get(digest).copied().unwrap_or(0);
            let why = if strikes > 0 {
                format!(
                    "not marked bad ({strikes} of {} strikes)",
                    super::sequence::STRIKES_BEFORE_BAD
                )
            } else {
                "not marked bad".into()
            };
            return gate("bad_mark", Verdict::Pass, why);
        };
        let since = rfc3339(b.at);
        if operator {
            gate(
                "bad_mark",
                Verdict::Pass,
                format!(
                    "marked bad since {since} ({}); an operator's update tries it again, and the mark goes once it is verified",
                    b.reason
                ),
            )
        } else {
            gate(
                "bad_mark",
                Verdict::WouldRefuse,
                format!(
                    "{digest} is marked bad since {since}: {}; it is not tried again until the target moves on, or an operator deploys it (agentctl update --digest)",
                    b.reason
                ),
            )
        }
    }

    /// A digest in back-off after rollbacks that blamed nothing: a poll waits,
    /// an operator's action does not.
    fn dry_backoff(&self, digest: &str, operator: bool, now: OffsetDateTime) -> Gate {
        let Some(r) = self.state.retry.as_ref().filter(|r| r.digest == digest) else {
            return gate("backoff", Verdict::Pass, "not backing off");
        };
        let until = rfc3339(r.until);
        if now >= r.until {
            return gate(
                "backoff",
                Verdict::Pass,
                format!(
                    "the back-off after {} rollback(s) ended at {until}",
                    r.attempts
                ),
            );
        }
        let who = if operator {
            "an operator's update tries it now and ends the back-off"
        } else {
            "agentctl check tries it now"
        };
        gate(
            "backoff",
            Verdict::Pass,
            format!(
                "rolled back {} time(s) without a clear cause (last: {}); a poll would wait until {until}, {who}",
                r.attempts, r.last_error
            ),
        )
    }

    /// `hub.max_swaps_per_hour`, for a digest the hub named.
    fn dry_swap_budget(&self, target: &Target, now: OffsetDateTime) -> Gate {
        let Some(hub) = self.hub.as_ref().filter(|_| target.decided_by == "hub") else {
            return gate(
                "hub_swap_budget",
                Verdict::Pass,
                "applies only to digests the hub names",
            );
        };
        let mut budget = self.state.hub_swaps.clone();
        budget.set_burst(hub.settings().max_swaps_per_hour as usize);
        match budget.check(now) {
            Ok(()) => gate(
                "hub_swap_budget",
                Verdict::Pass,
                "within hub.max_swaps_per_hour",
            ),
            Err(next) => gate(
                "hub_swap_budget",
                Verdict::WouldRefuse,
                format!(
                    "the hub has started hub.max_swaps_per_hour swaps in the last hour; the next may start from {}",
                    rfc3339(next)
                ),
            ),
        }
    }

    /// `image.verify.min_age` (the build time from the registry; first seen
    /// now if never seen, which the dry run does not record).
    async fn dry_min_age(&self, digest: &str, now: OffsetDateTime) -> Gate {
        let Some(trust) = self.trust.clone() else {
            return gate("min_age", Verdict::Pass, "no [image.verify]");
        };
        let seen = self.state.first_seen.get(digest).copied();
        let first_seen = seen
            .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
            .unwrap_or(now);
        let image = &self.settings.image.name;
        let asked = self
            .bounded(
                "reading when the image was built",
                trust.deployable_at(image, digest, first_seen),
            )
            .await;
        match asked {
            Ok(Ok(None)) => gate("min_age", Verdict::Pass, "no image.verify.min_age"),
            Ok(Ok(Some(at))) if now < at => gate(
                "min_age",
                Verdict::WouldRefuse,
                format!(
                    "{digest} is younger than image.verify.min_age: it is deployed from {}{}",
                    rfc3339(at),
                    if seen.is_none() {
                        " (counted from now: the agent has not seen it before)"
                    } else {
                        ""
                    }
                ),
            ),
            Ok(Ok(Some(at))) => gate(
                "min_age",
                Verdict::Pass,
                format!("old enough: deployable since {}", rfc3339(at)),
            ),
            Ok(Err(e)) => gate(
                "min_age",
                Verdict::Unknown,
                format!(
                    "could not learn when {digest} was built: {}",
                    crate::error_chain(&e)
                ),
            ),
            Err(why) => gate("min_age", Verdict::Unknown, why),
        }
    }

    /// `image.verify.cosign_public_keys`: the real check, which only reads.
    async fn dry_signature(&self, digest: &str) -> Gate {
        let Some(trust) = self.trust.clone() else {
            return gate("signature", Verdict::Pass, "no [image.verify]");
        };
        let keys = self
            .settings
            .image
            .verify
            .as_ref()
            .is_some_and(|v| v.cosign_keys.is_some());
        let image = &self.settings.image.name;
        let asked = self
            .bounded("checking the signature", trust.verify(image, digest))
            .await;
        match asked {
            Ok(Ok(())) if keys => gate(
                "signature",
                Verdict::Pass,
                "signed by a key of image.verify.cosign_public_keys",
            ),
            Ok(Ok(())) => gate(
                "signature",
                Verdict::Pass,
                "no image.verify.cosign_public_keys: signatures are not checked",
            ),
            Ok(Err(e)) if e.is_transient() => gate(
                "signature",
                Verdict::Unknown,
                format!("not checked now: {}", crate::error_chain(&e)),
            ),
            Ok(Err(e)) => gate(
                "signature",
                Verdict::WouldRefuse,
                format!("refused ({}): {e}; the real action marks it bad", e.kind()),
            ),
            Err(why) => gate("signature", Verdict::Unknown, why),
        }
    }

    /// The GPU pre-flight as an operator's action meets it (the XIDs seen so
    /// far acknowledged, a GPU hold lifted), and the snapshot for the CUDA check.
    async fn dry_gpu(&self) -> (Gate, Option<Snapshot>) {
        let Some(probe) = self.gpu.clone() else {
            return (gate("gpu", Verdict::Pass, "gpu.check is off"), None);
        };
        let mut notes = String::new();
        if let Some(hold) = &self.state.gpu_hold {
            notes.push_str(&format!(
                "; the hold after a GPU fault ({hold}) is lifted by this operator's action"
            ));
        }
        let xids = probe
            .xids_since(self.good_xid_seq)
            .into_iter()
            .filter(|x| self.on_worker_gpus(x))
            .count();
        if xids > 0 {
            notes.push_str(&format!(
                "; {xids} XID(s) since the last good check are acknowledged by this operator's action"
            ));
        }
        let read = match self.bounded("reading the GPUs", gpu::read(probe)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(why) => Err(why),
        };
        match read {
            Err(e) => (
                gate(
                    "gpu",
                    Verdict::WouldRefuse,
                    format!("GPU pre-flight: {e}; the update waits (install or repair the NVIDIA driver, or set gpu.check = false to update without the GPU gate)"),
                ),
                None,
            ),
            Ok(snap) => {
                let a = gpu::assess(&snap, &limits(&self.settings.gpu), &[]);
                let g = if a.healthy {
                    gate(
                        "gpu",
                        Verdict::Pass,
                        format!("{} GPU(s) read, none blocks an update{notes}", snap.gpus.len()),
                    )
                } else {
                    gate(
                        "gpu",
                        Verdict::WouldRefuse,
                        format!("GPU pre-flight: {}", blocking(&a)),
                    )
                };
                (g, Some(snap))
            }
        }
    }

    /// `hub.verify_registration`: no update starts while the hub cannot be asked.
    async fn dry_hub(&self) -> Gate {
        let Some(hub) = &self.hub else {
            return gate("hub", Verdict::Pass, "no [hub]");
        };
        if !hub.settings().verify_registration {
            return gate("hub", Verdict::Pass, "hub.verify_registration is off");
        }
        match self.bounded("asking the hub", self.hub_preflight()).await {
            Ok(Ok(())) => gate(
                "hub",
                Verdict::Pass,
                "the hub answers: it can verify the new worker's registration",
            ),
            Ok(Err(why)) => gate("hub", Verdict::WouldRefuse, why),
            Err(why) => gate("hub", Verdict::Unknown, why),
        }
    }

    /// The image's `NVIDIA_REQUIRE_CUDA` against the driver: only when the
    /// image is on the host already (else it is known after the pull).
    async fn dry_cuda(&self, digest: &str, snap: Option<&Snapshot>, present: Option<bool>) -> Gate {
        if self.gpu.is_none() {
            return gate("cuda", Verdict::Pass, "gpu.check is off");
        }
        let Some(snap) = snap else {
            return gate(
                "cuda",
                Verdict::Unknown,
                "the GPUs could not be read: the driver's CUDA version is not known",
            );
        };
        let Some(have) = &snap.cuda_version else {
            return gate(
                "cuda",
                Verdict::Pass,
                "the driver does not say which CUDA it supports: not checked",
            );
        };
        match present {
            Some(true) => match self.cuda_check(digest, snap).await {
                Ok(()) => gate(
                    "cuda",
                    Verdict::Pass,
                    format!("the image's NVIDIA_REQUIRE_CUDA, if any, fits the driver's CUDA {have}"),
                ),
                Err(why) => gate("cuda", Verdict::WouldRefuse, why),
            },
            Some(false) => gate(
                "cuda",
                Verdict::Unknown,
                format!("the image is not on this host yet: its NVIDIA_REQUIRE_CUDA is checked after the pull (the driver supports CUDA {have})"),
            ),
            None => gate(
                "cuda",
                Verdict::Unknown,
                "the engine could not say whether the image is on this host",
            ),
        }
    }

    /// The fleet group's slot, from what the gate knows now (`view()`): the
    /// dry run never asks for one.
    async fn dry_fleet(&self, digest: &str) -> Gate {
        if !self.fleet.grouped() {
            return gate(
                "fleet",
                Verdict::Pass,
                "no [fleet]: this host updates alone",
            );
        }
        let running = self
            .bounded("asking the engine", self.primary_running())
            .await;
        if let Ok(Ok(None)) = running {
            return gate(
                "fleet",
                Verdict::Pass,
                "no worker runs: the deploy disrupts nothing and takes no slot",
            );
        }
        fleet_gate(&self.fleet.view(), digest)
    }

    /// What would be pulled, and whether the engine has it already.
    async fn dry_pull(&self, digest: &str) -> Pull {
        let image = self.settings.image.name.pull_ref(digest);
        let next = self.next_name();
        let asked = self
            .bounded("asking the engine", self.engine.has_image(&image))
            .await;
        let (present, detail) = match asked {
            Ok(Ok(true)) => (
                Some(true),
                format!("on this host already: not pulled again; created as {next} while the old worker serves"),
            ),
            Ok(Ok(false)) => (
                Some(false),
                format!("pulled while the old worker serves, then created as {next}"),
            ),
            Ok(Err(e)) => (
                None,
                format!("the engine could not be asked: {}", crate::error_chain(&e)),
            ),
            Err(why) => (None, why),
        };
        Pull {
            image,
            present,
            detail,
        }
    }

    /// The running container's settings (its `gpu-agent.spec` labels, or
    /// those it was adopted with) against the config's, as a check's first
    /// step compares them (`spec_change.rs`), without adopting anything.
    async fn dry_spec(&self) -> SpecDiff {
        let diff = |verdict: &str, differences: Vec<String>, detail: String| SpecDiff {
            verdict: verdict.into(),
            differences,
            detail,
        };
        let worker = match self.bounded("the engine", self.settled_worker()).await {
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => {
                return diff(
                    "unknown",
                    Vec::new(),
                    "no settled worker runs the current digest: the next one is created from the config as it is now".into(),
                )
            }
            Ok(Err(e)) => {
                return diff(
                    "unknown",
                    Vec::new(),
                    format!("the engine could not be asked: {}", crate::error_chain(&e)),
                )
            }
            Err(why) => return diff("unknown", Vec::new(), why),
        };
        let want = SpecHash::of(&self.worker);
        let Some(running) = self.recorded_spec(&worker) else {
            return diff(
                "same",
                Vec::new(),
                "the worker was made by an earlier version (no gpu-agent.spec label): it is adopted as it is, taken to have the config's settings".into(),
            );
        };
        let changed = running.changes(&want);
        if changed.is_empty() {
            return diff(
                "same",
                Vec::new(),
                "the worker runs with the config's worker settings".into(),
            );
        }
        let detail = if self.settings_held(&want) {
            "these settings failed verification and are held: polls leave them; agentctl check tries them again".to_string()
        } else {
            "a check rolls these settings out first, on the digest that runs (trigger config)"
                .to_string()
        };
        diff("differs", changed, detail)
    }
}

/// The fleet gate's verdict from the group's view: what would make `decide`
/// wait or halt that the host knows without asking etcd.
pub(super) fn fleet_gate(v: &FleetView, digest: &str) -> Gate {
    if let Some(slot) = v.slot.filter(|_| v.slot_digest.as_deref() == Some(digest)) {
        return gate(
            "fleet",
            Verdict::Pass,
            format!("this host holds slot {slot} of group {} for it", v.group),
        );
    }
    if !v.etcd_reachable {
        return gate(
            "fleet",
            Verdict::WouldRefuse,
            "etcd is not reachable: no host starts an update (the worker is kept)",
        );
    }
    if v.rollout_digest.as_deref() == Some(digest) {
        match v.rollout_state {
            Some(RolloutState::Paused) => {
                return gate(
                    "fleet",
                    Verdict::WouldRefuse,
                    format!("the group's rollout of {digest} is paused (gpu-fleet rollout resume)"),
                )
            }
            Some(s @ (RolloutState::Halted | RolloutState::Aborted)) => {
                return gate(
                    "fleet",
                    Verdict::WouldRefuse,
                    format!("the group's rollout of {digest} is {}", s.as_str()),
                )
            }
            _ => {}
        }
    }
    if let Some(why) = &v.waiting {
        return gate(
            "fleet",
            Verdict::WouldRefuse,
            format!("the group said to wait when this host last asked: {why}"),
        );
    }
    gate(
        "fleet",
        Verdict::Unknown,
        format!(
            "a slot of group {} is asked for after the pull (free slots, canaries and halts decide then); the dry run takes none",
            v.group
        ),
    )
}
