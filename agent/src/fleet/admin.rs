//! An operator's side of a group (what `gpu-fleet` does), and the record
//! updates the gate shares with it: counts, halts, completion. Every change to
//! the rollout record is a transaction on its mod revision, so two writers
//! never lose each other's change.

use std::collections::{BTreeMap, BTreeSet};

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use serde::Serialize;

use super::keys::Keys;
use super::records::{
    decode, encode, now, HaltRecord, HostRecord, OutcomeCounts, OutcomeKind, OutcomeRecord,
    RolloutRecord, RolloutState, SlotState,
};
use super::{semaphore, Etcd, FleetError, Policy};

/// How many keys lie under `prefix`.
pub async fn count(etcd: &Etcd, prefix: &str) -> Result<u32, FleetError> {
    let r = etcd
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await?;
    Ok(r.count() as u32)
}

pub async fn get_policy(etcd: &Etcd, keys: &Keys) -> Result<Policy, FleetError> {
    let r = etcd.get(keys.policy(), None).await?;
    match r.kvs().first() {
        Some(kv) => decode(kv.key(), kv.value()),
        None => Ok(Policy::default()),
    }
}

pub async fn set_policy(etcd: &Etcd, keys: &Keys, p: &Policy) -> Result<(), FleetError> {
    etcd.put(keys.policy(), encode(p), None).await
}

/// The rollout record and its mod revision.
pub async fn get_rollout(
    etcd: &Etcd,
    keys: &Keys,
) -> Result<Option<(RolloutRecord, i64)>, FleetError> {
    let r = etcd.get(keys.rollout(), None).await?;
    match r.kvs().first() {
        Some(kv) => Ok(Some((decode(kv.key(), kv.value())?, kv.mod_revision()))),
        None => Ok(None),
    }
}

/// Writes the rollout record if it is still at `mod_revision` (0: absent).
async fn put_rollout_if(
    etcd: &Etcd,
    keys: &Keys,
    rec: &RolloutRecord,
    mod_revision: i64,
) -> Result<bool, FleetError> {
    let txn = Txn::new()
        .when([Compare::mod_revision(
            keys.rollout(),
            CompareOp::Equal,
            mod_revision,
        )])
        .and_then([TxnOp::put(keys.rollout(), encode(rec), None)]);
    Ok(etcd.txn(txn).await?.succeeded())
}

/// Changes the rollout record with `f` (retrying on a concurrent change).
/// `f` returns Err to refuse.
pub async fn update_rollout(
    etcd: &Etcd,
    keys: &Keys,
    mut f: impl FnMut(&mut RolloutRecord) -> Result<(), FleetError>,
) -> Result<RolloutRecord, FleetError> {
    for _ in 0..10 {
        let Some((mut rec, rev)) = get_rollout(etcd, keys).await? else {
            return Err(FleetError::Refused(
                "the group has no rollout: start one with `gpu-fleet rollout start REF`".into(),
            ));
        };
        f(&mut rec)?;
        rec.updated_at = now();
        if put_rollout_if(etcd, keys, &rec, rev).await? {
            return Ok(rec);
        }
    }
    Err(FleetError::Etcd(
        "the rollout record kept changing under this update; try again".into(),
    ))
}

/// The outcomes of `digest`, counted.
pub async fn outcome_counts(
    etcd: &Etcd,
    keys: &Keys,
    digest: &str,
) -> Result<OutcomeCounts, FleetError> {
    Ok(count_outcomes(outcomes(etcd, keys, digest).await?.values()))
}

pub fn count_outcomes<'a>(records: impl Iterator<Item = &'a OutcomeRecord>) -> OutcomeCounts {
    let mut c = OutcomeCounts::default();
    for rec in records {
        c.add(rec.outcome);
    }
    c
}

pub fn halt_record(counts: &OutcomeCounts, reason: &str) -> HaltRecord {
    HaltRecord {
        at: now(),
        failed: counts.rolled_back,
        tried: counts.tried(),
        reason: reason.to_string(),
    }
}

pub async fn outcomes(
    etcd: &Etcd,
    keys: &Keys,
    digest: &str,
) -> Result<BTreeMap<String, OutcomeRecord>, FleetError> {
    let r = etcd
        .get(keys.outcomes(digest), Some(GetOptions::new().with_prefix()))
        .await?;
    r.kvs()
        .iter()
        .map(|kv| {
            let host = Keys::leaf(&String::from_utf8_lossy(kv.key())).to_string();
            Ok((host, decode(kv.key(), kv.value())?))
        })
        .collect()
}

/// Halts `digest` for the group (and its rollout, if it is the group's).
pub async fn halt(
    etcd: &Etcd,
    keys: &Keys,
    digest: &str,
    counts: &OutcomeCounts,
    reason: &str,
) -> Result<(), FleetError> {
    let rec = halt_record(counts, reason);
    let key = keys.halted(digest);
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, encode(&rec), None)]);
    etcd.txn(txn).await?;
    let r = update_rollout(etcd, keys, |r| {
        if r.digest == digest && matches!(r.state, RolloutState::Rolling | RolloutState::Paused) {
            r.state = RolloutState::Halted;
            r.note = Some(reason.to_string());
            Ok(())
        } else {
            Err(FleetError::Refused(String::new()))
        }
    })
    .await;
    match r {
        Ok(_) | Err(FleetError::Refused(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Every live host's record.
pub async fn hosts(etcd: &Etcd, keys: &Keys) -> Result<Vec<HostRecord>, FleetError> {
    let r = etcd
        .get(keys.hosts(), Some(GetOptions::new().with_prefix()))
        .await?;
    r.kvs()
        .iter()
        .map(|kv| decode(kv.key(), kv.value()))
        .collect()
}

/// Marks the rollout complete when every live host runs its digest; returns
/// whether it is complete. `except`: a host that just verified (its record may lag).
pub async fn check_complete(
    etcd: &Etcd,
    keys: &Keys,
    except: Option<&str>,
) -> Result<bool, FleetError> {
    let Some((r, _)) = get_rollout(etcd, keys).await? else {
        return Ok(false);
    };
    if r.state == RolloutState::Complete {
        return Ok(true);
    }
    if r.state != RolloutState::Rolling {
        return Ok(false);
    }
    let hosts = hosts(etcd, keys).await?;
    let done = !hosts.is_empty()
        && hosts
            .iter()
            .all(|h| h.digest.as_deref() == Some(&r.digest) || Some(h.id.as_str()) == except);
    if !done {
        return Ok(false);
    }
    let digest = r.digest.clone();
    let res = update_rollout(etcd, keys, |rec| {
        if rec.digest == digest && rec.state == RolloutState::Rolling {
            rec.state = RolloutState::Complete;
            rec.note = Some(format!("all {} live hosts run it", hosts.len()));
            Ok(())
        } else {
            Err(FleetError::Refused(String::new()))
        }
    })
    .await;
    match res {
        Ok(_) => Ok(true),
        Err(FleetError::Refused(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Starts a rollout of `digest` (the previous digest: the last rollout's
/// desired one, else what most live hosts run).
pub async fn start_rollout(
    etcd: &Etcd,
    keys: &Keys,
    digest: &str,
    reference: &str,
) -> Result<RolloutRecord, FleetError> {
    for _ in 0..10 {
        let old = get_rollout(etcd, keys).await?;
        let previous = match &old {
            Some((r, _)) if r.digest == digest => r.previous.clone(),
            Some((r, _)) => r.desired().map(str::to_string),
            // The group's first rollout: what most hosts run, other than the
            // new digest (some may be on it already).
            None => majority_digest(&hosts(etcd, keys).await?, digest),
        };
        let rec = RolloutRecord {
            digest: digest.to_string(),
            reference: reference.to_string(),
            previous,
            state: RolloutState::Rolling,
            started_at: now(),
            updated_at: now(),
            note: None,
        };
        // A digest halted before starts afresh.
        etcd.delete(keys.halted(digest), None).await?;
        if put_rollout_if(etcd, keys, &rec, old.map_or(0, |o| o.1)).await? {
            return Ok(rec);
        }
    }
    Err(FleetError::Etcd(
        "the rollout record kept changing; try again".into(),
    ))
}

fn majority_digest(hosts: &[HostRecord], except: &str) -> Option<String> {
    let mut n: BTreeMap<&str, usize> = BTreeMap::new();
    for h in hosts {
        if let Some(d) = h.digest.as_ref().filter(|d| *d != except) {
            *n.entry(d).or_default() += 1;
        }
    }
    n.into_iter()
        .max_by_key(|(_, c)| *c)
        .map(|(d, _)| d.to_string())
}

pub async fn pause(etcd: &Etcd, keys: &Keys) -> Result<RolloutRecord, FleetError> {
    update_rollout(etcd, keys, |r| match r.state {
        RolloutState::Rolling | RolloutState::Paused => {
            r.state = RolloutState::Paused;
            r.note = Some("paused by an operator".into());
            Ok(())
        }
        s => Err(FleetError::Refused(format!(
            "the rollout of {} is {}: only a rolling one can be paused",
            r.digest,
            s.as_str()
        ))),
    })
    .await
}

/// Goes on after a pause or a halt (the digest's halt is lifted).
pub async fn resume(etcd: &Etcd, keys: &Keys) -> Result<RolloutRecord, FleetError> {
    let r = update_rollout(etcd, keys, |r| match r.state {
        RolloutState::Paused | RolloutState::Halted | RolloutState::Rolling => {
            r.state = RolloutState::Rolling;
            r.note = Some("resumed by an operator".into());
            Ok(())
        }
        s => Err(FleetError::Refused(format!(
            "the rollout of {} is {}: start a new one instead",
            r.digest,
            s.as_str()
        ))),
    })
    .await?;
    etcd.delete(keys.halted(&r.digest), None).await?;
    Ok(r)
}

/// Every host that moved goes back to the previous digest.
pub async fn abort(etcd: &Etcd, keys: &Keys) -> Result<RolloutRecord, FleetError> {
    update_rollout(etcd, keys, |r| {
        if r.previous.is_none() {
            return Err(FleetError::Refused(format!(
                "the rollout of {} has no previous digest to go back to",
                r.digest
            )));
        }
        match r.state {
            RolloutState::Aborted => {
                Err(FleetError::Refused("the rollout is already aborted".into()))
            }
            _ => {
                r.state = RolloutState::Aborted;
                r.note = Some("aborted by an operator".into());
                Ok(())
            }
        }
    })
    .await
}

/// Frees `host`'s slot (and canary seats it holds); `Ok(false)` if it held none.
pub async fn release(etcd: &Etcd, keys: &Keys, host: &str) -> Result<bool, FleetError> {
    let had = semaphore::release_host(etcd, keys, host).await?;
    // A canary that died before it verified would keep its seat, and the
    // other hosts would wait for it for ever.
    let seats = etcd
        .get(
            format!("{}canary/", keys.prefix()),
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    for kv in seats
        .kvs()
        .iter()
        .filter(|kv| kv.value() == host.as_bytes())
    {
        let host_verified = {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let digest = key.rsplit('/').nth(1).unwrap_or_default().to_string();
            etcd.get(keys.outcome(&digest, host), None).await?.count() > 0
        };
        if !host_verified {
            etcd.delete(kv.key().to_vec(), None).await?;
        }
    }
    Ok(had)
}

/// `gpu-fleet rollout status`.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutStatus {
    pub group: String,
    pub rollout: Option<RolloutRecord>,
    pub policy: Policy,
    pub hosts: u32,
    /// Live hosts on the rollout's digest.
    pub done: u32,
    /// Hosts holding a slot.
    pub in_progress: u32,
    /// Hosts that rolled back from the digest (host faults apart).
    pub failed: u32,
    pub host_faults: u32,
    /// Live hosts still to go: not on the digest, holding no slot, and not
    /// among those that tried it and failed (a host fault or a rollback:
    /// counted above), so done + in progress + waiting may be fewer than
    /// the live hosts.
    pub waiting: u32,
    pub halted: Option<HaltRecord>,
}

pub async fn status(etcd: &Etcd, keys: &Keys, group: &str) -> Result<RolloutStatus, FleetError> {
    check_complete(etcd, keys, None).await?;
    let rollout = get_rollout(etcd, keys).await?.map(|r| r.0);
    let policy = get_policy(etcd, keys).await?;
    let hosts = hosts(etcd, keys).await?;
    let slots = semaphore::entries(etcd, keys).await?;
    let holding: BTreeSet<&str> = slots
        .iter()
        .filter(|e| e.record.state == SlotState::Holding)
        .map(|e| e.record.host.as_str())
        .collect();
    let in_progress = holding.len() as u32;
    let (mut done, mut failed, mut host_faults, mut halted) = (0, 0, 0, None);
    let mut waiting = count_waiting(&hosts, None, &holding, &BTreeSet::new());
    if let Some(r) = &rollout {
        let target = r.desired().unwrap_or(&r.digest);
        done = hosts
            .iter()
            .filter(|h| h.digest.as_deref() == Some(target))
            .count() as u32;
        let all = outcomes(etcd, keys, &r.digest).await?;
        let c = count_outcomes(all.values());
        failed = c.rolled_back;
        host_faults = c.host_fault;
        let tried_and_failed: BTreeSet<&str> = all
            .iter()
            .filter(|(_, o)| o.outcome != OutcomeKind::Verified)
            .map(|(h, _)| h.as_str())
            .collect();
        waiting = count_waiting(&hosts, Some(target), &holding, &tried_and_failed);
        let h = etcd.get(keys.halted(&r.digest), None).await?;
        if let Some(kv) = h.kvs().first() {
            halted = Some(decode(kv.key(), kv.value())?);
        }
    }
    let n = hosts.len() as u32;
    Ok(RolloutStatus {
        group: group.to_string(),
        rollout,
        policy,
        hosts: n,
        done,
        in_progress,
        failed,
        host_faults,
        waiting,
        halted,
    })
}

/// The live hosts still to go: not on `target`, holding no slot, and not
/// among those that tried it and failed (counted as `failed`/`host_faults`).
fn count_waiting(
    hosts: &[HostRecord],
    target: Option<&str>,
    holding: &BTreeSet<&str>,
    failed: &BTreeSet<&str>,
) -> u32 {
    hosts
        .iter()
        .filter(|h| target.is_none() || h.digest.as_deref() != target)
        .filter(|h| !holding.contains(h.id.as_str()) && !failed.contains(h.id.as_str()))
        .count() as u32
}

/// One line of `gpu-fleet hosts`.
#[derive(Debug, Clone, Serialize)]
pub struct HostLine {
    pub id: String,
    pub live: bool,
    pub digest: Option<String>,
    pub phase: String,
    pub gpu: String,
    pub slot: Option<String>,
    pub last_event: Option<String>,
    pub seen: Option<i64>,
}

/// Live hosts, and dead ones that still hold a slot.
pub async fn host_lines(etcd: &Etcd, keys: &Keys) -> Result<Vec<HostLine>, FleetError> {
    let mut lines: BTreeMap<String, HostLine> = hosts(etcd, keys)
        .await?
        .into_iter()
        .map(|h| {
            (
                h.id.clone(),
                HostLine {
                    id: h.id,
                    live: true,
                    digest: h.digest,
                    phase: h.phase,
                    gpu: h.gpu,
                    slot: None,
                    last_event: h.last_event,
                    seen: Some(h.updated_at),
                },
            )
        })
        .collect();
    for e in semaphore::entries(etcd, keys).await? {
        let what = match e.record.state {
            SlotState::Holding => "holding",
            SlotState::Waiting => "queued",
        };
        let l = lines
            .entry(e.record.host.clone())
            .or_insert_with(|| HostLine {
                id: e.record.host.clone(),
                live: false,
                digest: None,
                phase: "gone".into(),
                gpu: "unknown".into(),
                slot: None,
                last_event: None,
                seen: None,
            });
        l.slot = Some(what.to_string());
    }
    Ok(lines.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(digest: Option<&str>) -> HostRecord {
        HostRecord {
            digest: digest.map(str::to_string),
            ..HostRecord::default()
        }
    }

    #[test]
    fn the_previous_digest_is_what_most_hosts_run_other_than_the_new_one() {
        let hosts = [on(Some("new")), on(Some("new")), on(Some("old")), on(None)];
        assert_eq!(majority_digest(&hosts, "new").as_deref(), Some("old"));
        assert_eq!(majority_digest(&hosts[..2], "new"), None);
        assert_eq!(majority_digest(&hosts, "other").as_deref(), Some("new"));
    }

    #[test]
    fn a_host_that_failed_or_holds_a_slot_is_not_waiting() {
        let host = |id: &str, digest: &str| HostRecord {
            id: id.into(),
            ..on(Some(digest))
        };
        let hosts = [
            host("done", "new"),
            host("failed", "old"),
            host("moving", "old"),
            host("queued", "old"),
        ];
        let holding = BTreeSet::from(["moving"]);
        let failed = BTreeSet::from(["failed"]);
        assert_eq!(count_waiting(&hosts, Some("new"), &holding, &failed), 1);
        // Before a rollout every host not moving waits for one.
        assert_eq!(count_waiting(&hosts, None, &holding, &BTreeSet::new()), 3);
    }
}
