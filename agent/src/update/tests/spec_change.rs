//! Config changes are updates (`spec_change.rs`): new worker settings are
//! rolled out through the update's own steps with trigger `config` and the
//! keys named; settings that fail are rolled back and held until the config
//! changes; a worker made before the labels is adopted without a swap; no
//! env value is ever written.

use super::*;
use crate::docker::SpecHash;
use crate::fleet::fake::FakeFleet;
use crate::fleet::Outcome as FleetOutcome;

const MODEL_A: &str = "[worker]\nenv = { MODEL = \"a\", TOKEN = \"tok-A-7f3e\" }\n";
const MODEL_B: &str = "[worker]\nenv = { MODEL = \"b\", TOKEN = \"tok-A-7f3e\" }\n";
/// The test worker exits at once with `MODEL=bad` (and a new secret).
const MODEL_BAD: &str = "[worker]\nenv = { MODEL = \"bad\", TOKEN = \"tok-B-91c2\" }\n";

/// `V1` serving with `MODEL_A`, the tag on V1.
fn serving_a() -> (Harness, String) {
    let (h, old) = Harness::serving(V1, &[], MODEL_A);
    h.registry.tag("stable", V1);
    h.fake.on_start_env("MODEL=bad", OnStart::Exits(2));
    (h, old)
}

/// SIGHUP with the drop-in `extra`.
fn reload(h: &mut Harness, extra: &str) {
    let settings = Arc::new(settings(h._dir.path(), extra));
    let ports = Ports {
        registry: h.registry.clone(),
        probe: h.probe.clone(),
        clock: Arc::new(FakeClock::default()),
        trust: None,
    };
    h.up.reload(settings, ports);
}

/// Everything the agent wrote or shows: the state and history files, the
/// status object and last_error.
fn everything_written(h: &Harness) -> String {
    let dir = h._dir.path();
    let view = h.up.watch().borrow().clone();
    format!(
        "{}\n{}\n{}\n{:?}",
        std::fs::read_to_string(dir.join("state.json")).unwrap_or_default(),
        std::fs::read_to_string(dir.join("history.jsonl")).unwrap_or_default(),
        serde_json::to_string(&status_of(&h.up.settings, &view, None)).unwrap(),
        h.up.last_error(),
    )
}

#[tokio::test(start_paused = true)]
async fn a_changed_env_is_rolled_out_and_committed_with_trigger_config() {
    let (mut h, old) = serving_a();
    reload(&mut h, MODEL_B);
    let out = h.up.apply_config().await.unwrap();
    assert_eq!(out, CheckOutcome::Updated(V1.into()));
    let new = h.only_worker(V1);
    assert_ne!(new.id, old, "a new container runs");
    assert!(h.fake.env_of(&new.id).contains(&"MODEL=b".to_string()));
    assert_eq!(new.spec, Some(SpecHash::of(&h.up.worker)));
    h.in_order(&[
        format!("create {NEXT}"),
        format!("set_restart {old} no"),
        format!("stop {old}"),
        format!("rename {old} {PREV}"),
        format!("rename {} {W}", new.id),
        format!("start {}", new.id),
        format!("remove {old}"),
    ]);
    h.never(&["pull".into()]);
    let e = h.last();
    assert_eq!(
        (
            e.kind,
            e.outcome,
            e.trigger,
            e.from.as_deref(),
            e.to.as_deref()
        ),
        (
            Kind::Update,
            Outcome::Success,
            Trigger::Config,
            Some(V1),
            Some(V1)
        )
    );
    assert_eq!(e.changed, ["worker.env.MODEL"]);
    assert!(e.downtime_ms.is_some());
    let s = h.saved();
    assert_eq!((s.current_digest.as_deref(), s.pending), (Some(V1), None));
    assert_eq!(s.previous_good, Vec::<String>::new(), "the digest stayed");

    // Now the worker is what the config says: nothing more happens.
    h.fake.clear_calls();
    assert_eq!(
        h.up.check(Trigger::Poll).await.unwrap(),
        CheckOutcome::UpToDate
    );
    h.never(&["create".into(), "stop".into()]);
}

#[tokio::test(start_paused = true)]
async fn a_start_with_other_settings_rolls_them_out() {
    // A restart with another config: the first check finds the worker's
    // labels differ and rolls the config's settings out.
    let (mut h, old) = serving_a();
    h.up = Updater::new(
        h.fake.clone(),
        Harness::ports(),
        Arc::new(settings(h._dir.path(), MODEL_B)),
        CancellationToken::new(),
    )
    .unwrap();
    let out = h.up.check(Trigger::Startup).await.unwrap();
    assert_eq!(out, CheckOutcome::Updated(V1.into()));
    assert_ne!(h.only_worker(V1).id, old);
    let e = h.last();
    assert_eq!(
        (e.trigger, e.changed),
        (Trigger::Config, vec!["worker.env.MODEL".to_string()])
    );
}

#[tokio::test(start_paused = true)]
async fn failing_settings_roll_back_to_the_old_container_and_are_held() {
    let (mut h, old) = serving_a();
    reload(&mut h, MODEL_BAD);
    let out = h.up.apply_config().await.unwrap();
    let CheckOutcome::RolledBack { target, error } = out else {
        panic!("expected a rollback, got {out:?}");
    };
    assert_eq!(target, V1);
    assert!(error.contains("exited"), "{error}");
    assert_eq!(
        h.only_worker(V1).id,
        old,
        "the old container itself is back"
    );
    assert_eq!(
        h.fake.restart_policy(&old).as_deref(),
        Some("unless-stopped")
    );
    let s = h.saved();
    assert_eq!(s.current_digest.as_deref(), Some(V1));
    assert!(
        !s.is_bad(V1),
        "the digest is not to blame: {:?}",
        s.bad_digests
    );
    assert!(s.strikes.is_empty() && s.retry.is_none(), "{s:?}");
    let held = s.config_held.clone().expect("the settings are held");
    assert_eq!(held.spec, SpecHash::of(&h.up.worker).hash);
    assert_eq!(held.changed, ["worker.env.MODEL", "worker.env.TOKEN"]);
    let e = h.last();
    assert_eq!(
        (e.outcome, e.trigger, e.marked_bad),
        (Outcome::RolledBack, Trigger::Config, Some(false))
    );
    assert_eq!(e.changed, held.changed);
    let last_error = h.up.last_error().unwrap().to_string();
    assert!(last_error.contains("held"), "{last_error}");
    let view = h.up.watch().borrow().clone();
    assert_eq!(
        status_of(&h.up.settings, &view, None).config_held,
        Some(held.clone())
    );

    // A second check does not try them again, nor any new image.
    h.registry.tag("stable", V2);
    h.fake.add_image(&image(V2));
    h.fake.clear_calls();
    let out = h.up.check(Trigger::Poll).await.unwrap();
    assert!(
        matches!(out, CheckOutcome::Held(why) if why.contains("config_held")),
        "{out:?}"
    );
    h.never(&["create".into(), "stop".into()]);
    h.untouched(&old);

    // Nor does a restart (the hold is saved).
    let mut again = Updater::new(
        h.fake.clone(),
        Harness::ports(),
        h.up.settings.clone(),
        CancellationToken::new(),
    )
    .unwrap();
    let out = again.check(Trigger::Startup).await.unwrap();
    assert!(matches!(out, CheckOutcome::Held(_)), "{out:?}");
    h.never(&["create".into(), "stop".into()]);

    // An operator's check tries them again (and they fail again).
    let out = h.up.check(Trigger::Cli).await.unwrap();
    assert!(matches!(out, CheckOutcome::RolledBack { .. }), "{out:?}");
    assert_eq!(h.only_worker(V1).id, old);
    assert!(h.saved().config_held.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_config_changed_back_lifts_the_hold_and_clears_last_error() {
    let (mut h, old) = serving_a();
    reload(&mut h, MODEL_BAD);
    h.up.apply_config().await.unwrap();
    assert!(h.saved().config_held.is_some());
    assert!(h.up.last_error().is_some());

    reload(&mut h, MODEL_A);
    h.fake.clear_calls();
    let out = h.up.apply_config().await.unwrap();
    assert_eq!(out, CheckOutcome::UpToDate);
    h.never(&["create".into(), "stop".into()]);
    assert_eq!(h.only_worker(V1).id, old);
    assert_eq!(h.saved().config_held, None);
    assert_eq!(h.up.last_error(), None);
    let view = h.up.watch().borrow().clone();
    assert_eq!(status_of(&h.up.settings, &view, None).config_held, None);
    // Checks follow the registry again.
    h.registry.tag("stable", V2);
    h.fake.add_image(&image(V2));
    let out = h.up.check(Trigger::Poll).await.unwrap();
    assert_eq!(out, CheckOutcome::Updated(V2.into()));
}

#[tokio::test(start_paused = true)]
async fn another_change_after_a_hold_is_rolled_out() {
    let (mut h, _) = serving_a();
    reload(&mut h, MODEL_BAD);
    h.up.apply_config().await.unwrap();
    reload(&mut h, MODEL_B);
    let out = h.up.apply_config().await.unwrap();
    assert_eq!(out, CheckOutcome::Updated(V1.into()));
    assert_eq!(h.saved().config_held, None);
    assert_eq!(h.up.last_error(), None);
    assert_eq!(h.last().changed, ["worker.env.MODEL"]);
}

#[tokio::test(start_paused = true)]
async fn a_worker_without_the_label_is_adopted_without_a_swap() {
    let mut h = Harness::new(committed(V1), MODEL_A);
    h.fake.seed_spec(None);
    h.fake.add_image(&image(V1));
    h.registry.tag("stable", V1);
    let old = h.fake.add_container(W, V1, true);
    h.fake.clear_calls();
    let out = h.up.check(Trigger::Startup).await.unwrap();
    assert_eq!(out, CheckOutcome::UpToDate);
    h.never(&["create".into(), "stop".into(), "set_restart".into()]);
    let adopted = h
        .saved()
        .adopted_spec
        .expect("what it is taken to run is saved");
    assert_eq!(adopted.container, old);
    assert!(h.history().is_empty());

    // A later change is still seen, named, and rolled out from it.
    reload(&mut h, MODEL_B);
    let out = h.up.apply_config().await.unwrap();
    assert_eq!(out, CheckOutcome::Updated(V1.into()));
    assert_ne!(h.only_worker(V1).id, old);
    assert_eq!(h.last().changed, ["worker.env.MODEL"]);
    assert_eq!(h.saved().adopted_spec, None);
}

#[tokio::test(start_paused = true)]
async fn failing_settings_roll_back_to_a_worker_without_the_label() {
    let mut h = Harness::new(committed(V1), MODEL_A);
    h.fake.seed_spec(None);
    h.fake.add_image(&image(V1));
    h.registry.tag("stable", V1);
    h.fake.on_start_env("MODEL=bad", OnStart::Exits(2));
    let old = h.fake.add_container(W, V1, true);
    h.up.check(Trigger::Startup).await.unwrap();
    reload(&mut h, MODEL_BAD);
    let out = h.up.apply_config().await.unwrap();
    assert!(matches!(out, CheckOutcome::RolledBack { .. }), "{out:?}");
    let back = h.only_worker(V1);
    assert_eq!((back.id.as_str(), back.spec), (old.as_str(), None));
    assert!(h.saved().config_held.is_some());
}

#[tokio::test(start_paused = true)]
async fn env_values_are_never_written() {
    let (mut h, _) = serving_a();
    reload(&mut h, MODEL_BAD);
    h.up.apply_config().await.unwrap();
    reload(&mut h, MODEL_B);
    h.up.apply_config().await.unwrap();
    let written = everything_written(&h);
    for secret in ["tok-A-7f3e", "tok-B-91c2", "MODEL=b", "\"bad\""] {
        assert!(!written.contains(secret), "{secret} in {written}");
    }
    assert!(written.contains("worker.env.TOKEN"), "the key is named");
    // Nor in the labels: hashes only.
    let spec = h.only_worker(V1).spec.unwrap();
    let labels = serde_json::to_string(&spec).unwrap();
    assert!(
        !labels.contains("tok-A") && !labels.contains("\"b\""),
        "{labels}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_container_the_engine_refuses_for_the_new_settings_is_held_without_a_strike() {
    let (mut h, old) = serving_a();
    reload(&mut h, MODEL_B);
    h.fake
        .fail_next("create", fake::call_err("create", NEXT, 400));
    let out = h.up.apply_config().await.unwrap();
    assert!(matches!(out, CheckOutcome::Failed(_)), "{out:?}");
    h.untouched(&old);
    let s = h.saved();
    assert!(s.strikes.is_empty(), "{:?}", s.strikes);
    assert!(s.config_held.is_some());
    assert_eq!(h.last().trigger, Trigger::Config);
}

#[tokio::test(start_paused = true)]
async fn in_a_fleet_failing_settings_count_against_the_host_not_the_digest() {
    let (mut h, old) = serving_a();
    let fleet = FakeFleet::new(1);
    h.up.set_fleet(Arc::new(fleet.gate("me")));
    reload(&mut h, MODEL_BAD);
    let out = h.up.apply_config().await.unwrap();
    assert!(matches!(out, CheckOutcome::RolledBack { .. }), "{out:?}");
    assert_eq!(h.only_worker(V1).id, old);
    let st = fleet.state.lock().unwrap();
    assert_eq!(
        st.outcomes,
        [("me".to_string(), V1.to_string(), FleetOutcome::HostFault)]
    );
    assert!(st.holders.is_empty(), "the slot was given back");
    assert!(!st.halted.contains(V1), "the digest is not halted");
    assert_eq!(st.max_held, 1, "the change took a slot");
}

#[tokio::test(start_paused = true)]
async fn an_interrupted_change_of_settings_tells_the_containers_apart_by_their_labels() {
    // Crashed while verifying new settings of V1 (the new worker is down):
    // it is started, fails, and the old container (same digest, old labels)
    // is the one put back.
    let mut h = Harness::new(committed(V1), MODEL_A);
    h.fake.add_image(&image(V1));
    let old_spec = SpecHash::of(&h.up.worker);
    let old = h.fake.add_container(PREV, V1, false);
    h.fake.set_restart(&old, "no", None).await.unwrap();
    let new_settings = settings(h._dir.path(), MODEL_BAD);
    let new_spec = SpecHash::of(&new_settings.worker);
    h.fake.seed_spec(Some(new_spec.clone()));
    h.fake.on_start_env("MODEL=bad", OnStart::Exits(2));
    let new = h.fake.add_container(W, V1, false);
    h.fake.set_env(&new, &["MODEL=bad"]);
    let mut state = committed(V1);
    state.pending = Some(Pending {
        from: Some(V1.into()),
        to: V1.into(),
        trigger: Trigger::Config,
        step: Phase::Verifying,
        started_at: OffsetDateTime::now_utc(),
        error: None,
        kind: Kind::Update,
        pin: None,
        to_spec: Some(new_spec.hash.clone()),
        from_spec: Some(old_spec.hash.clone()),
        changed: vec!["worker.env.MODEL".into()],
    });
    h.up.journal().save(&state).unwrap();
    h.up = Updater::new(
        h.fake.clone(),
        Harness::ports(),
        Arc::new(new_settings),
        CancellationToken::new(),
    )
    .unwrap();
    h.up.reconcile().await.unwrap();
    let back = h.only_worker(V1);
    assert_eq!(back.id, old, "the old settings' container is back");
    assert_eq!(back.spec, Some(old_spec));
    assert!(h.fake.container(&new).is_none(), "the new one is gone");
    let s = h.saved();
    assert_eq!(
        s.config_held.as_ref().map(|c| &c.spec),
        Some(&new_spec.hash)
    );
    assert!(!s.is_bad(V1));
    assert_eq!(h.last().outcome, Outcome::RolledBack);
}

#[tokio::test(start_paused = true)]
async fn a_dry_run_names_the_settings_a_check_would_roll_out_and_changes_nothing() {
    use crate::update::dry_run::{DryRunOf, Outlook};
    let (mut h, old) = serving_a();
    let r = h.up.dry_run(&DryRunOf::Check).await;
    assert_eq!(
        (r.spec.verdict.as_str(), r.verdict),
        ("same", Outlook::UpToDate),
        "{r:#?}"
    );

    reload(&mut h, MODEL_B);
    let before = everything_written(&h);
    h.fake.clear_calls();
    let r = h.up.dry_run(&DryRunOf::Check).await;
    assert_eq!(r.spec.verdict, "differs", "{r:#?}");
    assert_eq!(r.spec.differences, ["worker.env.MODEL"]);
    assert_eq!(r.verdict, Outlook::WouldUpdate, "{r:#?}");
    assert!(r.summary.contains("worker.env.MODEL"), "{}", r.summary);
    assert!(!format!("{r:?}").contains("MODEL=b"), "no value: {r:?}");
    assert_eq!(everything_written(&h), before, "the dry run wrote nothing");
    h.never(&["create".into(), "stop".into()]);
    h.untouched(&old);

    // Settings that failed and are held: named as held; an operator's check
    // (what the dry run is of) tries them again.
    reload(&mut h, MODEL_BAD);
    h.up.apply_config().await.unwrap();
    let r = h.up.dry_run(&DryRunOf::Check).await;
    assert_eq!(r.spec.verdict, "differs", "{r:#?}");
    assert!(r.spec.detail.contains("held"), "{}", r.spec.detail);
    assert_eq!(r.verdict, Outlook::WouldUpdate, "{r:#?}");
    let out = h.up.check(Trigger::Cli).await.unwrap();
    assert!(matches!(out, CheckOutcome::RolledBack { .. }), "{out:?}");

    // Drained, a check is refused: the settings are named, nothing would run.
    h.up.state.drained = true;
    let r = h.up.dry_run(&DryRunOf::Check).await;
    assert_eq!(r.spec.verdict, "differs", "{r:#?}");
    assert_eq!(r.verdict, Outlook::WouldRefuse, "{r:#?}");
}
