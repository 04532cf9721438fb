//! Slots: a counting semaphore on etcd that holds up under 1,000 contending
//! hosts.
//!
//! Every host that wants a slot has one key, `slots/<host>`, created once with
//! a transaction (`create_revision == 0`), so its etcd create revision is its
//! ticket: the queue is ordered by create revision, and the first `cap`
//! entries hold the slots. A waiting entry lives under the host's lease (a
//! dead waiter leaves the queue by itself); when the host takes its slot the
//! entry is rewritten without a lease (a put keeps the create revision, so
//! the host keeps its place), so a host that dies holding a slot keeps it
//! until it comes back and gives it back, or `gpu-fleet release` deletes it.
//!
//! Why this holds under contention: no key is fought over. Each host writes
//! only its own key; the ordering comes from etcd's revisions, not from a
//! compare-and-set retry loop. Entries ahead of a host only ever leave (new
//! ones queue behind), so once a host is among the first `cap` it stays
//! there: at most `cap` hosts ever hold (for a fixed `cap`). A waiting host
//! learns its place once (one range), then counts the deletions ahead of it
//! from a watch (`NoPut`, with the previous value, whose create revision says
//! whether it was ahead) and asks etcd again only when its count says it may
//! be its turn, so a freed slot costs one event per waiter and about one
//! request in all, not one request per waiter.

use etcd_client::{
    Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};

use super::keys::Keys;
use super::records::{decode, encode, now, SlotRecord, SlotState};
use super::{Etcd, FleetError};

/// A host's entry in the queue, as etcd has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub create_revision: i64,
    pub lease: i64,
    pub record: SlotRecord,
}

/// Where a host stands after [`SlotQueue::try_acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// It holds a slot; `rank` is its place in the queue (0-based).
    Holding { rank: u32 },
    /// Its turn came, but the digest was halted for the group meanwhile (the
    /// slot is taken in one transaction with "not halted").
    Halted,
    /// It waits behind `ahead` entries for `cap` slots; the etcd revision at
    /// which that was counted (watch from `revision + 1`).
    Waiting {
        create_revision: i64,
        ahead: u32,
        cap: u32,
        revision: i64,
    },
}

/// One host's side of the slot queue of a group.
#[derive(Clone)]
pub struct SlotQueue {
    etcd: Etcd,
    keys: Keys,
    host: String,
}

impl SlotQueue {
    pub fn new(etcd: Etcd, keys: Keys, host: String) -> Self {
        SlotQueue { etcd, keys, host }
    }

    /// This host's entry, if it has one.
    pub async fn own(&self) -> Result<Option<Entry>, FleetError> {
        let key = self.keys.slot(&self.host);
        let r = self.etcd.get(key.clone(), None).await?;
        match r.kvs().first() {
            None => Ok(None),
            Some(kv) => Ok(Some(Entry {
                create_revision: kv.create_revision(),
                lease: kv.lease(),
                record: decode(kv.key(), kv.value())?,
            })),
        }
    }

    /// Queues for a slot for `digest` under `lease` (or keeps the place it has),
    /// and takes the slot if the host is among the first `cap`. `known`: the
    /// create revision of this host's waiting entry for `digest` under `lease`,
    /// when the caller knows it (saves reading the entry again).
    pub async fn try_acquire(
        &self,
        digest: &str,
        lease: i64,
        cap: u32,
        known: Option<i64>,
    ) -> Result<Standing, FleetError> {
        let create_revision = match known {
            Some(cr) => cr,
            None => match self.place(digest, lease).await? {
                Ok(cr) => cr,
                Err(rank) => return Ok(Standing::Holding { rank }),
            },
        };
        let (ahead, revision) = self.ahead(create_revision, cap).await?;
        if ahead < cap {
            let rec = SlotRecord {
                host: self.host.clone(),
                digest: digest.to_string(),
                state: SlotState::Holding,
                since: now(),
                holding_since: Some(now()),
            };
            let not_halted =
                Compare::create_revision(self.keys.halted(digest), CompareOp::Equal, 0);
            if self
                .put_if_and(create_revision, &rec, None, Some(not_halted))
                .await?
            {
                return Ok(Standing::Holding { rank: ahead });
            }
            if self.etcd.get(self.keys.halted(digest), None).await?.count() > 0 {
                return Ok(Standing::Halted);
            }
            // The entry went (lease expired) between the two calls: queue again next time.
            return Err(FleetError::Etcd(
                "the slot queue entry expired while taking the slot; trying again".into(),
            ));
        }
        // Counted with a limit: learn the full count for the watch to work from.
        let (ahead, revision) = if ahead >= cap {
            self.ahead(create_revision, u32::MAX).await?
        } else {
            (ahead, revision)
        };
        Ok(Standing::Waiting {
            create_revision,
            ahead,
            cap,
            revision,
        })
    }

    /// This host's place in the queue: `Ok(create_revision)` of its waiting
    /// entry (queued now if it had none), or `Err(rank)` if it holds a slot.
    async fn place(&self, digest: &str, lease: i64) -> Result<Result<i64, u32>, FleetError> {
        let key = self.keys.slot(&self.host);
        if let Some(e) = self.own().await? {
            if e.record.state == SlotState::Holding {
                let (ahead, _) = self.ahead(e.create_revision, u32::MAX).await?;
                return Ok(Err(ahead));
            }
            if e.lease == lease && e.record.digest == digest {
                return Ok(Ok(e.create_revision));
            }
            // Same place, this session's lease and the digest it now wants.
            let rec = SlotRecord {
                digest: digest.to_string(),
                ..e.record.clone()
            };
            if self.put_if(e.create_revision, &rec, Some(lease)).await? {
                return Ok(Ok(e.create_revision));
            }
        }
        Ok(Ok(self.enqueue(&key, digest, lease).await?))
    }

    async fn enqueue(&self, key: &str, digest: &str, lease: i64) -> Result<i64, FleetError> {
        let rec = SlotRecord {
            host: self.host.clone(),
            digest: digest.to_string(),
            state: SlotState::Waiting,
            since: now(),
            holding_since: None,
        };
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                encode(&rec),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let r = self.etcd.txn(txn).await?;
        if r.succeeded() {
            // The put's revision is the entry's create revision.
            return Ok(r.header().map_or(0, |h| h.revision()));
        }
        for op in r.op_responses() {
            if let TxnOpResponse::Get(g) = op {
                if let Some(kv) = g.kvs().first() {
                    return Ok(kv.create_revision());
                }
            }
        }
        Err(FleetError::Etcd(
            "queueing for a slot: no entry after the transaction".into(),
        ))
    }

    /// Rewrites the entry if it is still the one created at `create_revision`.
    async fn put_if(
        &self,
        create_revision: i64,
        rec: &SlotRecord,
        lease: Option<i64>,
    ) -> Result<bool, FleetError> {
        self.put_if_and(create_revision, rec, lease, None).await
    }

    async fn put_if_and(
        &self,
        create_revision: i64,
        rec: &SlotRecord,
        lease: Option<i64>,
        and: Option<Compare>,
    ) -> Result<bool, FleetError> {
        let key = self.keys.slot(&self.host);
        let opts = lease.map(|l| PutOptions::new().with_lease(l));
        let mut when = vec![Compare::create_revision(
            key.clone(),
            CompareOp::Equal,
            create_revision,
        )];
        when.extend(and);
        let txn = Txn::new()
            .when(when)
            .and_then([TxnOp::put(key, encode(rec), opts)]);
        Ok(self.etcd.txn(txn).await?.succeeded())
    }

    /// How many entries were created before `create_revision` (at most
    /// `limit`), and the revision of that count.
    pub async fn ahead(&self, create_revision: i64, limit: u32) -> Result<(u32, i64), FleetError> {
        let mut opts = GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_max_create_revision(create_revision - 1)
            .with_sort(SortTarget::Create, SortOrder::Ascend);
        if limit != u32::MAX {
            opts = opts.with_limit(i64::from(limit));
        }
        let r = self.etcd.get(self.keys.slots(), Some(opts)).await?;
        let n = r
            .kvs()
            .iter()
            .filter(|kv| kv.create_revision() < create_revision)
            .count() as u32;
        Ok((n, r.header().map_or(0, |h| h.revision())))
    }

    /// Gives the slot back, or leaves the queue.
    pub async fn release(&self) -> Result<bool, FleetError> {
        release_host(&self.etcd, &self.keys, &self.host).await
    }
}

/// Deletes `host`'s queue entry (its slot, if it held one); `Ok(false)` when
/// it had none. `gpu-fleet release` and a host's own release both end here.
pub async fn release_host(etcd: &Etcd, keys: &Keys, host: &str) -> Result<bool, FleetError> {
    let r = etcd.delete(keys.slot(host), None).await?;
    Ok(r.deleted() > 0)
}

/// Every entry of the queue, in queue order.
pub async fn entries(etcd: &Etcd, keys: &Keys) -> Result<Vec<Entry>, FleetError> {
    let r = etcd
        .get(
            keys.slots(),
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Create, SortOrder::Ascend),
            ),
        )
        .await?;
    r.kvs()
        .iter()
        .map(|kv| {
            Ok(Entry {
                create_revision: kv.create_revision(),
                lease: kv.lease(),
                record: decode(kv.key(), kv.value())?,
            })
        })
        .collect()
}
