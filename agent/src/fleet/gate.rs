//! [`EtcdGate`]: a host's side of the fleet on etcd, behind [`FleetGate`].
//!
//! The session with etcd (lease, host record, the watch on policy, rollout
//! and halts) is in `session.rs`; canaries and bake in `canary.rs`. Here:
//! the decision (halts and pauses, then canaries, then a slot), the wait for a
//! slot (a watch on the slot queue counts the deletions ahead of the host, so
//! a repeated [`FleetGate::decide`] answers Wait without asking etcd until it
//! may be its turn), outcomes, halts and the release. A request that fails
//! makes decide answer Wait and ask again after a short backoff; nothing here
//! ever answers Go without a slot taken in etcd.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, Txn, TxnOp, WatchFilterType, WatchOptions};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::keys::Keys;
use super::records::{encode, now, HaltRecord, OutcomeRecord, RolloutRecord, RolloutState};
use super::semaphore::{SlotQueue, Standing};
use super::{admin, Decision, Etcd, FleetError, FleetGate, FleetView, HostReport, Outcome, Policy};

/// How often a waiting host counts the slot queue in etcd again, whatever its
/// watch says (a backstop: a count the watch got wrong would leave it waiting
/// with slots free).
const RECOUNT_EVERY: Duration = Duration::from_secs(60);

/// How a host joins its group.
#[derive(Debug, Clone)]
pub struct GateOptions {
    pub host: String,
    pub group: String,
    /// The host's lease: a host that stops keeping it alive is gone after this
    /// (its waiting queue entry too; a held slot stays).
    pub lease_ttl: Duration,
}

impl GateOptions {
    pub fn new(host: impl Into<String>, group: impl Into<String>) -> Self {
        GateOptions {
            host: host.into(),
            group: group.into(),
            lease_ttl: Duration::from_secs(60),
        }
    }
}

/// The real gate: etcd behind [`FleetGate`]. Dropping it stops its tasks (the
/// lease then expires by itself; a held slot stays held).
pub struct EtcdGate {
    inner: Arc<Inner>,
    session: JoinHandle<()>,
}

impl Drop for EtcdGate {
    fn drop(&mut self) {
        self.session.abort();
        let mut st = self.inner.lock();
        for t in [
            st.waiter.take().map(|w| w.task),
            st.canary.take().map(|c| c.task),
        ]
        .into_iter()
        .flatten()
        {
            t.abort();
        }
        if let Some(t) = st.bake_timer.take() {
            t.1.abort();
        }
    }
}

pub(super) struct Inner {
    pub(super) etcd: Etcd,
    pub(super) keys: Keys,
    pub(super) host: String,
    pub(super) group: String,
    pub(super) ttl: Duration,
    pub(super) queue: SlotQueue,
    pub(super) state: Mutex<State>,
    pub(super) notify: Notify,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) reachable: bool,
    pub(super) lease: Option<i64>,
    pub(super) policy: Policy,
    pub(super) rollout: Option<RolloutRecord>,
    pub(super) halted: BTreeMap<String, HaltRecord>,
    /// The slot held: rank when taken, and the digest it was taken for.
    pub(super) slot: Option<(u32, String)>,
    pub(super) release_pending: bool,
    /// Outcomes not yet recorded (etcd was away); sent before the slot is given back.
    pub(super) pending_outcomes: Vec<(String, Outcome, String)>,
    pub(super) waiter: Option<Waiter>,
    pub(super) canary: Option<CanaryWatch>,
    pub(super) bake_timer: Option<(i64, JoinHandle<()>)>,
    pub(super) report: Option<HostReport>,
    pub(super) waiting: Option<String>,
    pub(super) last_error: Option<String>,
}

/// A host waiting in the slot queue: its count of entries ahead, kept by a watch.
pub(super) struct Waiter {
    pub(super) digest: String,
    pub(super) lease: i64,
    pub(super) create_revision: i64,
    pub(super) ahead: u32,
    pub(super) cap: u32,
    pub(super) live: bool,
    pub(super) task: JoinHandle<()>,
}

/// The outcomes of the digest the host waits on the canaries of.
pub(super) struct CanaryWatch {
    pub(super) digest: String,
    pub(super) verified_at: BTreeMap<String, i64>,
    pub(super) counts: BTreeMap<String, Outcome>,
    pub(super) seat: bool,
    pub(super) live: bool,
    /// Verified and baked: the watch is stopped.
    pub(super) open: bool,
    pub(super) task: JoinHandle<()>,
}

impl Inner {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub(super) fn wake(&self) {
        self.notify.notify_one();
    }
}

impl EtcdGate {
    /// Starts the gate's session (it connects in the background: until etcd
    /// answers, decide says Wait).
    pub fn start(etcd: Etcd, opts: GateOptions) -> EtcdGate {
        let keys = Keys::new(&opts.group);
        let inner = Arc::new(Inner {
            queue: SlotQueue::new(etcd.clone(), keys.clone(), opts.host.clone()),
            etcd,
            keys,
            host: opts.host,
            group: opts.group,
            ttl: opts.lease_ttl.max(Duration::from_secs(2)),
            state: Mutex::new(State::default()),
            notify: Notify::new(),
        });
        let session = tokio::spawn(super::session::session(inner.clone()));
        EtcdGate { inner, session }
    }

    /// The host id it speaks for.
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// Waits until the session has reached etcd once (tests and the simulation).
    pub async fn connected(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if self.inner.lock().reachable {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Stops the session without giving anything back, as a killed process
    /// would (the lease is revoked so its waiting entry and record go at once).
    pub async fn kill(self) {
        let lease = self.inner.lock().lease;
        self.session.abort();
        if let Some(l) = lease {
            let _ = self.inner.etcd.lease_revoke(l).await;
        }
    }
}

pub(super) fn unreachable_wait(st: &State) -> Decision {
    Decision::Wait {
        why: match &st.last_error {
            Some(e) => format!("etcd not reachable, no update starts: {e}"),
            None => "connecting to etcd; no update starts until it answers".into(),
        },
    }
}

impl Inner {
    async fn decide(self: &Arc<Self>, digest: &str) -> Result<Decision, FleetError> {
        // A slot whose release etcd has not heard yet belongs to an update
        // that is over: it goes back first, and a new update queues like any
        // other (canaries, halts, its turn). Until etcd answers, none starts.
        let pending = {
            let st = self.lock();
            if st.release_pending && (!st.reachable || st.lease.is_none()) {
                return Ok(unreachable_wait(&st));
            }
            st.release_pending
        };
        if pending {
            self.release().await?;
        }
        let back = {
            let mut st = self.lock();
            if let Some((rank, d)) = st.slot.as_mut() {
                *d = digest.to_string();
                return Ok(Decision::Go { slot: *rank });
            }
            if !st.reachable || st.lease.is_none() {
                return Ok(unreachable_wait(&st));
            }
            if let Some(h) = st.halted.get(digest) {
                return Ok(Decision::Halted {
                    why: format!("{digest} is halted for the group: {}", h.reason),
                });
            }
            let mut back = false;
            if let Some(r) = &st.rollout {
                if r.digest == digest {
                    match r.state {
                        RolloutState::Paused => {
                            return Ok(Decision::Wait {
                                why: format!("the rollout of {digest} is paused"),
                            })
                        }
                        RolloutState::Halted | RolloutState::Aborted => {
                            return Ok(Decision::Halted {
                                why: format!(
                                    "the rollout of {digest} is {}{}",
                                    r.state.as_str(),
                                    r.note
                                        .as_ref()
                                        .map(|n| format!(": {n}"))
                                        .unwrap_or_default()
                                ),
                            })
                        }
                        _ => {}
                    }
                }
                back = r.state == RolloutState::Aborted && r.previous.as_deref() == Some(digest);
            }
            back
        };
        if !back {
            if let Some(wait) = self.canary_check(digest).await? {
                return Ok(wait);
            }
        }
        self.slot_check(digest).await
    }

    async fn slot_check(self: &Arc<Self>, digest: &str) -> Result<Decision, FleetError> {
        let (policy, lease) = {
            let st = self.lock();
            (st.policy.clone(), st.lease)
        };
        let Some(lease) = lease else {
            return Ok(unreachable_wait(&self.lock()));
        };
        // Waiting, and not our turn by the watch's count: answer without etcd.
        let known = {
            let st = self.lock();
            match &st.waiter {
                Some(w) if w.live && w.digest == digest && w.lease == lease => {
                    if w.ahead >= w.cap {
                        return Ok(Decision::Wait {
                            why: format!(
                                "{} hosts ahead in the queue for {} slots",
                                w.ahead, w.cap
                            ),
                        });
                    }
                    Some(w.create_revision)
                }
                _ => None,
            }
        };
        let live = match policy.max_unavailable {
            super::MaxUnavailable::Count(_) => 0,
            super::MaxUnavailable::Percent(_) => {
                admin::count(&self.etcd, &self.keys.hosts()).await?
            }
        };
        let cap = policy.max_unavailable.slots(live);
        match self.queue.try_acquire(digest, lease, cap, known).await? {
            Standing::Holding { rank } => {
                let mut st = self.lock();
                if let Some(w) = st.waiter.take() {
                    w.task.abort();
                }
                st.slot = Some((rank, digest.to_string()));
                info!(%digest, slot = rank, "fleet: took a slot");
                Ok(Decision::Go { slot: rank })
            }
            Standing::Halted => Ok(Decision::Halted {
                why: format!("{digest} was halted for the group"),
            }),
            Standing::Waiting {
                create_revision,
                ahead,
                cap,
                revision,
            } => {
                self.watch_queue(digest, lease, create_revision, ahead, cap, revision)
                    .await?;
                Ok(Decision::Wait {
                    why: format!("{ahead} hosts ahead in the queue for {cap} slots"),
                })
            }
        }
    }

    /// Counts the deletions ahead of this host's queue entry from a watch.
    async fn watch_queue(
        self: &Arc<Self>,
        digest: &str,
        lease: i64,
        create_revision: i64,
        ahead: u32,
        cap: u32,
        revision: i64,
    ) -> Result<(), FleetError> {
        let reuse = {
            let mut st = self.lock();
            match st.waiter.as_mut() {
                Some(w) if w.live && w.create_revision == create_revision => {
                    w.lease = lease;
                    w.ahead = ahead;
                    w.cap = cap;
                    w.digest = digest.to_string();
                    true
                }
                _ => false,
            }
        };
        if reuse {
            return Ok(());
        }
        let mut ws = self
            .etcd
            .watch(
                self.keys.slots(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_prev_key()
                        .with_start_revision(revision + 1)
                        .with_filters([WatchFilterType::NoPut]),
                ),
            )
            .await?;
        let me = self.clone();
        let own = self.keys.slot(&self.host);
        // Spawned under the lock, so the task never sees the state without its waiter.
        let mut st = self.lock();
        let task = tokio::spawn(async move {
            // A backstop beside the count: a waiting host asks etcd again
            // now and then, whatever the watch said.
            let recount = tokio::time::sleep(
                RECOUNT_EVERY
                    + Duration::from_millis(rand::random_range(
                        0..=RECOUNT_EVERY.as_millis() as u64 / 2,
                    )),
            );
            tokio::pin!(recount);
            loop {
                let resp = tokio::select! {
                    r = ws.message() => match r {
                        Ok(Some(resp)) => resp,
                        _ => break,
                    },
                    _ = &mut recount => {
                        debug!(create_revision, "fleet: recounting the slot queue");
                        break;
                    }
                };
                if resp.canceled() {
                    break;
                }
                let mut wake = false;
                let mut st = me.lock();
                let Some(w) = st
                    .waiter
                    .as_mut()
                    .filter(|w| w.create_revision == create_revision)
                else {
                    return;
                };
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    debug!(key = %String::from_utf8_lossy(kv.key()), prev = ?ev.prev_kv().map(|p| p.create_revision()), create_revision, ahead = w.ahead, "fleet: slot queue event");
                    if kv.key() == own.as_bytes() {
                        // Our entry went (lease expired): queue again at the next decide.
                        w.live = false;
                        wake = true;
                    } else {
                        match ev.prev_kv() {
                            Some(p) if p.create_revision() < create_revision => {
                                w.ahead = w.ahead.saturating_sub(1);
                                wake |= w.ahead < w.cap;
                            }
                            Some(_) => {}
                            // A deletion etcd sent without the entry it
                            // deleted (seen under load at a watch's start):
                            // whether it was ahead is unknown, so the count is
                            // not trusted; the next decide counts in etcd.
                            None => {
                                w.live = false;
                                wake = true;
                            }
                        }
                    }
                }
                let dead = !w.live;
                drop(st);
                if wake {
                    me.wake();
                }
                if dead {
                    return;
                }
            }
            if let Some(w) = me.lock().waiter.as_mut() {
                w.live = false;
            }
            me.wake();
        });
        if let Some(old) = st.waiter.take() {
            old.task.abort();
        }
        st.waiter = Some(Waiter {
            digest: digest.to_string(),
            lease,
            create_revision,
            ahead,
            cap,
            live: true,
            task,
        });
        Ok(())
    }

    pub(super) async fn report_outcome(
        &self,
        digest: &str,
        outcome: Outcome,
        detail: &str,
    ) -> Result<(), FleetError> {
        let rec = OutcomeRecord {
            outcome,
            at: now(),
            detail: detail.to_string(),
        };
        let key = self.keys.outcome(digest, &self.host);
        if outcome != Outcome::RolledBack {
            self.etcd.put(key.clone(), encode(&rec), None).await?;
            info!(%digest, ?outcome, "fleet: outcome recorded");
        }
        match outcome {
            Outcome::RolledBack => {
                // When this rollback reaches the threshold, the halt is written in
                // the same transaction as the outcome: no host sees the one
                // without the other (and takes a canary seat the failure freed).
                let policy = self.lock().policy.clone();
                let mut all = admin::outcomes(&self.etcd, &self.keys, digest).await?;
                all.insert(self.host.clone(), rec.clone());
                let counts = admin::count_outcomes(all.values());
                let reason = format!(
                    "{} of {} hosts that tried it rolled back (halt_after {}, halt_ratio {}%); last: {} ({detail})",
                    counts.rolled_back, counts.tried(), policy.halt_after, policy.halt_ratio, self.host
                );
                let halt = policy.should_halt(counts.rolled_back, counts.tried());
                let mut ops = vec![TxnOp::put(key.clone(), encode(&rec), None)];
                if halt {
                    ops.push(TxnOp::put(
                        self.keys.halted(digest),
                        encode(&admin::halt_record(&counts, &reason)),
                        None,
                    ));
                }
                let txn = Txn::new()
                    .when([Compare::create_revision(
                        self.keys.halted(digest),
                        CompareOp::Equal,
                        0,
                    )])
                    .and_then(ops)
                    .or_else([TxnOp::put(key, encode(&rec), None)]);
                self.etcd.txn(txn).await?;
                info!(%digest, ?outcome, "fleet: outcome recorded");
                // Rollbacks at the same moment on other hosts: count again.
                let counts = admin::outcome_counts(&self.etcd, &self.keys, digest).await?;
                if halt || policy.should_halt(counts.rolled_back, counts.tried()) {
                    admin::halt(&self.etcd, &self.keys, digest, &counts, &reason).await?;
                    warn!(%digest, %reason, "fleet: digest halted for the group");
                }
            }
            Outcome::Verified => {
                let rolling = self
                    .lock()
                    .rollout
                    .as_ref()
                    .is_some_and(|r| r.digest == digest && r.state == RolloutState::Rolling);
                if rolling && admin::count(&self.etcd, &self.keys.slots()).await? <= 1 {
                    admin::check_complete(&self.etcd, &self.keys, Some(&self.host)).await?;
                }
            }
            Outcome::HostFault => {}
        }
        Ok(())
    }

    /// Records the outcomes etcd missed, oldest first.
    pub(super) async fn flush_outcomes(&self) -> Result<(), FleetError> {
        loop {
            let next = self.lock().pending_outcomes.first().cloned();
            let Some((digest, outcome, detail)) = next else {
                return Ok(());
            };
            self.report_outcome(&digest, outcome, &detail).await?;
            self.lock().pending_outcomes.remove(0);
        }
    }

    async fn release(&self) -> Result<(), FleetError> {
        {
            let mut st = self.lock();
            if let Some(w) = st.waiter.take() {
                w.task.abort();
            }
        }
        // An outcome that may halt the digest goes in before the slot frees.
        let flushed = self.flush_outcomes().await;
        let released = match flushed {
            Ok(()) => self.queue.release().await,
            Err(e) => Err(e),
        };
        match released {
            Ok(had) => {
                let mut st = self.lock();
                if had || st.slot.is_some() {
                    info!("fleet: slot given back");
                }
                st.slot = None;
                st.release_pending = false;
                // Nothing to wait for any more (status's `waiting`).
                st.waiting = None;
                Ok(())
            }
            Err(e) => {
                // A held slot is given back by the session when etcd answers.
                // A place in the queue is not: the host may want a slot again
                // by then, and its next release (or its lease) removes it.
                let mut st = self.lock();
                st.release_pending = st.slot.is_some();
                Err(e)
            }
        }
    }
}

pub(super) fn fmt_time(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

impl FleetGate for EtcdGate {
    async fn decide(&self, digest: &str) -> Decision {
        let d = match self.inner.decide(digest).await {
            Ok(d) => d,
            Err(e) => {
                // A request that failed now (a timeout under load, a member that
                // went away) says nothing about the next: ask again soon. A real
                // outage is the session's to notice; it wakes the core when
                // etcd is back.
                let me = self.inner.clone();
                let backoff = Duration::from_millis(500 + rand::random_range(0..1000));
                tokio::spawn(async move {
                    tokio::time::sleep(backoff).await;
                    me.wake();
                });
                self.inner.lock().last_error = Some(e.to_string());
                Decision::Wait {
                    why: if e.is_unreachable() {
                        format!("etcd not reachable, no update starts: {e}")
                    } else {
                        format!("fleet: {e}")
                    },
                }
            }
        };
        self.inner.lock().waiting = match &d {
            Decision::Go { .. } => None,
            Decision::Wait { why } | Decision::Halted { why } => Some(why.clone()),
        };
        d
    }

    async fn release(&self) -> Result<(), FleetError> {
        self.inner.release().await
    }

    async fn report_outcome(
        &self,
        digest: &str,
        outcome: Outcome,
        detail: &str,
    ) -> Result<(), FleetError> {
        let r = self.inner.report_outcome(digest, outcome, detail).await;
        if let Err(e) = &r {
            warn!(%digest, ?outcome, error = %e, "fleet: outcome not recorded yet; sent when etcd answers, before the slot is given back");
            self.inner.lock().pending_outcomes.push((
                digest.to_string(),
                outcome,
                detail.to_string(),
            ));
        }
        r
    }

    async fn report_host(&self, report: HostReport) {
        {
            let mut st = self.inner.lock();
            if st.report.as_ref() == Some(&report) {
                return;
            }
            st.report = Some(report);
        }
        if let Err(e) = super::session::publish(&self.inner).await {
            debug!(error = %e, "fleet: host record not published; the session publishes it when etcd is back");
        }
    }

    fn desired(&self) -> Option<String> {
        let st = self.inner.lock();
        st.rollout
            .as_ref()
            .and_then(|r| r.desired().map(str::to_string))
    }

    async fn changed(&self) {
        self.inner.notify.notified().await
    }

    fn view(&self) -> FleetView {
        let st = self.inner.lock();
        FleetView {
            group: self.inner.group.clone(),
            etcd_reachable: st.reachable,
            slot: st.slot.as_ref().map(|s| s.0),
            slot_digest: st.slot.as_ref().map(|s| s.1.clone()),
            rollout_digest: st.rollout.as_ref().map(|r| r.digest.clone()),
            rollout_state: st.rollout.as_ref().map(|r| r.state),
            desired: st
                .rollout
                .as_ref()
                .and_then(|r| r.desired().map(str::to_string)),
            waiting: st.waiting.clone(),
        }
    }
}
