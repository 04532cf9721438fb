//! [`EtcdGate`]: a host's side of the fleet on etcd.
//!
//! A background session keeps the host's lease alive (one keep-alive every
//! third of its TTL: the only load of an idle host), publishes the host's
//! record under it, and watches the group's `policy`, `rollout` and `halted/`
//! keys on one watch stream, so a new rollout reaches the host as soon as etcd
//! commits it. While the host waits for a slot or for the canaries it also
//! watches the slot queue (deletions only) or the digest's outcomes; between
//! those events a repeated [`FleetGate::decide`] answers Wait from what it
//! knows without asking etcd. When etcd does not answer, the session says so
//! (decide answers Wait: no update starts), retries with backoff and jitter,
//! and on reconnecting takes a new lease if the old one expired, publishes the
//! host again and wakes the core.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchFilterType,
    WatchOptions,
};
use rand::Rng;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::keys::Keys;
use super::policy::{canary_gate, CanaryGate};
use super::records::{
    decode, encode, now, HaltRecord, HostRecord, OutcomeRecord, RolloutRecord, RolloutState,
};
use super::semaphore::{SlotQueue, Standing};
use super::{admin, Decision, Etcd, FleetError, FleetGate, FleetView, HostReport, Outcome, Policy};

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

struct Inner {
    etcd: Etcd,
    keys: Keys,
    host: String,
    group: String,
    ttl: Duration,
    queue: SlotQueue,
    state: Mutex<State>,
    notify: Notify,
}

#[derive(Default)]
struct State {
    reachable: bool,
    lease: Option<i64>,
    policy: Policy,
    rollout: Option<RolloutRecord>,
    halted: BTreeMap<String, HaltRecord>,
    /// The slot held: rank when taken, and the digest it was taken for.
    slot: Option<(u32, String)>,
    release_pending: bool,
    /// Outcomes not yet recorded (etcd was away); sent before the slot is given back.
    pending_outcomes: Vec<(String, Outcome, String)>,
    waiter: Option<Waiter>,
    canary: Option<CanaryWatch>,
    bake_timer: Option<(i64, JoinHandle<()>)>,
    report: Option<HostReport>,
    waiting: Option<String>,
    last_error: Option<String>,
}

/// A host waiting in the slot queue: its count of entries ahead, kept by a watch.
struct Waiter {
    digest: String,
    lease: i64,
    create_revision: i64,
    ahead: u32,
    cap: u32,
    live: bool,
    task: JoinHandle<()>,
}

/// The outcomes of the digest the host waits on the canaries of.
struct CanaryWatch {
    digest: String,
    verified_at: BTreeMap<String, i64>,
    counts: BTreeMap<String, Outcome>,
    seat: bool,
    live: bool,
    /// Verified and baked: the watch is stopped.
    open: bool,
    task: JoinHandle<()>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn wake(&self) {
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
        let session = tokio::spawn(session(inner.clone()));
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

async fn session(inner: Arc<Inner>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let started = tokio::time::Instant::now();
        let err = run_session(&inner).await;
        if err.is_unreachable() {
            inner.etcd.rotate();
        }
        {
            let mut st = inner.lock();
            if st.reachable {
                warn!(group = %inner.group, error = %err, "fleet: lost etcd; no update starts until it is back");
            }
            st.reachable = false;
            st.last_error = Some(err.to_string());
            if err.to_string().contains("lease not found") {
                // It expired while the host was cut off: the next stretch takes a new one.
                st.lease = None;
            }
            if let Some(w) = st.waiter.as_mut() {
                w.live = false;
            }
            if let Some(c) = st.canary.as_mut() {
                c.live = false;
            }
        }
        inner.wake();
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(500);
        }
        let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64 / 2);
        tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// One connected stretch of the session; returns why it ended.
async fn run_session(inner: &Arc<Inner>) -> FleetError {
    match session_body(inner).await {
        Ok(()) => FleetError::Unreachable {
            endpoints: inner.etcd.endpoints().to_string(),
            message: "watch ended".into(),
        },
        Err(e) => e,
    }
}

async fn session_body(inner: &Arc<Inner>) -> Result<(), FleetError> {
    let etcd = &inner.etcd;
    let keys = &inner.keys;
    let old = inner.lock().lease;
    let lease = match old {
        Some(l) => l,
        None => etcd.lease_grant(inner.ttl.as_secs() as i64).await?,
    };
    let (mut keeper, mut ka) = etcd.keep_alive(lease).await?;
    if !etcd.keep_alive_once(&mut keeper, &mut ka).await? {
        inner.lock().lease = None;
        return Err(FleetError::Etcd(
            "the host's lease expired; taking a new one".into(),
        ));
    }
    let rev = load(inner).await?;
    {
        let mut st = inner.lock();
        st.lease = Some(lease);
        st.reachable = true;
        st.last_error = None;
    }
    publish(inner).await?;
    info!(group = %inner.group, host = %inner.host, lease, "fleet: joined the group");
    let start = WatchOptions::new().with_start_revision(rev + 1);
    let mut w = etcd.watch(keys.policy(), Some(start.clone())).await?;
    w.watch(keys.rollout(), Some(start.clone()))
        .await
        .map_err(|e| FleetError::Etcd(e.to_string()))?;
    w.watch(keys.halted_all(), Some(start.with_prefix()))
        .await
        .map_err(|e| FleetError::Etcd(e.to_string()))?;
    etcd.count();
    etcd.count();
    inner.wake();
    let mut tick = tokio::time::interval(inner.ttl / 3);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if !etcd.keep_alive_once(&mut keeper, &mut ka).await? {
                    inner.lock().lease = None;
                    return Err(FleetError::Etcd("the host's lease expired; taking a new one".into()));
                }
                if inner.flush_outcomes().await.is_ok() {
                    let pending = inner.lock().release_pending;
                    if pending && inner.queue.release().await.is_ok() {
                        let mut st = inner.lock();
                        st.release_pending = false;
                        st.slot = None;
                        info!("fleet: slot given back (after etcd came back)");
                    }
                }
            }
            m = w.message() => {
                let resp = match m {
                    Ok(Some(r)) => r,
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(FleetError::Unreachable {
                        endpoints: etcd.endpoints().to_string(),
                        message: format!("watch: {e}"),
                    }),
                };
                if resp.canceled() {
                    return Err(FleetError::Etcd(format!("watch canceled: {}", resp.cancel_reason())));
                }
                for ev in resp.events() {
                    if let Some(kv) = ev.kv() {
                        apply(inner, kv.key(), (ev.event_type() == EventType::Put).then(|| kv.value()));
                    }
                }
                inner.wake();
            }
        }
    }
}

/// Reads policy, rollout, halts and this host's slot; returns the revision read at.
async fn load(inner: &Arc<Inner>) -> Result<i64, FleetError> {
    let etcd = &inner.etcd;
    let keys = &inner.keys;
    let r = etcd.get(keys.policy(), None).await?;
    let rev = r.header().map_or(0, |h| h.revision());
    let policy = match r.kvs().first() {
        Some(kv) => decode(kv.key(), kv.value())?,
        None => Policy::default(),
    };
    let r = etcd
        .get(keys.rollout(), Some(GetOptions::new().with_revision(rev)))
        .await?;
    let rollout = match r.kvs().first() {
        Some(kv) => Some(decode::<RolloutRecord>(kv.key(), kv.value())?),
        None => None,
    };
    let r = etcd
        .get(
            keys.halted_all(),
            Some(GetOptions::new().with_prefix().with_revision(rev)),
        )
        .await?;
    let mut halted = BTreeMap::new();
    for kv in r.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        halted.insert(Keys::leaf(&key).to_string(), decode(kv.key(), kv.value())?);
    }
    let own = inner.queue.own().await?;
    let mut st = inner.lock();
    st.policy = policy;
    st.rollout = rollout;
    st.halted = halted;
    match own {
        Some(e) if e.record.state == super::records::SlotState::Holding => {
            if st.slot.is_none() {
                info!(digest = %e.record.digest, "fleet: this host holds a slot from before; it keeps it until it is steady");
            }
            st.slot = Some((0, e.record.digest));
        }
        _ => st.slot = None,
    }
    Ok(rev)
}

fn apply(inner: &Arc<Inner>, key: &[u8], value: Option<&[u8]>) {
    let k = String::from_utf8_lossy(key).into_owned();
    let keys = &inner.keys;
    let mut st = inner.lock();
    if k == keys.policy() {
        st.policy = value
            .and_then(|v| {
                decode(key, v)
                    .map_err(|e| warn!(error = %e, "fleet: bad policy"))
                    .ok()
            })
            .unwrap_or_default();
        debug!(policy = ?st.policy, "fleet: policy changed");
    } else if k == keys.rollout() {
        st.rollout = value.and_then(|v| {
            decode(key, v)
                .map_err(|e| warn!(error = %e, "fleet: bad rollout record"))
                .ok()
        });
        if let Some(r) = &st.rollout {
            info!(digest = %r.digest, state = r.state.as_str(), "fleet: rollout changed");
        }
    } else if let Some(d) = k.strip_prefix(&keys.halted_all()) {
        match value.and_then(|v| decode(key, v).ok()) {
            Some(h) => {
                st.halted.insert(d.to_string(), h);
            }
            None => {
                st.halted.remove(d);
            }
        }
    }
}

/// Puts this host's record under its lease.
async fn publish(inner: &Arc<Inner>) -> Result<(), FleetError> {
    let (lease, report) = {
        let st = inner.lock();
        (st.lease, st.report.clone().unwrap_or_default())
    };
    let Some(lease) = lease else { return Ok(()) };
    let rec = HostRecord {
        id: inner.host.clone(),
        digest: report.digest,
        phase: if report.phase.is_empty() {
            "starting".into()
        } else {
            report.phase
        },
        gpu: if report.gpu.is_empty() {
            "unknown".into()
        } else {
            report.gpu
        },
        last_event: report.last_event,
        updated_at: now(),
    };
    inner
        .etcd
        .put(
            inner.keys.host(&inner.host),
            encode(&rec),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
}

fn unreachable_wait(st: &State) -> Decision {
    Decision::Wait {
        why: match &st.last_error {
            Some(e) => format!("etcd not reachable, no update starts: {e}"),
            None => "connecting to etcd; no update starts until it answers".into(),
        },
    }
}

impl Inner {
    async fn decide(self: &Arc<Self>, digest: &str) -> Result<Decision, FleetError> {
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

    /// `Some(Wait)` while the host must wait for the canaries of `digest`.
    async fn canary_check(self: &Arc<Self>, digest: &str) -> Result<Option<Decision>, FleetError> {
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
            while let Ok(Some(resp)) = ws.message().await {
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
                    } else if ev
                        .prev_kv()
                        .is_some_and(|p| p.create_revision() < create_revision)
                    {
                        w.ahead = w.ahead.saturating_sub(1);
                        wake |= w.ahead < w.cap;
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

    async fn report_outcome(
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
    async fn flush_outcomes(&self) -> Result<(), FleetError> {
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
                Ok(())
            }
            Err(e) => {
                self.lock().release_pending = true;
                Err(e)
            }
        }
    }
}

fn fmt_time(unix: i64) -> String {
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
                let mut st = self.inner.lock();
                if e.is_unreachable() {
                    st.reachable = false;
                    st.last_error = Some(e.to_string());
                    drop(st);
                    // The session notices too and reconnects; wake the core when it does.
                    unreachable_wait(&self.inner.lock())
                } else {
                    Decision::Wait {
                        why: format!("fleet: {e}"),
                    }
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
        if let Err(e) = publish(&self.inner).await {
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
