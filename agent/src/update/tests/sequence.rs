use super::*;
#[tokio::test(start_paused = true)]
async fn an_update_stops_the_old_worker_before_starting_the_new_one_and_commits() {
    let (mut h, old) = Harness::serving(V1, &[V0, V2], "[worker.health]\nstable_for = \"100ms\"");
    let out = h.up.update_to(V2, Trigger::Cli).await.unwrap();
    assert_eq!(out, CheckOutcome::Updated(V2.into()));
    let new = h.only_worker(V2);
    assert_ne!(
        new.id, old,
        "the old container was removed after the commit"
    );
    h.in_order(&[
        format!("create {NEXT}"),
        format!("set_restart {old} no"),
        format!("stop {old}"),
        format!("rename {old} {PREV}"),
        format!("rename {} {W}", new.id),
        format!("start {}", new.id),
        format!("remove {old}"),
    ]);
    let started = h.fake.position(&format!("start {}", new.id)).unwrap();
    let looks = h.fake.calls()[started..]
        .iter()
        .filter(|c| **c == format!("inspect {W}"))
        .count();
    assert!(looks >= 2, "stable_for is watched over more than one look");
    let s = h.saved();
    assert_eq!(s.current_digest.as_deref(), Some(V2));
    assert_eq!(s.last_good_digest.as_deref(), Some(V2));
    assert_eq!(s.previous_good, [V1]);
    assert_eq!(s.pending, None);
    let e = h.last();
    assert_eq!(
        (e.outcome, e.from.as_deref(), e.to.as_deref(), e.trigger),
        (Outcome::Success, Some(V1), Some(V2), Trigger::Cli)
    );
    assert!(e.downtime_ms.is_some(), "{e:?}");
    assert_eq!(h.up.phase(), Phase::Idle);
    // The last two good images stay; older ones of the repository go.
    assert_eq!(
        h.fake.images(),
        std::collections::BTreeSet::from([image(V1), image(V2)])
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_worker_that_exits_is_rolled_back_and_marked_bad() {
    let (mut h, old) = Harness::serving(V1, &[V2], "");
    h.fake.on_start(V2, OnStart::Exits(3));
    h.fake
        .set_logs(V2, "loading model\nCUDA error: out of memory");
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    let error = assert_rolled_back(&h, out, &old, true);
    assert!(error.contains("exited with code 3"), "{error}");
    assert!(error.contains("CUDA error: out of memory"), "{error}");
    assert!(h.saved().bad_digests[0].reason.contains("code 3"));
}

#[tokio::test(start_paused = true)]
async fn a_new_worker_whose_healthcheck_says_unhealthy_is_rolled_back_and_marked_bad() {
    let (mut h, old) = Harness::serving(V1, &[V2], "");
    h.fake.on_start(V2, OnStart::Runs(HealthState::Unhealthy));
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    let error = assert_rolled_back(&h, out, &old, true);
    assert!(error.contains("unhealthy"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn a_new_worker_never_healthy_within_the_timeout_is_rolled_back_and_marked_bad() {
    let (mut h, old) = Harness::serving(V1, &[V2], "");
    h.fake.on_start(V2, OnStart::Runs(HealthState::Starting));
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    let error = assert_rolled_back(&h, out, &old, true);
    assert!(error.contains("not healthy within 200ms"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn a_new_worker_the_engine_keeps_restarting_is_rolled_back_and_marked_bad() {
    // Restarts show over time: the worker must stay up a while to pass.
    let (mut h, old) = Harness::serving(V1, &[V2], "[worker.health]\nstable_for = \"100ms\"");
    h.fake.on_start(V2, OnStart::CrashLoops);
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    let error = assert_rolled_back(&h, out, &old, true);
    assert!(error.contains("restarted"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn an_engine_unreachable_through_verification_rolls_back_without_blaming_the_image() {
    let (mut h, old) = Harness::serving(V1, &[V2], "");
    h.fake
        .fail_while_running("inspect", V2, fake::unreachable());
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    let error = assert_rolled_back(&h, out, &old, false);
    assert!(error.contains("could not verify"), "{error}");
    assert!(
        h.up.state.strikes.is_empty(),
        "no strike either: {:?}",
        h.up.state.strikes
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_worker_found_dead_after_the_engine_was_away_is_not_blamed() {
    // An engine that restarts takes its containers down with it.
    let (mut h, old) = Harness::serving(V1, &[V2], "");
    h.fake.on_start(V2, OnStart::Exits(137));
    h.fake
        .before_next("start", |f| f.fail_next("inspect", fake::unreachable()));
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    let error = assert_rolled_back(&h, out, &old, false);
    assert!(error.contains("code 137"), "{error}");
    assert!(h.up.state.strikes.is_empty(), "{:?}", h.up.state.strikes);
}

#[tokio::test(start_paused = true)]
async fn a_swap_the_engine_drops_does_not_count_against_the_image() {
    let (mut h, old) = Harness::serving(V1, &[V2], "");
    h.fake.fail_next("stop", fake::unreachable());
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    assert_rolled_back(&h, out, &old, false);
    assert!(h.up.state.strikes.is_empty(), "{:?}", h.up.state.strikes);
}

#[tokio::test(start_paused = true)]
async fn a_new_worker_the_engine_will_not_start_counts_a_strike_only() {
    let (mut h, old) = Harness::serving(V1, &[V2], "");
    h.fake
        .fail_next("start", fake::call_err("start", "the new worker", 500));
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    let error = assert_rolled_back(&h, out, &old, false);
    assert!(error.contains("status 500"), "{error}");
    assert_eq!(h.up.state.strikes.get(V2), Some(&1));
}

#[tokio::test(start_paused = true)]
async fn an_engine_without_gpu_support_is_one_clear_error_not_a_rollback_loop() {
    // The settings ask for GPUs ("none" in the harness: override).
    let (mut h, old) = Harness::serving(V1, &[V2], "[worker]\ngpus = \"all\"\n");
    h.fake.fail_next(
        "start",
        EngineError::GpuUnavailable {
            target: "t-w".into(),
            message: "could not select device driver \"\" with capabilities: [[gpu]]".into(),
        },
    );
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    let error = assert_rolled_back(&h, out, &old, false);
    assert!(error.contains("NVIDIA Container Toolkit"), "{error}");
    assert_eq!(h.up.state.strikes.get(V2), None, "the image is not blamed");
    // The next polls do not stop the old worker again for nothing.
    h.fake.clear_calls();
    for _ in 0..3 {
        let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
        assert!(
            matches!(&out, CheckOutcome::Failed(m) if m.contains("agentctl check")),
            "{out:?}"
        );
    }
    h.never(&["create".into(), "stop".into()]);
    h.only_worker(V1);
    // An operator asks again once the engine is fixed: it goes through.
    assert_eq!(
        h.up.update_to(V2, Trigger::Cli).await.unwrap(),
        CheckOutcome::Updated(V2.into())
    );
}

#[tokio::test(start_paused = true)]
async fn an_old_worker_that_fails_after_the_rollback_leaves_the_agent_failed() {
    let (mut h, old) = Harness::serving(V1, &[V2], "");
    h.fake.on_start(V2, OnStart::Exits(3));
    h.fake.on_start(V1, OnStart::Exits(4));
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    let CheckOutcome::Failed(error) = out else {
        panic!("expected a failure, got {out:?}");
    };
    assert!(
        error.contains("code 3") && error.contains("code 4"),
        "{error}"
    );
    let c = h.fake.container(W).unwrap();
    assert_eq!((c.id, c.running), (old, false));
    let s = h.saved();
    assert!(s.is_bad(V2) && !s.is_bad(V1), "{:?}", s.bad_digests);
    assert_eq!(s.pending, None);
    assert_eq!(h.last().outcome, Outcome::Failed);
    assert_eq!(h.up.phase(), Phase::Failed);
}

#[tokio::test(start_paused = true)]
async fn a_rollback_the_engine_interrupts_is_finished_by_the_next_reconcile() {
    let (mut h, old) = Harness::serving(V1, &[V2], "");
    h.fake.on_start(V2, OnStart::Exits(3));
    // The engine goes away just as the rollback begins.
    h.fake.before_next("logs_tail", |f| {
        f.fail_next("list_managed", fake::unreachable())
    });
    let e = h.up.update_to(V2, Trigger::Poll).await.unwrap_err();
    assert!(
        matches!(&e, UpdateError::Engine(e) if e.is_engine_down()),
        "{e}"
    );
    let s = h.saved();
    let p = s.pending.as_ref().expect("the rollback is in the journal");
    assert_eq!(p.step, Phase::RollingBack);
    assert!(s.is_bad(V2), "the bad mark was saved with the step");
    h.up.reconcile().await.unwrap();
    let error = assert_rolled_back(
        &h,
        CheckOutcome::RolledBack {
            target: V2.into(),
            error: p.error.clone().unwrap(),
        },
        &old,
        true,
    );
    assert!(error.contains("code 3"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn a_reconcile_the_engine_refuses_keeps_the_pending_update() {
    let mut h = Harness::new(interrupted(V1, V2, Phase::Verifying), "");
    h.fake.add_container(PREV, V1, false);
    let new = h.fake.add_container(W, V2, true);
    h.fake.fail_next("list_managed", fake::unreachable());
    assert!(h.up.reconcile().await.is_err());
    assert_eq!(
        h.saved().pending.map(|p| p.step),
        Some(Phase::Verifying),
        "still in the journal"
    );
    h.up.reconcile().await.unwrap();
    assert_eq!(h.only_worker(V2).id, new);
    assert_eq!(h.saved().pending, None);
}

// --- preparing: pulls and creates, the old worker untouched -----------------

#[tokio::test(start_paused = true)]
async fn a_create_refused_three_times_marks_the_digest_bad_at_the_third() {
    let (mut h, old) = Harness::serving(V1, &[V2], "");
    h.fake
        .fail_times("create", 3, fake::call_err("create", NEXT, 400));
    for attempt in 1..=3 {
        let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
        assert!(matches!(out, CheckOutcome::Failed(_)), "{out:?}");
        assert_eq!(h.saved().is_bad(V2), attempt == 3, "attempt {attempt}");
        assert_eq!(h.only_worker(V1).id, old);
        assert_eq!(h.last().outcome, Outcome::Failed);
        assert_eq!(h.saved().pending, None);
    }
    h.untouched(&old);
    assert!(h.saved().bad_digests[0].reason.ends_with("(3 times)"));
    assert_eq!(h.up.phase(), Phase::Idle);
}

#[tokio::test(start_paused = true)]
async fn a_transient_pull_failure_never_counts() {
    let (mut h, old) = Harness::serving(V1, &[], "");
    h.fake.fail_times(
        "pull",
        5,
        fake::pull_err("toomanyrequests: You have reached your pull rate limit"),
    );
    for attempt in 1..=5 {
        let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
        assert!(matches!(out, CheckOutcome::Failed(_)), "{out:?}");
        assert!(!h.saved().is_bad(V2), "attempt {attempt}");
    }
    assert!(h.up.state.strikes.is_empty(), "{:?}", h.up.state.strikes);
    h.untouched(&old);
    // The limit lifts: the update goes through.
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    assert_eq!(out, CheckOutcome::Updated(V2.into()));
    assert!(h.fake.position(&format!("pull {}", image(V2))).is_some());
}

#[tokio::test(start_paused = true)]
async fn a_permanent_pull_failure_marks_the_digest_bad_at_the_third() {
    let (mut h, old) = Harness::serving(V1, &[], "");
    let unknown = || fake::pull_err("manifest unknown: manifest unknown");
    h.fake.fail_next("pull", unknown());
    h.fake.fail_next("pull", fake::pull_err("toomanyrequests"));
    h.fake.fail_times("pull", 2, unknown());
    for (attempt, bad) in [(1, false), (2, false), (3, false), (4, true)] {
        let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
        assert!(matches!(out, CheckOutcome::Failed(_)), "{out:?}");
        assert_eq!(h.saved().is_bad(V2), bad, "attempt {attempt}");
    }
    h.untouched(&old);
    assert_eq!(h.only_worker(V1).id, old);
    assert!(h.saved().bad_digests[0].reason.contains("manifest unknown"));
}

#[tokio::test(start_paused = true)]
async fn an_image_that_vanishes_before_create_is_pulled_again() {
    let (mut h, _) = Harness::serving(V1, &[V2], "");
    h.fake.before_next("create", |f| f.remove_image(&image(V2)));
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    assert_eq!(out, CheckOutcome::Updated(V2.into()));
    h.in_order(&[
        format!("create {NEXT} (failed)"),
        format!("pull {}", image(V2)),
        format!("create {NEXT}"),
    ]);
    assert!(h.up.state.strikes.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_first_deploy_that_fails_leaves_no_worker_and_marks_the_digest_bad() {
    let mut h = Harness::new(State::default(), "");
    h.fake.add_image(&image(V2));
    h.fake.on_start(V2, OnStart::Exits(1));
    let out = h.up.update_to(V2, Trigger::Startup).await.unwrap();
    assert!(
        matches!(&out, CheckOutcome::Failed(e) if e.contains("code 1")),
        "{out:?}"
    );
    assert_eq!(h.fake.containers(), []);
    let s = h.saved();
    assert!(s.is_bad(V2));
    assert_eq!((s.current_digest, s.pending), (None, None));
    let e = h.last();
    assert_eq!(
        (e.outcome, e.from, e.to.as_deref()),
        (Outcome::Failed, None, Some(V2))
    );
    assert_eq!(h.up.phase(), Phase::Failed);
}

// --- a container that is not ours -------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_foreign_container_with_the_worker_name_is_left_alone() {
    for (label, shown) in [(Some("other-agent"), "other-agent"), (None, "missing")] {
        let mut h = Harness::new(committed(V1), "");
        h.fake.add_image(&image(V1));
        h.fake.add_image(&image(V2));
        let foreign = h.fake.add_foreign(W, label, true);
        for r in [
            h.up.reconcile().await,
            h.up.update_to(V2, Trigger::Cli).await.map(|_| ()),
        ] {
            match r {
                Err(UpdateError::NameTaken {
                    name,
                    label,
                    agent_id,
                }) => assert_eq!(
                    (name.as_str(), label.as_str(), agent_id.as_str()),
                    (W, shown, AGENT)
                ),
                other => panic!("expected NameTaken, got {other:?}"),
            }
        }
        assert_eq!(
            h.fake.calls(),
            [format!("inspect {W}"), format!("inspect {W}")]
        );
        let c = h.fake.container(W).unwrap();
        assert_eq!((c.id, c.running), (foreign, true));
        assert_eq!(h.fake.containers().len(), 1);
        assert_eq!(
            State {
                version: 0,
                ..h.saved()
            },
            committed(V1),
            "no update began"
        );
    }
}

// --- reconcile: an interrupted update ---------------------------------------
