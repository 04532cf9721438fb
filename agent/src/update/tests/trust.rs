//! Which digests may be deployed at all: `[image.verify]` (a signature by a
//! trusted key, `min_age`), the hub's authority (a digest a nudge names only
//! with `desired_from_hub`; a swap budget), and who asked for an action.

use std::time::Duration;

use hub_client::{Nudge, WorkerView};

use super::*;

#[tokio::test(start_paused = true)]
async fn an_unsigned_digest_is_refused_before_the_pull_and_marked_bad() {
    let (mut h, old) = Harness::trusting(FakeTrust::default(), "");
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    assert!(
        matches!(&out, CheckOutcome::Failed(m) if m.contains("refused (unsigned)") && m.contains("cosign sign")),
        "{out:?}"
    );
    h.untouched(&old);
    h.never(&[format!("pull {}", image(V2)), "create".into()]);
    let s = h.saved();
    assert!(s.is_bad(V2), "{s:?}");
    let e = h.last();
    assert_eq!((e.outcome, e.to.as_deref()), (Outcome::Failed, Some(V2)));
    // An operator's update does not skip the signature check either.
    h.up.forgive(V2).unwrap();
    let out = h.up.update_to(V2, Trigger::Cli).await.unwrap();
    assert!(matches!(out, CheckOutcome::Failed(_)), "{out:?}");
    h.untouched(&old);
}

#[tokio::test(start_paused = true)]
async fn a_signed_digest_is_deployed() {
    let trust = FakeTrust::default();
    trust.signed.lock().unwrap().push(V2.into());
    let (mut h, _) = Harness::trusting(trust, "");
    assert_eq!(
        h.up.update_to(V2, Trigger::Poll).await.unwrap(),
        CheckOutcome::Updated(V2.into())
    );
}

#[tokio::test(start_paused = true)]
async fn a_digest_younger_than_min_age_waits_and_status_says_until_when() {
    let trust = FakeTrust {
        signed: std::sync::Mutex::new(vec![V2.into()]),
        min_age: Some(time::Duration::hours(2)),
    };
    let (mut h, old) = Harness::trusting(trust, "");
    h.registry.tag("stable", V2);
    let out = h.up.check(Trigger::Poll).await.unwrap();
    assert!(
        matches!(&out, CheckOutcome::Deferred(m) if m.contains("min_age") && m.contains("deployed from")),
        "{out:?}"
    );
    assert!(h.up.last_error().unwrap_or("").contains("deployed from"));
    h.untouched(&old);
    assert!(h.saved().first_seen.contains_key(V2), "first seen is kept");
    // Two hours later (first seen is kept, not reset by the next look).
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert!(matches!(
        h.up.check(Trigger::Poll).await.unwrap(),
        CheckOutcome::Deferred(_)
    ));
    tokio::time::advance(Duration::from_secs(3601)).await;
    assert_eq!(
        h.up.check(Trigger::Poll).await.unwrap(),
        CheckOutcome::Updated(V2.into())
    );
}

fn any_worker() -> Option<WorkerView> {
    Some(WorkerView {
        registered: true,
        digest: None,
        in_flight: Some(0),
    })
}

#[tokio::test(start_paused = true)]
async fn a_nudge_naming_a_digest_is_only_a_check_unless_the_hub_decides() {
    let extra = "[hub]\nurl = \"http://127.0.0.1:9/\"\n";
    let (mut h, old) = Harness::serving(V1, &[V2], extra);
    h.hub.as_ref().unwrap().sees(&[any_worker()]);
    h.registry.tag("stable", V1);
    let nudge = Nudge {
        reason: "deploy this".into(),
        digest: Some(V2.into()),
    };
    assert_eq!(h.up.nudged(&nudge).await.unwrap(), CheckOutcome::UpToDate);
    h.untouched(&old);
    assert_eq!(
        h.registry
            .resolves
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn the_hub_cannot_swap_more_often_than_its_budget() {
    let extra =
        "[hub]\nurl = \"http://127.0.0.1:9/\"\ndesired_from_hub = true\nmax_swaps_per_hour = 2\n";
    let (mut h, _) = Harness::serving(V1, &[V2], extra);
    h.hub.as_ref().unwrap().sees(&[any_worker()]);
    let nudge = |d: &str| Nudge {
        reason: "flip".into(),
        digest: Some(d.into()),
    };
    assert_eq!(
        h.up.nudged(&nudge(V2)).await.unwrap(),
        CheckOutcome::Updated(V2.into())
    );
    assert_eq!(
        h.up.nudged(&nudge(V1)).await.unwrap(),
        CheckOutcome::Updated(V1.into())
    );
    // A third flip within the hour waits.
    let out = h.up.nudged(&nudge(V2)).await.unwrap();
    assert!(
        matches!(&out, CheckOutcome::Deferred(m) if m.contains("max_swaps_per_hour")),
        "{out:?}"
    );
    h.only_worker(V1);
    // An hour after the first, one more may start.
    tokio::time::advance(Duration::from_secs(3601)).await;
    assert_eq!(
        h.up.nudged(&nudge(V2)).await.unwrap(),
        CheckOutcome::Updated(V2.into())
    );
}

#[tokio::test(start_paused = true)]
async fn an_operators_action_names_the_user_and_untrusted_text_is_escaped() {
    let (mut h, _) = Harness::serving(V1, &[V2], "");
    h.up.set_actor(Some("alice (uid 1000)".into()));
    h.up.drain_for_maintenance(Some("kernel \u{1b}[31mupgrade".into()), None)
        .await
        .unwrap();
    let e = h.last();
    assert_eq!(e.user.as_deref(), Some("alice (uid 1000)"));
    let reason = e.reason.unwrap();
    assert!(!reason.contains('\u{1b}'), "{reason:?}");
    assert!(!h.saved().drain_reason.unwrap().contains('\u{1b}'));
}

#[tokio::test(start_paused = true)]
async fn nudges_naming_digests_the_registry_lacks_leave_no_line_each_and_keep_real_marks() {
    let extra = "[hub]\nurl = \"http://127.0.0.1:9/\"\ndesired_from_hub = true\nmax_swaps_per_hour = 1000\n";
    let (mut h, old) = Harness::serving(V1, &[V2], extra);
    h.hub.as_ref().unwrap().sees(&[any_worker()]);
    // An operator's rollback mark, made before the flood.
    h.fake.on_start(V2, OnStart::Exits(3));
    h.up.update_to(V2, Trigger::Cli).await.unwrap();
    assert!(h.saved().is_bad(V2));
    let lines = h.history().len();
    for i in 0..40u32 {
        let bogus = format!("sha256:{:064x}", 0xdead_0000u64 + u64::from(i));
        h.fake
            .fail_times("pull", 3, fake::pull_err("manifest unknown"));
        for _ in 0..3 {
            let n = Nudge {
                reason: "flood".into(),
                digest: Some(bogus.clone()),
            };
            h.up.nudged(&n).await.unwrap();
        }
    }
    // One line per digest marked (at its third strike), none per nudge.
    assert_eq!(h.history().len() - lines, 40);
    let s = h.saved();
    assert!(
        s.is_bad(V2),
        "the rollback's mark is kept: {:?}",
        s.bad_digests
    );
    assert_eq!(h.only_worker(V1).id, old);
}
