//! The outage paths: a state write that fails once the old worker may be
//! stopped, rollbacks that blame nothing (back-off, then a mark), failures
//! of the host that are not the image's, a worker that refuses `DELETE` on
//! its drain endpoint.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;

#[tokio::test(start_paused = true)]
async fn a_rollback_that_blames_nothing_backs_off_then_marks_the_digest_bad() {
    let (mut h, old) = Harness::serving(V1, &[V2], "[image]\nmax_attempts = 3\n");
    h.registry.tag("stable", V2);
    h.fake
        .fail_while_running("inspect", V2, fake::unreachable());
    let out = h.up.check(Trigger::Poll).await.unwrap();
    assert_rolled_back(&h, out, &old, false);
    let r = h.saved().retry.expect("a back-off is saved");
    assert_eq!((r.digest.as_str(), r.attempts), (V2, 1));
    // The next polls within the back-off do not drain, swap or roll back.
    h.fake.clear_calls();
    let out = h.up.check(Trigger::Poll).await.unwrap();
    assert!(
        matches!(&out, CheckOutcome::Deferred(m) if m.contains("tried again after")),
        "{out:?}"
    );
    h.never(&["stop".into(), "create".into()]);
    // After it (one minute), tried again; the back-off doubles.
    tokio::time::advance(Duration::from_secs(61)).await;
    let out = h.up.check(Trigger::Poll).await.unwrap();
    assert_rolled_back(&h, out, &old, false);
    let r = h.saved().retry.unwrap();
    assert_eq!(r.attempts, 2);
    assert!(r.until - r.until.replace_second(0).unwrap() <= time::Duration::minutes(2));
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(matches!(
        h.up.check(Trigger::Poll).await.unwrap(),
        CheckOutcome::Deferred(_)
    ));
    // The third attempt (image.max_attempts) marks it bad.
    tokio::time::advance(Duration::from_secs(61)).await;
    let out = h.up.check(Trigger::Poll).await.unwrap();
    assert_rolled_back(&h, out, &old, true);
    let s = h.saved();
    assert!(
        s.bad_digests[0]
            .reason
            .contains("3 times without a clear cause"),
        "{s:?}"
    );
    assert_eq!(s.retry, None);
    assert_eq!(
        h.up.check(Trigger::Poll).await.unwrap(),
        CheckOutcome::SkippedBad(V2.into())
    );
}

#[tokio::test(start_paused = true)]
async fn the_back_off_is_kept_across_a_restart_and_an_operator_skips_it() {
    let (mut h, old) = Harness::serving(V1, &[V2], "");
    h.fake
        .fail_while_running("inspect", V2, fake::unreachable());
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    assert_rolled_back(&h, out, &old, false);
    // A new updater (a restart) reads the back-off from the state file.
    let settings = h.up.settings.clone();
    let registry = Arc::new(FakeRegistry::default());
    registry.tag("stable", V2);
    let mut again = Updater::new(
        h.fake.clone(),
        Ports {
            registry,
            ..Harness::ports()
        },
        settings,
        CancellationToken::new(),
    )
    .unwrap();
    assert!(matches!(
        again.check(Trigger::Poll).await.unwrap(),
        CheckOutcome::Deferred(_)
    ));
    // An operator's update tries it now (and clears the back-off).
    again.forgive(V2).unwrap();
    let out = again.update_to(V2, Trigger::Cli).await.unwrap();
    assert!(matches!(out, CheckOutcome::RolledBack { .. }), "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn a_create_the_host_refuses_is_not_the_images_fault() {
    let (mut h, old) = Harness::serving(V1, &[V2], "");
    let full = fake::call_err("create", NEXT, 500);
    let full = match full {
        EngineError::Call {
            op, target, status, ..
        } => EngineError::Call {
            op,
            target,
            status,
            message: "mkdir /var/lib/docker/overlay2/x: no space left on device".into(),
        },
        e => e,
    };
    h.fake.fail_times("create", 4, full);
    for _ in 0..4 {
        let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
        assert!(
            matches!(&out, CheckOutcome::Failed(m) if m.contains("no space left")),
            "{out:?}"
        );
    }
    let s = h.saved();
    assert!(
        !s.is_bad(V2),
        "a full engine disk marked a good image bad: {s:?}"
    );
    assert!(s.strikes.is_empty(), "{:?}", s.strikes);
    h.untouched(&old);
}

#[tokio::test(start_paused = true)]
async fn strikes_are_kept_in_the_state_file() {
    let (mut h, _) = Harness::serving(V1, &[V2], "");
    h.fake
        .fail_times("create", 1, fake::call_err("create", NEXT, 400));
    h.up.update_to(V2, Trigger::Poll).await.unwrap();
    assert_eq!(h.saved().strikes.get(V2), Some(&1));
}

/// An update whose drain times out with jobs in flight, on a worker that
/// does not support `DELETE` on its drain endpoint.
fn refusing_worker() -> (Harness, String) {
    let extra = "[worker.drain]\nhttp = \"http://127.0.0.1:9/drain\"\ntimeout = \"2s\"\n";
    let (h, old) = Harness::serving(V1, &[V2], extra);
    h.probe.refuse_delete.store(true, Ordering::SeqCst);
    h.probe.in_flight.lock().unwrap().push_back(3);
    (h, old)
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_refuses_delete_is_restarted_once_its_jobs_are_done() {
    let (mut h, old) = refusing_worker();
    h.registry.tag("stable", V1);
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    assert!(
        matches!(&out, CheckOutcome::Aborted(m) if m.contains("restarted once its 3 in-flight jobs finish")),
        "{out:?}"
    );
    h.never(&[format!("stop {old}")]);
    // The jobs finish: the next turn restarts it, and status says why.
    *h.probe.in_flight.lock().unwrap() = [0].into();
    assert_eq!(
        h.up.check(Trigger::Poll).await.unwrap(),
        CheckOutcome::UpToDate
    );
    h.in_order(&[format!("stop {old}"), format!("start {old}")]);
    let e = h.last();
    assert_eq!((e.kind, e.outcome), (Kind::Undrain, Outcome::Success));
    let said = e.reason.unwrap_or_default();
    assert!(
        said.contains("it was restarted") && said.contains("DELETE"),
        "{said}"
    );
    h.only_worker(V1);
    // Once restarted it is not restarted again.
    h.fake.clear_calls();
    h.up.check(Trigger::Poll).await.unwrap();
    h.never(&[format!("stop {old}")]);
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_refuses_delete_with_no_job_left_is_restarted_at_once() {
    let (mut h, old) = refusing_worker();
    // In flight during the drain; none left when it is aborted.
    *h.probe.in_flight.lock().unwrap() = [3, 3, 3, 3, 3, 0].into();
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    assert!(
        matches!(&out, CheckOutcome::Aborted(m) if m.contains("it was restarted")),
        "{out:?}"
    );
    h.in_order(&[format!("stop {old}"), format!("start {old}")]);
    assert!(h.last().error.unwrap_or_default().contains("restarted"));
}

/// An updater over `h`'s engine whose state file was lost (garbage on disk):
/// it is rebuilt from the history.
fn after_state_loss(h: &Harness) -> Updater<FakeEngine> {
    let dir = h.up.settings.agent.state_dir.clone();
    std::fs::write(dir.join("state.json"), b"{ torn").unwrap();
    Updater::new(
        h.fake.clone(),
        Harness::ports(),
        h.up.settings.clone(),
        CancellationToken::new(),
    )
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_state_rebuilt_from_the_history_keeps_the_marks_as_they_were() {
    let (mut h, old) = Harness::serving(V1, &[V2], "");
    // A rollback that blamed nothing (no mark), then one that marked V0 bad.
    h.fake
        .fail_while_running("inspect", V2, fake::unreachable());
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    assert_rolled_back(&h, out, &old, false);
    h.fake.add_image(&image(V0));
    h.fake.on_start(V0, OnStart::Exits(3));
    h.up.forgive(V0).unwrap();
    let out = h.up.update_to(V0, Trigger::Cli).await.unwrap();
    assert!(matches!(out, CheckOutcome::RolledBack { .. }), "{out:?}");
    let before = h.saved();
    assert!(before.is_bad(V0) && !before.is_bad(V2));

    let again = after_state_loss(&h);
    let s = again.state();
    assert!(s.is_bad(V0), "the mark is rebuilt: {s:?}");
    assert!(
        !s.is_bad(V2),
        "a rollback that marked nothing marks nothing: {s:?}"
    );
    assert!(
        s.hub_draining,
        "the hub is told again that the worker takes jobs"
    );
}

#[tokio::test(start_paused = true)]
async fn a_gpu_hold_survives_a_state_loss() {
    let held = State {
        gpu_hold: Some("GPU fault: GPU 0: XID 79".into()),
        ..committed(V1)
    };
    let mut h = Harness::new(held, "");
    h.fake.add_image(&image(V1));
    h.fake.add_container(W, V1, true);
    h.up.drain_for_maintenance(Some("reset the GPU".into()), None)
        .await
        .unwrap();
    let again = after_state_loss(&h);
    assert_eq!(
        again.state().gpu_hold.as_deref(),
        Some("GPU fault: GPU 0: XID 79")
    );
    assert!(again.state().drained);
}

#[tokio::test(start_paused = true)]
async fn after_a_state_loss_an_unverified_worker_is_verified_not_adopted() {
    let mut h = Harness::new(State::default(), "");
    h.fake.add_image(&image(V1));
    h.fake.add_image(&image(V2));
    assert_eq!(
        h.up.update_to(V1, Trigger::Cli).await.unwrap(),
        CheckOutcome::Updated(V1.into())
    );
    let old = h.only_worker(V1).id;
    // V2 runs (a swap the state never recorded as verified), V1 waits stopped.
    let mut again = after_state_loss(&h);
    h.fake
        .stop(&old, std::time::Duration::from_secs(1))
        .await
        .unwrap();
    h.fake.rename(&old, PREV).await.unwrap();
    let new = h.fake.add_container(W, V2, true);
    again.reconcile().await.unwrap();
    // Verified through the update path: a history line, then committed.
    let e = again.journal().history().unwrap().pop().unwrap();
    assert_eq!(
        (e.kind, e.outcome, e.trigger, e.to.as_deref()),
        (Kind::Update, Outcome::Success, Trigger::Startup, Some(V2))
    );
    assert_eq!(again.state().last_good_digest.as_deref(), Some(V2));
    assert_eq!(h.fake.container(W).unwrap().id, new);
}
