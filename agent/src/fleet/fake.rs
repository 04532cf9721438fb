//! [`FakeGate`]: an in-memory fleet for unit tests of the update core. Gates
//! made from one [`FakeFleet`] share its slots, so a test can run several
//! hosts; the test sets the cap, halts, the desired digest and reachability,
//! and reads back outcomes and the most slots ever held.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::{Decision, FleetError, FleetGate, FleetView, HostReport, Outcome};

#[derive(Debug, Default)]
pub struct FakeState {
    pub cap: u32,
    pub holders: BTreeSet<String>,
    pub max_held: u32,
    pub halted: BTreeSet<String>,
    pub desired: Option<String>,
    pub unreachable: bool,
    pub outcomes: Vec<(String, String, Outcome)>,
    pub hosts: BTreeMap<String, HostReport>,
    /// How many times any gate asked for a slot (`decide`).
    pub decides: u32,
    /// Why each host's last `decide` said Wait or Halted (its view's `waiting`).
    pub waiting: BTreeMap<String, String>,
}

/// The shared side: one per simulated group.
#[derive(Clone, Default)]
pub struct FakeFleet {
    pub state: Arc<Mutex<FakeState>>,
    notify: Arc<Notify>,
}

impl FakeFleet {
    pub fn new(cap: u32) -> Self {
        let f = FakeFleet::default();
        f.state.lock().unwrap().cap = cap;
        f
    }
    pub fn gate(&self, host: &str) -> FakeGate {
        FakeGate {
            fleet: self.clone(),
            host: host.to_string(),
        }
    }
    /// Changes the state and wakes every gate.
    pub fn set(&self, f: impl FnOnce(&mut FakeState)) {
        f(&mut self.state.lock().unwrap());
        self.notify.notify_waiters();
    }
}

pub struct FakeGate {
    fleet: FakeFleet,
    host: String,
}

impl FakeGate {
    /// The decision, taking a slot when it says Go.
    fn decide_now(&self, digest: &str) -> Decision {
        let mut st = self.fleet.state.lock().unwrap();
        if st.unreachable {
            return Decision::Wait {
                why: "etcd not reachable".into(),
            };
        }
        if st.halted.contains(digest) {
            return Decision::Halted {
                why: format!("{digest} is halted"),
            };
        }
        if st.holders.contains(&self.host) || (st.holders.len() as u32) < st.cap {
            st.holders.insert(self.host.clone());
            st.max_held = st.max_held.max(st.holders.len() as u32);
            return Decision::Go {
                slot: st.holders.len() as u32 - 1,
            };
        }
        Decision::Wait {
            why: format!("{} slots held", st.holders.len()),
        }
    }
}

impl FleetGate for FakeGate {
    async fn decide(&self, digest: &str) -> Decision {
        let d = self.decide_now(digest);
        let mut st = self.fleet.state.lock().unwrap();
        st.decides += 1;
        match &d {
            Decision::Go { .. } => st.waiting.remove(&self.host),
            Decision::Wait { why } | Decision::Halted { why } => {
                st.waiting.insert(self.host.clone(), why.clone())
            }
        };
        d
    }

    async fn release(&self) -> Result<(), FleetError> {
        let mut st = self.fleet.state.lock().unwrap();
        if st.unreachable {
            return Err(FleetError::Unreachable {
                endpoints: "fake".into(),
                message: "unreachable".into(),
            });
        }
        st.holders.remove(&self.host);
        st.waiting.remove(&self.host);
        drop(st);
        self.fleet.notify.notify_waiters();
        Ok(())
    }

    async fn report_outcome(
        &self,
        digest: &str,
        outcome: Outcome,
        _detail: &str,
    ) -> Result<(), FleetError> {
        let mut st = self.fleet.state.lock().unwrap();
        st.outcomes
            .push((self.host.clone(), digest.to_string(), outcome));
        if outcome == Outcome::RolledBack {
            st.halted.insert(digest.to_string());
        }
        Ok(())
    }

    async fn report_host(&self, report: HostReport) {
        let mut st = self.fleet.state.lock().unwrap();
        st.hosts.insert(self.host.clone(), report);
    }

    fn desired(&self) -> Option<String> {
        self.fleet.state.lock().unwrap().desired.clone()
    }

    async fn changed(&self) {
        self.fleet.notify.notified().await
    }

    fn view(&self) -> FleetView {
        let st = self.fleet.state.lock().unwrap();
        FleetView {
            group: "fake".into(),
            etcd_reachable: !st.unreachable,
            slot: st.holders.contains(&self.host).then_some(0),
            desired: st.desired.clone(),
            waiting: st.waiting.get(&self.host).cloned(),
            ..FleetView::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fake_slots_cap_holders_and_halts() {
        let f = FakeFleet::new(1);
        let (a, b) = (f.gate("a"), f.gate("b"));
        assert!(matches!(a.decide("d1").await, Decision::Go { .. }));
        assert!(matches!(b.decide("d1").await, Decision::Wait { .. }));
        assert_eq!(b.view().waiting.as_deref(), Some("1 slots held"));
        assert_eq!(a.view().waiting, None);
        a.report_outcome("d1", Outcome::RolledBack, "x")
            .await
            .unwrap();
        a.release().await.unwrap();
        assert!(matches!(b.decide("d1").await, Decision::Halted { .. }));
        assert!(matches!(b.decide("d2").await, Decision::Go { .. }));
        assert_eq!(b.view().waiting, None, "a Go ends the wait");
        b.release().await.unwrap();
        assert!(matches!(b.decide("d1").await, Decision::Halted { .. }));
        b.release().await.unwrap();
        assert_eq!(b.view().waiting, None, "a release ends the wait");
        let st = f.state.lock().unwrap();
        assert_eq!((st.max_held, st.decides), (1, 5));
    }
}
