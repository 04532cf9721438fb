//! Which digests may be deployed at all, before anything is pulled or
//! drained: `[image.verify]` (a cosign signature by a trusted key; an age of
//! at least `min_age`) and the hub's authority (a digest the hub names is
//! deployed only with `desired_from_hub`, and the swaps it triggers are
//! rate-limited).

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::{info, warn};

use super::journal::{Kind, Trigger};
use super::outcome::{CheckOutcome, UpdateError};
use super::Updater;
use crate::docker::Engine;

/// First-seen times kept, newest digests first.
const FIRST_SEEN_KEEP: usize = 50;

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

impl<E: Engine> Updater<E> {
    /// `[image.verify]` for `target`: `Ok(None)` when it may be deployed now;
    /// `Ok(Some(outcome))` when not (too young: deferred; unsigned or
    /// signed by another key: marked bad, with a history line; the signature
    /// could not be checked: failed, nothing marked). An operator's rollback
    /// to a digest that ran before is not checked again.
    pub(super) async fn admit(
        &mut self,
        target: &str,
        trigger: Trigger,
        kind: Kind,
    ) -> Result<Option<CheckOutcome>, UpdateError> {
        let Some(trust) = self.trust.clone() else {
            return Ok(None);
        };
        if kind == Kind::Rollback {
            return Ok(None);
        }
        let now = self.now();
        let known = self.state.first_seen.contains_key(target);
        let first_seen = self.first_seen(target, now);
        if !known {
            self.save_or_warn("when the digest was first seen");
        }
        let image = self.settings.image.name.clone();
        match trust.deployable_at(&image, target, first_seen).await {
            Ok(Some(at)) if now < at => {
                let why = format!(
                    "{target} is younger than image.verify.min_age: it is deployed from {}",
                    rfc3339(at)
                );
                info!(digest = %target, deployable_at = %rfc3339(at), "too young to deploy");
                self.last_error = Some(why.clone());
                self.settle()?;
                return Ok(Some(CheckOutcome::Deferred(why)));
            }
            Ok(_) => {}
            Err(e) => {
                let why = format!(
                    "could not learn when {target} was built (image.verify.min_age): {}; the worker is left as it is",
                    crate::error_chain(&e)
                );
                self.last_error = Some(why.clone());
                self.settle()?;
                return Ok(Some(CheckOutcome::Failed(why)));
            }
        }
        match trust.verify(&image, target).await {
            Ok(()) => Ok(None),
            Err(e) if e.is_transient() => {
                let why = format!("{}; the worker is left as it is", crate::error_chain(&e));
                warn!(digest = %target, error = %why, "signature not checked");
                self.last_error = Some(why.clone());
                self.settle()?;
                Ok(Some(CheckOutcome::Failed(why)))
            }
            Err(e) => {
                let why = format!("refused ({}): {e}", e.kind());
                warn!(digest = %target, error = %why, "the digest fails image.verify: marked bad, the worker is kept");
                self.state.mark_bad(target, &why, now);
                self.save()?;
                self.record_refused(kind, trigger, target, &why);
                self.last_error = Some(why.clone());
                self.settle()?;
                Ok(Some(CheckOutcome::Failed(why)))
            }
        }
    }

    /// When the agent first saw `digest` (now, if never), kept in the state.
    fn first_seen(&mut self, digest: &str, now: OffsetDateTime) -> OffsetDateTime {
        let seen = *self
            .state
            .first_seen
            .entry(digest.to_string())
            .or_insert(now.unix_timestamp());
        while self.state.first_seen.len() > FIRST_SEEN_KEEP {
            let oldest = self
                .state
                .first_seen
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(d, _)| d.clone());
            match oldest {
                Some(d) => self.state.first_seen.remove(&d),
                None => break,
            };
        }
        OffsetDateTime::from_unix_timestamp(seen).unwrap_or(now)
    }

    /// The hub's swap budget: a digest the hub named (its desired digest or
    /// a nudge's) starts a swap only a few times an hour, so a hub that
    /// flips between two digests does not cost a swap each time. `Some`:
    /// not now (deferred, the text says until when).
    pub(super) fn hub_swap_budget(&mut self, target: &str) -> Option<CheckOutcome> {
        let now = self.now();
        let burst = self
            .hub
            .as_ref()
            .map_or(1, |h| h.settings().max_swaps_per_hour as usize);
        self.state.hub_swaps.set_burst(burst);
        match self.state.hub_swaps.check(now) {
            Ok(()) => {
                self.state.hub_swaps.record(now);
                None
            }
            Err(next) => {
                let why = format!(
                    "the hub asked for {target}, but it has started hub.max_swaps_per_hour swaps in the last hour; the next may start from {}",
                    rfc3339(next)
                );
                warn!(digest = %target, "hub swap budget spent");
                Some(CheckOutcome::Deferred(why))
            }
        }
    }
}
