//! Dry runs (`dry_run.rs`) against the fakes: each leaves `state.json` and
//! `history.jsonl` as they were (bytes, mtime, inode), the updater's state,
//! phase and view as they were, makes only read calls of the engine, sends no
//! event, no hub notice and no worker probe, and never asks the fleet for a
//! slot; and its verdicts are the ones the real action then shows.

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use super::fakes::FakeTrust;
use super::*;
use crate::fleet::fake::FakeFleet;
use crate::update::dry_run::{DryRun, DryRunOf, Outlook, Verdict};
use crate::update::journal::Retry;

/// The engine calls that only read.
const READS: [&str; 5] = [
    "list_managed",
    "inspect",
    "has_image",
    "image_env",
    "logs_tail",
];

/// Bytes, mtime and inode of a file.
type Seen = (Vec<u8>, SystemTime, u64);

fn seen(path: &Path) -> Seen {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (std::fs::read(path).unwrap(), m.modified().unwrap(), m.ino())
}

/// The updater serving V1 from `state` (its container running unless drained).
fn serving_from(state: State, extra: &str) -> Harness {
    let running = !state.drained;
    let h = Harness::new(state, extra);
    h.fake.add_image(&image(V1));
    h.fake.add_container(W, V1, running);
    h
}

/// The wall clock the fakes start at, plus `secs`.
fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap()
}

/// Runs the dry run of `of` and asserts that it changed nothing.
async fn dry(h: &mut Harness, of: DryRunOf) -> DryRun {
    let dir = h.up.settings.agent.state_dir.clone();
    let (state_file, history_file) = (dir.join("state.json"), dir.join("history.jsonl"));
    if !history_file.exists() {
        // A history to compare: the first deploy's line.
        h.up.record(HistoryEntry {
            at: at(-60),
            kind: Kind::Update,
            from: None,
            to: Some(V1.into()),
            outcome: Outcome::Success,
            trigger: Trigger::Startup,
            error: None,
            downtime_ms: Some(10),
            reason: None,
            user: None,
            marked_bad: None,
            gpu_hold: None,
            changed: Vec::new(),
            spec: None,
        });
    }
    let events = Arc::new(AtomicUsize::new(0));
    let count = events.clone();
    h.up.subscribe(Box::new(move |_| {
        count.fetch_add(1, Ordering::SeqCst);
    }));
    let files = (seen(&state_file), seen(&history_file));
    let state = h.up.state().clone();
    let view = h.up.watch().borrow().clone();
    let probes = h.probe.calls().len();
    let notices = h.hub.as_ref().map(|hub| hub.notices().len());
    h.fake.clear_calls();

    let r = h.up.dry_run(&of).await;

    assert_eq!(
        (seen(&state_file), seen(&history_file)),
        files,
        "state.json or history.jsonl changed"
    );
    assert_eq!(h.up.state(), &state, "the state in memory changed");
    assert_eq!(*h.up.watch().borrow(), view, "the view changed");
    assert_eq!(events.load(Ordering::SeqCst), 0, "an event was sent");
    assert_eq!(h.probe.calls().len(), probes, "the worker was probed");
    assert_eq!(
        h.hub.as_ref().map(|hub| hub.notices().len()),
        notices,
        "the hub heard something"
    );
    for call in h.fake.calls() {
        let op = call.split(' ').next().unwrap_or_default();
        assert!(READS.contains(&op), "the dry run called {call:?}");
    }
    r
}

/// The verdict of gate `name`, and its reason.
#[track_caller]
fn gate(r: &DryRun, name: &str) -> (Verdict, String) {
    let g = r
        .gates
        .iter()
        .find(|g| g.gate == name)
        .unwrap_or_else(|| panic!("no gate {name} in {r:#?}"));
    (g.verdict, g.reason.clone())
}

#[tokio::test(start_paused = true)]
async fn a_check_that_would_update_says_so_changes_nothing_and_the_check_does_it() {
    let mut h = serving_from(committed(V1), "");
    h.registry.tag("stable", V2);
    let r = dry(&mut h, DryRunOf::Check).await;
    assert_eq!(r.verdict, Outlook::WouldUpdate, "{r:#?}");
    assert_eq!(r.action, "check");
    assert_eq!(r.current_digest.as_deref(), Some(V1));
    assert_eq!(r.target.digest.as_deref(), Some(V2));
    assert_eq!(
        (r.target.decided_by.as_str(), r.target.detail.as_str()),
        ("tag", "tag stable")
    );
    let names: Vec<&str> = r.gates.iter().map(|g| g.gate.as_str()).collect();
    assert_eq!(
        names,
        [
            "held",
            "bad_mark",
            "backoff",
            "hub_swap_budget",
            "min_age",
            "signature",
            "gpu",
            "hub",
            "cuda",
            "fleet"
        ]
    );
    assert!(r.gates.iter().all(|g| g.verdict == Verdict::Pass), "{r:#?}");
    let pull = r.pull.as_ref().expect("a pull");
    assert_eq!(
        (pull.image.as_str(), pull.present),
        (image(V2).as_str(), Some(false))
    );
    assert_eq!(r.spec.verdict, "same", "{:?}", r.spec);
    assert!(
        r.summary.contains(V1) && r.summary.contains(V2),
        "{}",
        r.summary
    );

    // An operator's update of the same digest: decided by the operator.
    let r = dry(&mut h, DryRunOf::Update(V2.into())).await;
    assert_eq!(r.verdict, Outlook::WouldUpdate, "{r:#?}");
    assert_eq!(r.target.decided_by, "operator");

    // The check then does what the dry run said.
    h.fake.clear_calls();
    assert_eq!(
        h.up.check(Trigger::Cli).await.unwrap(),
        CheckOutcome::Updated(V2.into())
    );
    h.in_order(&[format!("pull {}", image(V2))]);
    h.only_worker(V2);
}

#[tokio::test(start_paused = true)]
async fn up_to_date_lists_no_gate_beyond_the_hold_and_nothing_to_pull() {
    let mut h = serving_from(committed(V1), "");
    h.registry.tag("stable", V1);
    let r = dry(&mut h, DryRunOf::Check).await;
    assert_eq!(r.verdict, Outlook::UpToDate, "{r:#?}");
    assert_eq!(r.gates.len(), 1, "{r:#?}");
    assert_eq!(gate(&r, "held").0, Verdict::Pass);
    assert_eq!(r.pull, None);
    assert_eq!(
        h.up.check(Trigger::Cli).await.unwrap(),
        CheckOutcome::UpToDate
    );
}

#[tokio::test(start_paused = true)]
async fn a_digest_marked_bad_refuses_a_check_but_not_an_operators_update() {
    let mut st = committed(V1);
    st.mark_bad(V2, "the new worker exited with code 3", at(-3600));
    let mut h = serving_from(st, "");
    h.fake.add_image(&image(V2));
    h.registry.tag("stable", V2);
    let r = dry(&mut h, DryRunOf::Check).await;
    assert_eq!(r.verdict, Outlook::WouldRefuse, "{r:#?}");
    let (v, why) = gate(&r, "bad_mark");
    assert_eq!(v, Verdict::WouldRefuse);
    assert!(
        why.contains("marked bad") && why.contains("exited with code 3"),
        "{why}"
    );
    assert!(r.summary.contains("bad_mark"), "{}", r.summary);
    assert_eq!(r.pull.as_ref().and_then(|p| p.present), Some(true));

    let r = dry(&mut h, DryRunOf::Update(V2.into())).await;
    assert_eq!(r.verdict, Outlook::WouldUpdate, "{r:#?}");
    let (v, why) = gate(&r, "bad_mark");
    assert_eq!(v, Verdict::Pass);
    assert!(why.contains("operator"), "{why}");

    assert_eq!(
        h.up.check(Trigger::Cli).await.unwrap(),
        CheckOutcome::SkippedBad(V2.into())
    );
}

#[tokio::test(start_paused = true)]
async fn drained_or_pinned_the_hold_is_named() {
    let mut st = committed(V1);
    st.drained = true;
    st.drain_complete = true;
    st.drain_reason = Some("bios".into());
    let mut h = serving_from(st, "");
    h.registry.tag("stable", V2);
    for of in [DryRunOf::Check, DryRunOf::Update(V2.into())] {
        let r = dry(&mut h, of).await;
        assert_eq!(r.verdict, Outlook::WouldRefuse, "{r:#?}");
        let (v, why) = gate(&r, "held");
        assert_eq!(v, Verdict::WouldRefuse);
        assert!(why.contains("drained") && why.contains("undrain"), "{why}");
    }

    let mut st = committed(V1);
    st.pinned = Some("v1".into());
    st.pinned_digest = Some(V1.into());
    let mut h = serving_from(st, "");
    h.registry.tag("stable", V2);
    let r = dry(&mut h, DryRunOf::Check).await;
    assert_eq!(r.verdict, Outlook::WouldRefuse, "{r:#?}");
    assert_eq!(
        (r.target.decided_by.as_str(), r.target.digest.as_deref()),
        ("pin", Some(V1))
    );
    let (v, why) = gate(&r, "held");
    assert_eq!(v, Verdict::WouldRefuse);
    assert!(why.contains("pinned to v1"), "{why}");
    assert_eq!(
        h.registry.resolves.load(Ordering::SeqCst),
        0,
        "a pin decides"
    );
    let r = dry(&mut h, DryRunOf::Update(V2.into())).await;
    let (v, why) = gate(&r, "held");
    assert_eq!((r.verdict, v), (Outlook::WouldRefuse, Verdict::WouldRefuse));
    assert!(why.contains("agentctl unpin"), "{why}");
    assert_eq!(
        h.up.check(Trigger::Cli).await.unwrap(),
        CheckOutcome::Held("pinned")
    );
}

#[tokio::test(start_paused = true)]
async fn a_digest_in_back_off_waits_for_a_poll_but_not_for_an_operators_check() {
    let mut st = committed(V1);
    st.retry = Some(Retry {
        digest: V2.into(),
        attempts: 2,
        until: at(600),
        last_error: "docker start: timed out".into(),
    });
    let mut h = serving_from(st, "");
    h.fake.add_image(&image(V2));
    h.registry.tag("stable", V2);
    let r = dry(&mut h, DryRunOf::Check).await;
    assert_eq!(r.verdict, Outlook::WouldUpdate, "{r:#?}");
    let (v, why) = gate(&r, "backoff");
    assert_eq!(v, Verdict::Pass);
    assert!(
        why.contains("rolled back 2 time(s)")
            && why.contains("a poll would wait until")
            && why.contains("agentctl check tries it now"),
        "{why}"
    );
    // As it says: a poll waits, an operator's check goes.
    assert!(matches!(
        h.up.check(Trigger::Poll).await.unwrap(),
        CheckOutcome::Deferred(_)
    ));
    assert_eq!(
        h.up.check(Trigger::Cli).await.unwrap(),
        CheckOutcome::Updated(V2.into())
    );
}

#[tokio::test(start_paused = true)]
async fn the_fleet_gate_reads_the_groups_view_and_never_takes_a_slot() {
    let mut h = serving_from(committed(V1), "");
    h.fake.add_image(&image(V2));
    h.registry.tag("stable", V2);
    let fleet = FakeFleet::new(1);
    h.up.set_fleet(Arc::new(fleet.gate("me")));

    // Never asked: whether a slot is free is known only when one is asked for.
    let r = dry(&mut h, DryRunOf::Check).await;
    assert_eq!(gate(&r, "fleet").0, Verdict::Unknown, "{r:#?}");
    assert_eq!(r.verdict, Outlook::Unknown);
    assert!(r.summary.contains("fleet"), "{}", r.summary);

    // Another host holds the only slot; this one asked and waits.
    fleet.set(|s| {
        s.holders.insert("other".into());
    });
    assert!(matches!(
        h.up.check(Trigger::Poll).await.unwrap(),
        CheckOutcome::Deferred(_)
    ));
    let asked = fleet.state.lock().unwrap().decides;
    let r = dry(&mut h, DryRunOf::Check).await;
    assert_eq!(r.verdict, Outlook::WouldRefuse, "{r:#?}");
    let (v, why) = gate(&r, "fleet");
    assert_eq!(v, Verdict::WouldRefuse);
    assert!(
        why.contains("wait") && why.contains("1 slots held"),
        "{why}"
    );
    {
        let st = fleet.state.lock().unwrap();
        assert_eq!(st.decides, asked, "the dry run asked for a slot");
        assert_eq!(st.holders.iter().collect::<Vec<_>>(), ["other"]);
    }

    fleet.set(|s| s.unreachable = true);
    let r = dry(&mut h, DryRunOf::Update(V2.into())).await;
    let (v, why) = gate(&r, "fleet");
    assert_eq!(v, Verdict::WouldRefuse);
    assert!(why.contains("etcd is not reachable"), "{why}");
    assert_eq!(fleet.state.lock().unwrap().decides, asked);
}

#[tokio::test(start_paused = true)]
async fn the_signature_and_min_age_gates_run_the_real_checks_and_record_nothing() {
    let trust = FakeTrust {
        signed: std::sync::Mutex::new(vec![]),
        min_age: Some(time::Duration::hours(2)),
    };
    let (mut h, _) = Harness::trusting(trust, "");
    h.registry.tag("stable", V2);
    let r = dry(&mut h, DryRunOf::Check).await;
    assert_eq!(r.verdict, Outlook::WouldRefuse, "{r:#?}");
    let (v, why) = gate(&r, "signature");
    assert_eq!(v, Verdict::WouldRefuse);
    assert!(why.contains("refused (unsigned)"), "{why}");
    let (v, why) = gate(&r, "min_age");
    assert_eq!(v, Verdict::WouldRefuse);
    assert!(
        why.contains("younger than image.verify.min_age") && why.contains("not seen it before"),
        "{why}"
    );
    assert!(!h.saved().is_bad(V2), "the dry run marked it bad");
    assert!(!h.saved().first_seen.contains_key(V2));
}

#[tokio::test(start_paused = true)]
async fn the_gpu_preflight_and_the_cuda_of_a_local_image_are_checked() {
    let mut h = serving_from(committed(V1), "[worker]\ngpus = \"all\"\n");
    let gpu = Arc::new(crate::gpu::fake::FakeGpu::healthy(2));
    h.up.set_gpu(gpu.clone());
    h.registry.tag("stable", V2);
    // Not on the host: the CUDA check waits for the pull.
    let r = dry(&mut h, DryRunOf::Check).await;
    assert_eq!(gate(&r, "gpu").0, Verdict::Pass, "{r:#?}");
    let (v, why) = gate(&r, "cuda");
    assert_eq!(v, Verdict::Unknown);
    assert!(why.contains("after the pull"), "{why}");

    h.fake.add_image(&image(V2));
    h.fake
        .set_image_env(&image(V2), &["NVIDIA_REQUIRE_CUDA=cuda>=12.9"]);
    gpu.update_gpu(1, |g| g.ecc_dbe_volatile = Some(2));
    let r = dry(&mut h, DryRunOf::Check).await;
    assert_eq!(r.verdict, Outlook::WouldRefuse, "{r:#?}");
    let (v, why) = gate(&r, "gpu");
    assert_eq!(v, Verdict::WouldRefuse);
    assert!(
        why.contains("GPU pre-flight") && why.contains("GPU 1"),
        "{why}"
    );
    let (v, why) = gate(&r, "cuda");
    assert_eq!(v, Verdict::WouldRefuse);
    assert!(
        why.contains("CUDA 12.9") && why.contains("CUDA 12.4"),
        "{why}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hub_digest_past_the_swap_budget_is_refused_and_its_desired_digest_not_saved() {
    let extra =
        "[hub]\nurl = \"http://127.0.0.1:9/\"\ndesired_from_hub = true\nmax_swaps_per_hour = 1\n";
    let mut st = committed(V1);
    st.hub_swaps.record(at(-60));
    let mut h = serving_from(st, extra);
    h.hub.as_ref().unwrap().want(REPO, V2);
    let r = dry(&mut h, DryRunOf::Check).await;
    assert_eq!(
        (r.target.decided_by.as_str(), r.target.digest.as_deref()),
        ("hub", Some(V2))
    );
    let (v, why) = gate(&r, "hub_swap_budget");
    assert_eq!(v, Verdict::WouldRefuse, "{r:#?}");
    assert!(why.contains("max_swaps_per_hour"), "{why}");
    assert_eq!(h.saved().hub_desired, None, "the hub's answer was saved");
}
