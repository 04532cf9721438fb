use super::*;
#[tokio::test(start_paused = true)]
async fn a_maintenance_drain_stops_the_worker_for_good_and_holds_updates() {
    let (mut h, id) = Harness::serving(V1, &[V2], "");
    let out =
        h.up.drain_for_maintenance(Some("kernel upgrade".into()), None)
            .await
            .unwrap();
    assert_eq!(out, CheckOutcome::Drained);
    h.in_order(&[format!("set_restart {id} no"), format!("stop {id}")]);
    assert!(h.fake.running().is_empty(), "the worker is stopped");
    assert_eq!(
        h.fake.restart_policy(&id).as_deref(),
        Some("no"),
        "neither dockerd nor a reboot brings it back"
    );
    let s = h.saved();
    assert!(s.drained && s.drain_complete);
    assert_eq!(s.drain_reason.as_deref(), Some("kernel upgrade"));
    assert!(s.drained_at.is_some());
    let e = h.last();
    assert_eq!(
        (e.kind, e.outcome, e.from.as_deref(), e.reason.as_deref()),
        (
            Kind::Drain,
            Outcome::Success,
            Some(V1),
            Some("kernel upgrade")
        )
    );
    assert_eq!(h.up.phase(), Phase::Drained);
    // Checks are held, and the reconcile before each leaves the worker stopped.
    assert_eq!(
        h.up.check(Trigger::Poll).await.unwrap(),
        CheckOutcome::Held("drained")
    );
    h.up.reconcile().await.unwrap();
    assert!(h.fake.running().is_empty());
    assert_eq!(h.up.phase(), Phase::Drained);
}

#[tokio::test(start_paused = true)]
async fn a_drain_a_restart_interrupted_is_finished_by_the_next_start() {
    let mut state = committed(V1);
    state.drained = true;
    state.drain_reason = Some("rack move".into());
    let h = Harness::new(state, "");
    h.fake.add_image(&image(V1));
    let id = h.fake.add_container(W, V1, true);
    let mut h = h;
    h.up.reconcile().await.unwrap();
    assert!(h.fake.running().is_empty(), "the drain was finished");
    assert_eq!(h.fake.restart_policy(&id).as_deref(), Some("no"));
    let s = h.saved();
    assert!(s.drained && s.drain_complete);
    assert_eq!(
        (h.last().kind, h.last().trigger),
        (Kind::Drain, Trigger::Startup)
    );
}

#[tokio::test(start_paused = true)]
async fn a_worker_started_by_hand_while_drained_is_left_running() {
    let mut state = committed(V1);
    state.drained = true;
    state.drain_complete = true;
    let h = Harness::new(state, "");
    h.fake.add_image(&image(V1));
    h.fake.add_container(W, V1, true);
    let mut h = h;
    h.up.reconcile().await.unwrap();
    h.only_worker(V1);
    assert_eq!(h.up.phase(), Phase::Drained);
}

#[tokio::test(start_paused = true)]
async fn undrain_starts_the_worker_with_its_restart_policy_behind_the_health_gate() {
    let (mut h, id) = Harness::serving(V1, &[], "");
    h.up.drain_for_maintenance(None, None).await.unwrap();
    h.fake.clear_calls();
    let out = h.up.undrain().await.unwrap();
    assert_eq!(out, CheckOutcome::Undrained);
    let c = h.only_worker(V1);
    assert_eq!(c.id, id, "the same container is started again");
    h.in_order(&[
        format!("set_restart {id} unless-stopped"),
        format!("start {id}"),
        format!("inspect {W}"),
    ]);
    let s = h.saved();
    assert!(!s.drained && !s.drain_complete && s.drain_reason.is_none());
    assert_eq!(
        (h.last().kind, h.last().outcome),
        (Kind::Undrain, Outcome::Success)
    );
    assert_eq!(h.up.phase(), Phase::Idle);
}

#[tokio::test(start_paused = true)]
async fn undrain_of_a_worker_that_will_not_come_up_fails_and_says_so() {
    let (mut h, _) = Harness::serving(V1, &[], "");
    h.up.drain_for_maintenance(None, None).await.unwrap();
    h.fake.on_start(V1, OnStart::Exits(3));
    let out = h.up.undrain().await.unwrap();
    let CheckOutcome::Failed(msg) = out else {
        panic!("{out:?}")
    };
    assert!(
        msg.contains("health gate") && msg.contains("code 3"),
        "{msg}"
    );
    assert_eq!(
        (h.last().kind, h.last().outcome),
        (Kind::Undrain, Outcome::Failed)
    );
    assert!(
        !h.saved().drained,
        "updates resume; status shows the failure"
    );
    assert_eq!(h.up.phase(), Phase::Failed);
}

#[tokio::test(start_paused = true)]
async fn an_operator_rollback_goes_back_one_good_digest_and_marks_the_one_left_bad() {
    let (mut h, _) = Harness::serving(V1, &[V0, V2], "");
    assert_eq!(
        h.up.update_to(V2, Trigger::Poll).await.unwrap(),
        CheckOutcome::Updated(V2.into())
    );
    let out = h.up.rollback_to_previous().await.unwrap();
    assert_eq!(out, CheckOutcome::Updated(V1.into()));
    h.only_worker(V1);
    let s = h.saved();
    assert_eq!(s.current_digest.as_deref(), Some(V1));
    assert_eq!(s.last_good_digest.as_deref(), Some(V1));
    assert!(s.is_bad(V2), "{s:?}");
    assert!(
        !s.previous_good.contains(&V2.to_string()),
        "a bad digest is no rollback target: {s:?}"
    );
    let e = h.last();
    assert_eq!(
        (e.kind, e.outcome, e.from.as_deref(), e.to.as_deref()),
        (Kind::Rollback, Outcome::Success, Some(V2), Some(V1))
    );
    // Polling does not bring the digest back.
    assert!(s.is_bad(V2));
    // Nothing earlier is good: a second rollback has nowhere to go.
    let again = h.up.rollback_to_previous().await.unwrap();
    assert!(
        matches!(&again, CheckOutcome::Failed(m) if m.contains("no earlier good digest")),
        "{again:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_pin_deploys_the_digest_clears_its_bad_mark_and_holds_checks() {
    let mut state = committed(V1);
    state.mark_bad(V2, "rolled back earlier", OffsetDateTime::now_utc());
    let mut h = Harness::new(state, "");
    h.fake.add_image(&image(V1));
    h.fake.add_image(&image(V2));
    h.fake.add_container(W, V1, true);
    let out = h.up.pin(V2).await.unwrap();
    assert_eq!(out, CheckOutcome::Updated(V2.into()));
    h.only_worker(V2);
    let s = h.saved();
    assert!(!s.is_bad(V2), "an operator's pin clears the mark");
    assert_eq!(
        (s.pinned.as_deref(), s.pinned_digest.as_deref()),
        (Some(V2), Some(V2))
    );
    assert_eq!(
        (h.last().kind, h.last().outcome),
        (Kind::Pin, Outcome::Success)
    );
    assert_eq!(
        h.up.check(Trigger::Poll).await.unwrap(),
        CheckOutcome::Held("pinned")
    );
    // Pinning what already runs only records the pin.
    h.fake.clear_calls();
    assert_eq!(h.up.pin(V2).await.unwrap(), CheckOutcome::UpToDate);
    h.never(&["stop".into(), "create".into()]);
    assert_eq!(h.up.unpin().unwrap(), CheckOutcome::Unpinned);
    let s = h.saved();
    assert_eq!((s.pinned, s.pinned_digest), (None, None));
    let e = h.last();
    assert_eq!((e.kind, e.from.as_deref()), (Kind::Unpin, Some(V2)));
}

#[tokio::test(start_paused = true)]
async fn a_pin_whose_digest_fails_is_rolled_back_and_not_held() {
    let (mut h, _) = Harness::serving(V1, &[V2], "");
    h.fake.on_start(V2, OnStart::Exits(1));
    let out = h.up.pin(V2).await.unwrap();
    assert!(matches!(out, CheckOutcome::RolledBack { .. }), "{out:?}");
    h.only_worker(V1);
    let s = h.saved();
    assert_eq!(s.pinned, None);
    assert_eq!(
        (h.last().kind, h.last().outcome),
        (Kind::Pin, Outcome::RolledBack)
    );
}
