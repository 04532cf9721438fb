//! Canaries and bake, a host's side: which host takes a canary seat of a
//! digest, and what the others wait for (the canaries' outcomes, from a watch
//! that stops once they baked; then a timer for the bake's end).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, WatchFilterType, WatchOptions};
use tracing::info;

use super::gate::{fmt_time, CanaryWatch, Inner};
use super::keys::Keys;
use super::policy::{canary_gate, CanaryGate};
use super::records::{decode, now, OutcomeRecord};
use super::{Decision, FleetError, Outcome};

impl Inner {
    /// `Some(Wait)` while the host must wait for the canaries of `digest`.
    pub(super) async fn canary_check(
        self: &Arc<Self>,
        digest: &str,
    ) -> Result<Option<Decision>, FleetError> {
        let policy = self.lock().policy.clone();
        if policy.canary == 0 {
            return Ok(None);
        }
        let fresh = {
            let st = self.lock();
            !st.canary
                .as_ref()
                .is_some_and(|c| c.digest == digest && c.live)
        };
        if fresh {
            self.watch_outcomes(digest).await?;
        }
        let (verified, seat, failed) = {
            let st = self.lock();
            let c = st.canary.as_ref().expect("set above");
            let failed = c
                .counts
                .values()
                .filter(|o| **o != Outcome::Verified)
                .count() as u32;
            (
                c.verified_at.values().copied().collect::<Vec<_>>(),
                c.seat,
                failed,
            )
        };
        match canary_gate(&policy, &verified, now()) {
            CanaryGate::Open => {
                // Stop following the outcomes: every later one would wake this host for nothing.
                if let Some(c) = self.lock().canary.as_mut() {
                    c.open = true;
                    c.task.abort();
                }
                Ok(None)
            }
            CanaryGate::Baking { until } => {
                self.bake_timer(until);
                Ok(Some(Decision::Wait {
                    why: format!(
                        "the canaries of {digest} are verified; they bake until {}",
                        fmt_time(until)
                    ),
                }))
            }
            CanaryGate::Verifying { verified, canary } => {
                if seat || self.take_seat(digest, canary + failed).await? {
                    if let Some(c) = self.lock().canary.as_mut() {
                        c.seat = true;
                    }
                    return Ok(None);
                }
                Ok(Some(Decision::Wait {
                    why: format!(
                        "waiting for the canaries of {digest} ({verified} of {canary} verified)"
                    ),
                }))
            }
        }
    }

    /// Takes a free canary seat among the first `seats` of `digest`, or finds this host's.
    async fn take_seat(&self, digest: &str, seats: u32) -> Result<bool, FleetError> {
        let r = self
            .etcd
            .get(
                self.keys.canaries(digest),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let mut taken = std::collections::BTreeSet::new();
        for kv in r.kvs() {
            if kv.value() == self.host.as_bytes() {
                return Ok(true);
            }
            taken.insert(kv.key().to_vec());
        }
        for n in 0..seats {
            let key = self.keys.canary(digest, n);
            if taken.contains(key.as_bytes()) {
                continue;
            }
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key, self.host.clone(), None)]);
            if self.etcd.txn(txn).await?.succeeded() {
                info!(%digest, seat = n, "fleet: this host is a canary");
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Loads the outcomes of `digest` and watches them while the host waits.
    async fn watch_outcomes(self: &Arc<Self>, digest: &str) -> Result<(), FleetError> {
        let prefix = self.keys.outcomes(digest);
        let r = self
            .etcd
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await?;
        let rev = r.header().map_or(0, |h| h.revision());
        let mut verified_at = BTreeMap::new();
        let mut counts = BTreeMap::new();
        for kv in r.kvs() {
            let rec: OutcomeRecord = decode(kv.key(), kv.value())?;
            let host = Keys::leaf(&String::from_utf8_lossy(kv.key())).to_string();
            if rec.outcome == Outcome::Verified {
                verified_at.insert(host.clone(), rec.at);
            }
            counts.insert(host, rec.outcome);
        }
        let mut ws = self
            .etcd
            .watch(
                prefix,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(rev + 1)
                        .with_filters([WatchFilterType::NoDelete]),
                ),
            )
            .await?;
        let me = self.clone();
        let d = digest.to_string();
        // Spawned under the lock, so the task never sees the state without its watch.
        let mut st = self.lock();
        let task = tokio::spawn(async move {
            while let Ok(Some(resp)) = ws.message().await {
                if resp.canceled() {
                    break;
                }
                let mut st = me.lock();
                let Some(c) = st.canary.as_mut().filter(|c| c.digest == d) else {
                    return;
                };
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let Ok(rec) = decode::<OutcomeRecord>(kv.key(), kv.value()) else {
                        continue;
                    };
                    let host = Keys::leaf(&String::from_utf8_lossy(kv.key())).to_string();
                    if rec.outcome == Outcome::Verified {
                        c.verified_at.insert(host.clone(), rec.at);
                    }
                    c.counts.insert(host, rec.outcome);
                }
                drop(st);
                me.wake();
            }
            if let Some(c) = me.lock().canary.as_mut() {
                c.live = false;
            }
            me.wake();
        });
        if let Some(old) = st.canary.take() {
            old.task.abort();
        }
        st.canary = Some(CanaryWatch {
            digest: digest.to_string(),
            verified_at,
            counts,
            seat: false,
            live: true,
            open: false,
            task,
        });
        Ok(())
    }

    fn bake_timer(self: &Arc<Self>, until: i64) {
        let mut st = self.lock();
        if st.bake_timer.as_ref().is_some_and(|(u, _)| *u == until) {
            return;
        }
        let me = self.clone();
        let wait = Duration::from_secs((until - now()).max(0) as u64 + 1);
        let t = tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            me.wake();
        });
        if let Some((_, old)) = st.bake_timer.replace((until, t)) {
            old.abort();
        }
    }
}
