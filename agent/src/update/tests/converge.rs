use super::*;
#[tokio::test(start_paused = true)]
async fn an_update_interrupted_while_the_old_worker_runs_is_aborted() {
    // Before the swap stopped it; or a reboot brought it back.
    for step in [Phase::Pulling, Phase::Draining, Phase::Swapping] {
        let mut h = Harness::new(interrupted(V1, V2, step), "");
        h.fake.add_image(&image(V1));
        h.fake.add_image(&image(V2));
        let old = h.fake.add_container(W, V1, true);
        h.fake.add_container(NEXT, V2, false);
        h.up.reconcile().await.unwrap();
        assert_eq!(h.only_worker(V1).id, old, "{step:?}");
        h.never(&[
            format!("stop {old}"),
            format!("remove {old}"),
            format!("rename {old}"),
        ]);
        let s = h.saved();
        assert!(!s.is_bad(V2), "the next check tries it again");
        assert_eq!((s.pending, s.current_digest.as_deref()), (None, Some(V1)));
        let e = h.last();
        assert_eq!(
            (e.outcome, e.from.as_deref(), e.to.as_deref()),
            (Outcome::Aborted, Some(V1), Some(V2)),
            "{step:?}"
        );
        assert_eq!(h.up.phase(), Phase::Idle);
    }
}

#[tokio::test(start_paused = true)]
async fn an_aborted_swap_gives_the_old_worker_its_restart_policy_back() {
    // The agent died between setting the old worker's restart policy to `no`
    // and stopping it: the old worker still runs, and must come back after
    // the next dockerd restart or crash like before.
    let mut h = Harness::new(interrupted(V1, V2, Phase::Swapping), "");
    h.fake.add_image(&image(V1));
    let old = h.fake.add_container(W, V1, true);
    h.fake.add_container(NEXT, V2, false);
    h.fake.set_restart(&old, "no", None).await.unwrap();
    h.up.reconcile().await.unwrap();
    assert_eq!(h.only_worker(V1).id, old);
    assert_eq!(h.saved().pending, None);
    assert_eq!(
        h.fake.restart_policy(&old).as_deref(),
        Some("unless-stopped")
    );
}

#[tokio::test(start_paused = true)]
async fn an_interrupted_swap_whose_old_worker_was_stopped_goes_on() {
    let mut h = Harness::new(interrupted(V1, V2, Phase::Swapping), "");
    h.fake.add_image(&image(V1));
    h.fake.add_image(&image(V2));
    let old = h.fake.add_container(PREV, V1, false);
    h.fake.set_restart(&old, "no", None).await.unwrap();
    let new = h.fake.add_container(NEXT, V2, false);
    h.up.reconcile().await.unwrap();
    assert_eq!(h.only_worker(V2).id, new);
    h.in_order(&[format!("rename {new} {W}"), format!("start {new}")]);
    let s = h.saved();
    assert_eq!((s.current_digest.as_deref(), s.pending), (Some(V2), None));
    assert_eq!(h.last().outcome, Outcome::Success);
}

#[tokio::test(start_paused = true)]
async fn an_interrupted_verification_is_verified_and_committed() {
    let mut h = Harness::new(interrupted(V1, V2, Phase::Verifying), "");
    h.fake.add_image(&image(V1));
    h.fake.add_image(&image(V2));
    let old = h.fake.add_container(PREV, V1, false);
    h.fake.set_restart(&old, "no", None).await.unwrap();
    let new = h.fake.add_container(W, V2, true);
    h.fake.clear_calls();
    h.up.reconcile().await.unwrap();
    assert_eq!(h.only_worker(V2).id, new, "the new worker kept running");
    assert!(
        !h.fake
            .calls()
            .iter()
            .any(|c| c.starts_with("stop") || c.starts_with("start")),
        "{:#?}",
        h.fake.calls()
    );
    let s = h.saved();
    assert_eq!(s.current_digest.as_deref(), Some(V2));
    assert_eq!(s.last_good_digest.as_deref(), Some(V2));
    assert_eq!(s.previous_good, [V1]);
    assert_eq!(s.pending, None);
    assert_eq!(h.last().outcome, Outcome::Success);
}

#[tokio::test(start_paused = true)]
async fn an_interrupted_rollback_is_finished() {
    let mut state = interrupted(V1, V2, Phase::RollingBack);
    state.mark_bad(
        V2,
        "the new worker exited with code 3",
        OffsetDateTime::now_utc(),
    );
    let mut h = Harness::new(state, "");
    h.fake.add_image(&image(V1));
    h.fake.add_image(&image(V2));
    let old = h.fake.add_container(PREV, V1, false);
    h.fake.set_restart(&old, "no", None).await.unwrap();
    let new = h.fake.add_container(W, V2, true);
    h.fake.clear_calls();
    h.up.reconcile().await.unwrap();
    h.in_order(&[
        format!("stop {new}"),
        format!("remove {new}"),
        format!("rename {old} {W}"),
        format!("set_restart {old} unless-stopped"),
        format!("start {old}"),
    ]);
    let error = assert_rolled_back(
        &h,
        CheckOutcome::RolledBack {
            target: V2.into(),
            error: "the new worker exited with code 3".into(),
        },
        &old,
        true,
    );
    assert_eq!(h.last().error.as_deref(), Some(error.as_str()));
}

#[tokio::test(start_paused = true)]
async fn an_interrupted_rollback_whose_old_container_is_gone_recreates_it() {
    let mut h = Harness::new(interrupted(V1, V2, Phase::RollingBack), "");
    h.fake.add_image(&image(V1));
    h.fake.add_container(W, V2, true);
    h.up.reconcile().await.unwrap();
    let w = h.only_worker(V1);
    h.in_order(&[format!("create {W}"), format!("start {}", w.id)]);
    assert_eq!(h.saved().pending, None);
    assert_eq!(h.last().outcome, Outcome::RolledBack);
}

// --- reconcile: exactly one worker, on the right digest ---------------------

#[tokio::test(start_paused = true)]
async fn of_two_running_workers_the_second_is_stopped_and_removed() {
    let (mut h, old) = Harness::serving(V1, &[V2], "");
    let second = h.fake.add_container(NEXT, V2, true);
    h.up.reconcile().await.unwrap();
    assert_eq!(h.only_worker(V1).id, old);
    h.in_order(&[
        format!("set_restart {second} no"),
        format!("stop {second}"),
        format!("remove {second}"),
    ]);
    assert_eq!(h.saved().current_digest.as_deref(), Some(V1));
}

#[tokio::test(start_paused = true)]
async fn of_two_running_workers_neither_named_the_one_on_the_current_digest_is_kept() {
    let mut h = Harness::new(committed(V1), "");
    let other = h.fake.add_container(NEXT, V2, true);
    let keep = h.fake.add_container(PREV, V1, true);
    h.up.reconcile().await.unwrap();
    assert_eq!(h.only_worker(V1).id, keep);
    h.in_order(&[format!("stop {other}"), format!("rename {keep} {W}")]);
}

#[tokio::test(start_paused = true)]
async fn with_nothing_running_the_last_good_digest_is_created_and_started() {
    // A state rebuilt from the history knows the last good digest, not the current one.
    let mut h = Harness::new(
        State {
            last_good_digest: Some(V1.into()),
            ..State::default()
        },
        "",
    );
    h.up.reconcile().await.unwrap();
    let w = h.only_worker(V1);
    h.in_order(&[
        format!("pull {}", image(V1)),
        format!("create {W}"),
        format!("start {}", w.id),
    ]);
    assert_eq!(h.saved().current_digest.as_deref(), Some(V1));
    assert_eq!(h.up.phase(), Phase::Idle);
}

#[tokio::test(start_paused = true)]
async fn with_nothing_known_nothing_is_started() {
    let mut h = Harness::new(State::default(), "");
    h.up.reconcile().await.unwrap();
    assert_eq!(h.fake.containers(), []);
    assert!(!h.fake.calls().iter().any(|c| c.starts_with("create")));
}

#[tokio::test(start_paused = true)]
async fn a_stopped_worker_is_started_again_with_its_restart_policy() {
    let mut h = Harness::new(committed(V1), "");
    h.fake.add_image(&image(V1));
    let old = h.fake.add_container(W, V1, false);
    h.fake.set_restart(&old, "no", None).await.unwrap();
    h.up.reconcile().await.unwrap();
    assert_eq!(h.only_worker(V1).id, old);
    assert_eq!(
        h.fake.restart_policy(&old).as_deref(),
        Some("unless-stopped")
    );
}

#[tokio::test(start_paused = true)]
async fn a_stopped_worker_that_will_not_start_is_recreated() {
    let mut h = Harness::new(committed(V1), "");
    h.fake.add_image(&image(V1));
    let old = h.fake.add_container(W, V1, false);
    h.fake
        .fail_next("start", fake::call_err("start", &old, 500));
    h.up.reconcile().await.unwrap();
    let w = h.only_worker(V1);
    assert_ne!(w.id, old);
    h.in_order(&[
        format!("start {old} (failed)"),
        format!("remove {old}"),
        format!("create {W}"),
        format!("start {}", w.id),
    ]);
}

#[tokio::test(start_paused = true)]
async fn a_foreign_container_named_like_the_next_worker_is_never_removed() {
    let (mut h, old) = Harness::serving(V1, &[V2], "");
    let foreign = h.fake.add_foreign(NEXT, Some("other-agent"), false);
    let out = h.up.update_to(V2, Trigger::Cli).await.unwrap();
    // The name is taken, so the new container cannot be created: the update
    // fails before the old worker is touched, says what is in the way, and
    // the foreign one stays. It is not the image's fault: no strike.
    assert!(
        matches!(out, CheckOutcome::Failed(ref e) if e.contains("t-w-next") && e.contains("does not manage")),
        "{out:?}"
    );
    assert!(h.saved().strikes.is_empty(), "{:?}", h.saved().strikes);
    assert!(
        !h.fake
            .calls()
            .iter()
            .any(|c| c == &format!("remove {foreign}")),
        "{:#?}",
        h.fake.calls()
    );
    assert_eq!(h.fake.container(NEXT).unwrap().id, foreign);
    h.untouched(&old);
    assert_eq!(h.saved().current_digest.as_deref(), Some(V1));
}

#[tokio::test(start_paused = true)]
async fn an_update_to_the_running_digest_does_nothing() {
    let (mut h, old) = Harness::serving(V1, &[], "");
    let out = h.up.update_to(V1, Trigger::Cli).await.unwrap();
    assert_eq!(out, CheckOutcome::UpToDate);
    h.never(&["create".into(), "stop".into()]);
    h.untouched(&old);
    assert!(h.history().is_empty());
}

// ---- operator actions: drain, undrain, rollback, pin, unpin ----
