//! The gate's session with etcd: the host's lease and its keep-alive (one
//! request per third of the TTL, the whole load of an idle host), the host's
//! record under it, and one watch stream on the group's `policy`, `rollout`
//! and `halted/` keys. When etcd does not answer, the session says so (the
//! gate answers Wait), retries with backoff and jitter, and on reconnecting
//! takes a new lease if the old one expired, publishes the host again, sends
//! the outcomes and the slot release etcd missed, and wakes the core.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, PutOptions, WatchOptions};
use rand::Rng;
use tracing::{debug, info, warn};

use super::gate::Inner;
use super::keys::Keys;
use super::records::{decode, encode, now, HostRecord, RolloutRecord};
use super::{FleetError, Policy};

pub(super) async fn session(inner: Arc<Inner>) {
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
        // The number of slots may have changed: a waiting host counts its
        // place again at its next decide.
        if let Some(w) = st.waiter.as_mut() {
            w.live = false;
            w.task.abort();
        }
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
pub(super) async fn publish(inner: &Arc<Inner>) -> Result<(), FleetError> {
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
