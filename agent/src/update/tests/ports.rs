//! The steps that talk to the registry, the hub and the worker's endpoints,
//! against their fakes on paused time: which digest a tag or a semver range
//! names, the hub's desired digest and nudges, the registration check, and
//! the drain by the worker's endpoint or by the hub's in-flight count.

use std::sync::atomic::Ordering;

use hub_client::{Nudge, WorkerView};

use super::*;

const HUB: &str = "[hub]\nurl = \"http://127.0.0.1:9/\"\n";

fn view(registered: bool, digest: Option<&str>, in_flight: Option<u64>) -> Option<WorkerView> {
    Some(WorkerView {
        registered,
        digest: digest.map(str::to_string),
        in_flight,
    })
}

// --- the registry: tag and semver ----------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_poll_follows_the_tag_to_a_new_digest() {
    let (mut h, old) = Harness::serving(V1, &[V2], "");
    h.registry.tag("stable", V2);
    assert_eq!(
        h.up.check(Trigger::Poll).await.unwrap(),
        CheckOutcome::Updated(V2.into())
    );
    h.only_worker(V2);
    assert!(h.fake.containers().iter().all(|c| c.id != old));
    let e = h.last();
    assert_eq!((e.trigger, e.outcome), (Trigger::Poll, Outcome::Success));
    // The tag has not moved: the next poll does nothing.
    assert_eq!(
        h.up.check(Trigger::Poll).await.unwrap(),
        CheckOutcome::UpToDate
    );
    assert_eq!(h.registry.resolves.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_semver_range_picks_the_highest_matching_tag() {
    let (mut h, _) = Harness::serving(V1, &[V2], "[image]\nversion = \"^2.3\"\n");
    h.registry.tag("2.3.0", V1);
    h.registry.tag("2.4.1", V2);
    h.registry.tag("3.0.0", V0);
    h.registry.tag("latest", V0);
    assert_eq!(
        h.up.check(Trigger::Poll).await.unwrap(),
        CheckOutcome::Updated(V2.into())
    );
    h.only_worker(V2);
}

#[tokio::test(start_paused = true)]
async fn a_registry_that_is_down_leaves_the_worker_and_says_why() {
    let (mut h, old) = Harness::serving(V1, &[V2], "");
    h.registry.down.store(true, Ordering::SeqCst);
    let e = h.up.check(Trigger::Poll).await.unwrap_err();
    assert!(crate::error_chain(&e).contains("503"), "{e}");
    assert!(h.up.last_error().unwrap_or("").contains("503"));
    assert_eq!(h.up.phase(), Phase::Idle);
    h.untouched(&old);
    assert!(h.history().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_tag_on_a_bad_digest_is_not_tried_again() {
    let mut state = committed(V1);
    state.mark_bad(V2, "exited with code 3", OffsetDateTime::now_utc());
    let h0 = Harness::new(state, "");
    h0.fake.add_image(&image(V1));
    let old = h0.fake.add_container(W, V1, true);
    let mut h = h0;
    h.registry.tag("stable", V2);
    assert_eq!(
        h.up.check(Trigger::Poll).await.unwrap(),
        CheckOutcome::SkippedBad(V2.into())
    );
    h.untouched(&old);
    h.never(&[format!("pull {}", image(V2))]);
}

// --- the hub: desired digests and nudges -------------------------------------------

#[tokio::test(start_paused = true)]
async fn the_hubs_desired_digest_wins_over_the_tag_and_is_followed_while_the_hub_is_away() {
    let extra = format!("{HUB}desired_from_hub = true\n");
    let (mut h, _) = Harness::serving(V1, &[V2], &extra);
    let hub = h.hub.clone().unwrap();
    // Without worker.drain.http the hub's count is the drain.
    hub.sees(&[view(true, None, Some(0))]);
    h.registry.tag("stable", V1);
    hub.want(REPO, V2);
    assert_eq!(
        h.up.check(Trigger::Poll).await.unwrap(),
        CheckOutcome::Updated(V2.into())
    );
    assert_eq!(h.last().trigger, Trigger::Hub);
    assert_eq!(h.saved().hub_desired.as_deref(), Some(V2));
    assert_eq!(
        h.registry.resolves.load(Ordering::SeqCst),
        0,
        "the tag was not asked"
    );
    // The hub goes away: the digest it named last is kept, not the tag's.
    *hub.desired.lock().unwrap() = Err(());
    assert_eq!(
        h.up.check(Trigger::Poll).await.unwrap(),
        CheckOutcome::UpToDate
    );
    h.only_worker(V2);
    // 204: follow the registry again.
    *hub.desired.lock().unwrap() = Ok(None);
    assert_eq!(
        h.up.check(Trigger::Poll).await.unwrap(),
        CheckOutcome::Updated(V1.into())
    );
    assert_eq!(h.saved().hub_desired, None);
}

#[tokio::test(start_paused = true)]
async fn a_desired_digest_of_another_repository_is_refused() {
    let extra = format!("{HUB}desired_from_hub = true\n");
    let (mut h, old) = Harness::serving(V1, &[V2], &extra);
    h.hub
        .as_ref()
        .unwrap()
        .want("registry.example/other/image", V2);
    let out = h.up.check(Trigger::Poll).await.unwrap();
    assert!(
        matches!(&out, CheckOutcome::Failed(m) if m.contains("other/image") && m.contains(REPO)),
        "{out:?}"
    );
    h.untouched(&old);
}

#[tokio::test(start_paused = true)]
async fn a_nudge_naming_a_digest_deploys_it_unless_updates_are_held() {
    let extra = format!("{HUB}desired_from_hub = true\n");
    let (mut h, _) = Harness::serving(V1, &[V2], &extra);
    h.hub.as_ref().unwrap().sees(&[view(true, None, Some(0))]);
    let nudge = Nudge {
        reason: "new build".into(),
        digest: Some(V2.into()),
    };
    assert_eq!(
        h.up.nudged(&nudge).await.unwrap(),
        CheckOutcome::Updated(V2.into())
    );
    assert_eq!(h.last().trigger, Trigger::Nudge);
    assert_eq!(h.saved().hub_desired.as_deref(), Some(V2));
    // Drained: a nudge is held like a poll.
    h.up.drain_for_maintenance(None, None).await.unwrap();
    let back = Nudge {
        reason: "back".into(),
        digest: Some(V1.into()),
    };
    assert_eq!(
        h.up.nudged(&back).await.unwrap(),
        CheckOutcome::Held("drained")
    );
    // A nudge without a digest is a check of the tag.
    h.up.undrain().await.unwrap();
    *h.hub.as_ref().unwrap().desired.lock().unwrap() = Ok(None);
    h.registry.tag("stable", V2);
    let plain = Nudge {
        reason: "check".into(),
        digest: None,
    };
    assert_eq!(h.up.nudged(&plain).await.unwrap(), CheckOutcome::UpToDate);
    assert_eq!(h.registry.resolves.load(Ordering::SeqCst), 1);
}

// --- the registration check ---------------------------------------------------------

const REGISTRATION: &str = "verify_registration = true\nregistration_timeout = \"3s\"\n\
[worker.drain]\nhttp = \"http://127.0.0.1:9/drain\"\n";

#[tokio::test(start_paused = true)]
async fn a_new_worker_the_hub_sees_registered_is_committed() {
    let (mut h, _) = Harness::serving(V1, &[V2], &format!("{HUB}{REGISTRATION}"));
    let hub = h.hub.clone().unwrap();
    hub.sees(&[
        view(true, Some(V1), Some(0)),
        view(false, None, None),
        view(true, Some(V2), Some(0)),
    ]);
    assert_eq!(
        h.up.update_to(V2, Trigger::Poll).await.unwrap(),
        CheckOutcome::Updated(V2.into())
    );
    // The pre-flight, one "not yet", one "registered".
    assert_eq!(hub.worker_calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn a_new_worker_the_hub_never_sees_is_rolled_back_and_marked_bad() {
    let (mut h, old) = Harness::serving(V1, &[V2], &format!("{HUB}{REGISTRATION}"));
    h.hub
        .as_ref()
        .unwrap()
        .sees(&[view(true, Some(V1), Some(0)), view(true, Some(V1), Some(0))]);
    let t0 = tokio::time::Instant::now();
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    let error = assert_rolled_back(&h, out, &old, true);
    assert!(
        error.contains("did not register") && error.contains(&format!("registered with {V1}")),
        "{error}"
    );
    // The whole registration timeout passed, on paused time.
    assert!(t0.elapsed() >= std::time::Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn a_hub_that_stops_answering_during_the_registration_check_blames_nothing() {
    let (mut h, old) = Harness::serving(V1, &[V2], &format!("{HUB}{REGISTRATION}"));
    h.hub
        .as_ref()
        .unwrap()
        .sees(&[view(true, Some(V1), Some(0)), None]);
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    let error = assert_rolled_back(&h, out, &old, false);
    assert!(
        error.contains("could not verify the new worker's registration"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn with_the_hub_away_an_update_that_needs_it_does_not_start() {
    let (mut h, old) = Harness::serving(V1, &[V2], &format!("{HUB}{REGISTRATION}"));
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    assert!(
        matches!(&out, CheckOutcome::Failed(m) if m.contains("hub cannot be asked")),
        "{out:?}"
    );
    h.untouched(&old);
    h.never(&[format!("pull {}", image(V2)), "create".into()]);
}

// --- drains: the worker's endpoint, the hub's in-flight count ------------------------

#[tokio::test(start_paused = true)]
async fn the_worker_is_drained_through_its_endpoint_before_the_swap() {
    let extra = "[worker.drain]\nhttp = \"http://127.0.0.1:9/drain\"\ntimeout = \"1m\"\n";
    let (mut h, _) = Harness::serving(V1, &[V2], extra);
    h.probe.in_flight.lock().unwrap().extend([3, 2, 0]);
    assert_eq!(
        h.up.update_to(V2, Trigger::Poll).await.unwrap(),
        CheckOutcome::Updated(V2.into())
    );
    assert_eq!(
        h.probe.calls(),
        ["POST /drain", "GET /drain", "GET /drain", "GET /drain"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_drain_that_times_out_gives_the_worker_its_jobs_back() {
    let extra = "[worker.drain]\nhttp = \"http://127.0.0.1:9/drain\"\ntimeout = \"5s\"\n";
    let (mut h, old) = Harness::serving(V1, &[V2], extra);
    h.probe.in_flight.lock().unwrap().push_back(4);
    let t0 = tokio::time::Instant::now();
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    assert!(
        matches!(&out, CheckOutcome::Aborted(m) if m.contains("timed out after 5s with 4 jobs")),
        "{out:?}"
    );
    assert!(t0.elapsed() >= std::time::Duration::from_secs(5));
    assert_eq!(
        h.probe.calls().last().map(String::as_str),
        Some("DELETE /drain")
    );
    h.untouched(&old);
    assert_eq!(h.last().outcome, Outcome::Aborted);
}

#[tokio::test(start_paused = true)]
async fn without_a_drain_endpoint_the_hubs_in_flight_count_is_the_drain() {
    let (mut h, _) = Harness::serving(V1, &[V2], HUB);
    let hub = h.hub.clone().unwrap();
    hub.sees(&[
        view(true, Some(V1), Some(2)),
        view(true, Some(V1), Some(1)),
        view(true, Some(V1), Some(0)),
    ]);
    assert_eq!(
        h.up.update_to(V2, Trigger::Poll).await.unwrap(),
        CheckOutcome::Updated(V2.into())
    );
    let notices = hub.notices();
    assert_eq!(notices.len(), 2, "{notices:?}");
    assert!(notices[0].0 && notices[0].1.contains(V2));
    assert!(!notices[1].0 && notices[1].1.contains("verified"));
}

#[tokio::test(start_paused = true)]
async fn a_hub_that_does_not_count_in_flight_jobs_aborts_the_update() {
    let (mut h, old) = Harness::serving(V1, &[V2], HUB);
    let hub = h.hub.clone().unwrap();
    hub.sees(&[view(true, Some(V1), None)]);
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    assert!(
        matches!(&out, CheckOutcome::Aborted(m) if m.contains("no in_flight count")),
        "{out:?}"
    );
    h.untouched(&old);
    // The hub was told the worker takes jobs again.
    assert_eq!(hub.notices().last().map(|n| n.0), Some(false));
    // A hub that does not take the drain notice: the update waits too.
    hub.refuse_notices.store(true, Ordering::SeqCst);
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    assert!(
        matches!(&out, CheckOutcome::Aborted(m) if m.contains("did not take the drain notice")),
        "{out:?}"
    );
}
