//! The fleet group's slot in the update (`fleet_slot.rs`), against
//! [`FakeFleet`]: a host waits for a slot with its old worker untouched, takes
//! one before the drain, reports how the swap ended and gives the slot back;
//! a group's rollout names the digest.

use super::*;
use crate::fleet::fake::FakeFleet;
use crate::fleet::Outcome as FleetOutcome;

fn grouped(h: &mut Harness, fleet: &FakeFleet, host: &str) {
    h.up.set_fleet(Arc::new(fleet.gate(host)));
}

#[tokio::test(start_paused = true)]
async fn with_every_slot_held_the_update_waits_and_the_old_worker_is_untouched() {
    let (mut h, old) = Harness::serving(V1, &[V2], "");
    let fleet = FakeFleet::new(1);
    grouped(&mut h, &fleet, "me");
    fleet.set(|s| {
        s.holders.insert("other".into());
    });
    let before = h.history().len();
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    let CheckOutcome::Deferred(why) = out else {
        panic!("expected to wait, got {out:?}");
    };
    assert!(why.contains("waiting for the fleet"), "{why}");
    h.untouched(&old);
    h.only_worker(V1);
    assert_eq!(h.saved().pending, None, "nothing left in progress");
    assert_eq!(h.history().len(), before, "a wait writes no history line");
    assert_eq!(h.up.phase(), Phase::Idle);

    // The slot frees: the same update goes through, reports, and gives it back.
    fleet.set(|s| {
        s.holders.clear();
    });
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    assert_eq!(out, CheckOutcome::Updated(V2.into()));
    let st = fleet.state.lock().unwrap();
    assert_eq!(
        st.outcomes,
        [("me".to_string(), V2.to_string(), FleetOutcome::Verified)]
    );
    assert!(st.holders.is_empty(), "the slot was given back");
    assert_eq!(st.max_held, 1);
}

#[tokio::test(start_paused = true)]
async fn a_rollback_counts_against_the_digest_and_gives_the_slot_back() {
    let (mut h, old) = Harness::serving(V1, &[V2], "");
    h.fake.on_start(V2, OnStart::Exits(3));
    let fleet = FakeFleet::new(1);
    grouped(&mut h, &fleet, "me");
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    assert_rolled_back(&h, out, &old, true);
    let st = fleet.state.lock().unwrap();
    assert_eq!(
        st.outcomes,
        [("me".to_string(), V2.to_string(), FleetOutcome::RolledBack)]
    );
    assert!(st.holders.is_empty(), "the slot was given back");
    assert!(st.halted.contains(V2), "the fake halts on a rollback");
}

#[tokio::test(start_paused = true)]
async fn a_halted_digest_is_not_tried_and_not_marked_bad_here() {
    let (mut h, old) = Harness::serving(V1, &[V2], "");
    let fleet = FakeFleet::new(2);
    grouped(&mut h, &fleet, "me");
    fleet.set(|s| {
        s.halted.insert(V2.into());
    });
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    let CheckOutcome::Deferred(why) = out else {
        panic!("expected to wait, got {out:?}");
    };
    assert!(why.contains("halted"), "{why}");
    h.untouched(&old);
    assert!(
        !h.saved().is_bad(V2),
        "an operator's resume may let it go on"
    );
}

#[tokio::test(start_paused = true)]
async fn etcd_away_means_no_update_starts() {
    let (mut h, old) = Harness::serving(V1, &[V2], "");
    let fleet = FakeFleet::new(2);
    grouped(&mut h, &fleet, "me");
    fleet.set(|s| s.unreachable = true);
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    assert!(
        matches!(&out, CheckOutcome::Deferred(w) if w.contains("etcd not reachable")),
        "{out:?}"
    );
    h.untouched(&old);
    h.never(&[format!("stop {old}")]);
}

#[tokio::test(start_paused = true)]
async fn the_first_deploy_disrupts_nothing_and_takes_no_slot() {
    let mut h = Harness::new(State::default(), "");
    h.fake.add_image(&image(V2));
    let fleet = FakeFleet::new(1);
    grouped(&mut h, &fleet, "me");
    fleet.set(|s| {
        s.holders.insert("other".into());
    });
    let out = h.up.update_to(V2, Trigger::Startup).await.unwrap();
    assert_eq!(out, CheckOutcome::Updated(V2.into()));
    h.only_worker(V2);
}

#[tokio::test(start_paused = true)]
async fn the_groups_rollout_names_the_digest_over_the_registry() {
    let (mut h, _old) = Harness::serving(V1, &[V0, V2], "");
    h.registry.tag("stable", V0);
    let fleet = FakeFleet::new(1);
    grouped(&mut h, &fleet, "me");
    fleet.set(|s| s.desired = Some(V2.into()));
    let out = h.up.check(Trigger::Poll).await.unwrap();
    assert_eq!(out, CheckOutcome::Updated(V2.into()));
    assert_eq!(h.last().trigger, Trigger::Fleet);
    // Without a rollout, the registry's tag is followed again.
    fleet.set(|s| s.desired = None);
    let out = h.up.check(Trigger::Poll).await.unwrap();
    assert_eq!(out, CheckOutcome::Updated(V0.into()));
}

#[tokio::test(start_paused = true)]
async fn a_slot_left_held_with_nothing_in_progress_is_given_back_at_the_next_check() {
    let (mut h, _old) = Harness::serving(V1, &[], "");
    h.registry.tag("stable", V1);
    let fleet = FakeFleet::new(1);
    grouped(&mut h, &fleet, "me");
    fleet.set(|s| {
        s.holders.insert("me".into());
    });
    let out = h.up.check(Trigger::Poll).await.unwrap();
    assert_eq!(out, CheckOutcome::UpToDate);
    assert!(fleet.state.lock().unwrap().holders.is_empty());
}
