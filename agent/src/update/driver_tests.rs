//! The driver's decisions against [`FakeEngine`]: which container runs after
//! an update, a failure or a crash, what is marked bad, and what the journal
//! says. The same sequences run against a real dockerd in `tests/`; here they
//! take milliseconds (a few wait out one 500ms verification poll: the driver
//! sleeps on the real clock) and can script what a real engine rarely does on cue.
//!
//! Every test builds a [`Harness`] (settings with no `health.http`, so health
//! is the fake container's HEALTHCHECK state; a fresh state folder; a registry
//! client that is never asked, since no pull needs credentials), sets the
//! scene in the fake, drives the [`Updater`] and asserts the outcome.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;

use super::*;
use crate::docker::fake::{self, FakeEngine, OnStart};
use crate::registry::{ClientOptions, RegistryClient};

const AGENT: &str = "test-agent";
const REPO: &str = "registry.example/acme/worker";
const W: &str = "t-w";
const NEXT: &str = "t-w-next";
const PREV: &str = "t-w-prev";
const V0: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
const V1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const V2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

/// Health must answer within 200ms and nothing has to stay healthy for long:
/// a verification is over after one look unless a test asks for more.
fn settings(dir: &Path, extra: &str) -> Settings {
    let main = format!(
        r#"
[agent]
id = "{AGENT}"
state_dir = "{dir}"
[docker]
host = "unix:///nonexistent/docker.sock"
[image]
repository = "{REPO}"
tag = "stable"
[worker]
name = "{W}"
gpus = "none"
stop_timeout = "1s"
[worker.health]
timeout = "200ms"
stable_for = "0s"
"#,
        dir = dir.display()
    );
    let mut sources = vec![(PathBuf::from("/etc/gpu-agent/agent.toml"), main)];
    if !extra.is_empty() {
        sources.push((
            PathBuf::from("/etc/gpu-agent/agent.d/test.toml"),
            extra.to_string(),
        ));
    }
    crate::config::load_from_strs(&sources).expect("the test config is valid")
}

/// `repo@digest`, as the driver pulls and creates it.
fn image(digest: &str) -> String {
    format!("{REPO}@{digest}")
}

/// A state whose current and last good digest is `digest`.
fn committed(digest: &str) -> State {
    let mut s = State::default();
    s.commit(digest);
    s
}

/// `committed(from)` with an update to `to` interrupted at `step`.
fn interrupted(from: &str, to: &str, step: Step) -> State {
    State {
        pending: Some(Pending {
            from: Some(from.into()),
            to: to.into(),
            trigger: Trigger::Poll,
            step,
            started_at: OffsetDateTime::now_utc(),
            error: (step == Step::RollingBack).then(|| "the new worker exited with code 3".into()),
            kind: Kind::Update,
            pin: None,
        }),
        ..committed(from)
    }
}

/// Collects the ERROR events the driver logs (an illegal phase transition is one).
struct ErrorLog(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ErrorLog {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                let _ = write!(self.0, " {}={v:?}", f.name());
            }
        }
        if *event.metadata().level() == tracing::Level::ERROR {
            let mut fields = Fields(String::new());
            event.record(&mut fields);
            self.0.lock().unwrap().push(fields.0);
        }
    }
}

struct Harness {
    fake: FakeEngine,
    up: Updater<FakeEngine>,
    _dir: tempfile::TempDir,
    errors: Arc<Mutex<Vec<String>>>,
    _log: tracing::subscriber::DefaultGuard,
}

impl Harness {
    /// An updater over an empty fake engine, starting from `state` on disk;
    /// `extra` is a config drop-in.
    fn new(state: State, extra: &str) -> Self {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let log = tracing::subscriber::set_default(
            tracing_subscriber::registry().with(ErrorLog(errors.clone())),
        );
        let dir = tempfile::tempdir().unwrap();
        let settings = Arc::new(settings(dir.path(), extra));
        Journal::open(dir.path()).unwrap().save(&state).unwrap();
        let fake = FakeEngine::new(AGENT);
        let registry = RegistryClient::new(ClientOptions::default()).unwrap();
        let up = Updater::new(fake.clone(), registry, settings, CancellationToken::new()).unwrap();
        Harness {
            fake,
            up,
            _dir: dir,
            errors,
            _log: log,
        }
    }

    /// `digest` committed and running as the worker; returns the harness and
    /// the worker's container id. Images of `also` are present too.
    fn serving(digest: &str, also: &[&str], extra: &str) -> (Self, String) {
        let h = Harness::new(committed(digest), extra);
        for d in std::iter::once(&digest).chain(also) {
            h.fake.add_image(&image(d));
        }
        let id = h.fake.add_container(W, digest, true);
        (h, id)
    }

    /// The state as saved on disk.
    fn saved(&self) -> State {
        self.up.journal().load().unwrap().0
    }

    fn history(&self) -> Vec<HistoryEntry> {
        self.up.journal().history().unwrap()
    }

    fn last(&self) -> HistoryEntry {
        self.history().pop().expect("a history entry")
    }

    /// Asserts the engine holds exactly one container, running `digest` as the worker.
    #[track_caller]
    fn only_worker(&self, digest: &str) -> Container {
        let all = self.fake.containers();
        assert_eq!(all.len(), 1, "one container expected: {all:#?}");
        let c = all.into_iter().next().unwrap();
        assert_eq!(
            (c.name.as_str(), c.digest.as_deref(), c.running),
            (W, Some(digest), true),
            "{c:#?}"
        );
        c
    }

    /// Asserts the calls were made in this order (others may come between).
    #[track_caller]
    fn in_order(&self, expected: &[String]) {
        let calls = self.fake.calls();
        let mut at = 0;
        for e in expected {
            match calls[at..].iter().position(|c| c == e) {
                Some(i) => at += i + 1,
                None => panic!("{e:?} not found in order {expected:?} in the calls {calls:#?}"),
            }
        }
    }

    /// Asserts no call starts with any of `prefixes`.
    #[track_caller]
    fn never(&self, prefixes: &[String]) {
        let calls = self.fake.calls();
        for p in prefixes {
            assert!(
                !calls.iter().any(|c| c.starts_with(p.as_str())),
                "unexpected {p:?} in {calls:#?}"
            );
        }
    }

    /// Asserts no call changed the container `id` (or the worker name).
    #[track_caller]
    fn untouched(&self, id: &str) {
        for call in self.fake.calls() {
            let mut words = call.split(' ');
            let op = words.next().unwrap();
            if ["start", "stop", "remove", "rename", "set_restart"].contains(&op) {
                assert!(
                    !words.any(|w| w == id || w == W),
                    "{call:?} touched the old worker {id}"
                );
            }
        }
    }
}

impl Drop for Harness {
    /// Every test also checks that the driver only moved its state machine
    /// along allowed transitions (it logs an error and resets otherwise).
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let errors = self.errors.lock().unwrap();
        let bad: Vec<_> = errors
            .iter()
            .filter(|e| e.contains("state machine"))
            .collect();
        assert!(bad.is_empty(), "illegal phase transitions: {bad:#?}");
    }
}

/// Asserts `out` is a rollback of V2 to the old worker `old` (the same
/// container, renamed back, its restart policy restored) and that the
/// journal says so; returns the error.
#[track_caller]
fn assert_rolled_back(h: &Harness, out: CheckOutcome, old: &str, marked_bad: bool) -> String {
    let CheckOutcome::RolledBack { target, error } = out else {
        panic!("expected a rollback, got {out:?}");
    };
    assert_eq!(target, V2);
    assert_eq!(
        h.only_worker(V1).id,
        old,
        "the old container itself is back"
    );
    assert_eq!(
        h.fake.restart_policy(old).as_deref(),
        Some("unless-stopped")
    );
    let s = h.saved();
    assert_eq!(s.current_digest.as_deref(), Some(V1));
    assert_eq!(s.last_good_digest.as_deref(), Some(V1));
    assert_eq!(s.pending, None);
    assert_eq!(s.is_bad(V2), marked_bad, "bad marks: {:?}", s.bad_digests);
    let e = h.last();
    assert_eq!(
        (e.outcome, e.from.as_deref(), e.to.as_deref()),
        (Outcome::RolledBack, Some(V1), Some(V2))
    );
    assert_eq!(e.error.as_deref(), Some(error.as_str()));
    assert_eq!(h.up.phase(), Phase::Idle);
    error
}

// --- updates -----------------------------------------------------------------

#[tokio::test]
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

#[tokio::test]
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

#[tokio::test]
async fn a_new_worker_whose_healthcheck_says_unhealthy_is_rolled_back_and_marked_bad() {
    let (mut h, old) = Harness::serving(V1, &[V2], "");
    h.fake.on_start(V2, OnStart::Runs(HealthState::Unhealthy));
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    let error = assert_rolled_back(&h, out, &old, true);
    assert!(error.contains("unhealthy"), "{error}");
}

#[tokio::test]
async fn a_new_worker_never_healthy_within_the_timeout_is_rolled_back_and_marked_bad() {
    let (mut h, old) = Harness::serving(V1, &[V2], "");
    h.fake.on_start(V2, OnStart::Runs(HealthState::Starting));
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    let error = assert_rolled_back(&h, out, &old, true);
    assert!(error.contains("not healthy within 200ms"), "{error}");
}

#[tokio::test]
async fn a_new_worker_the_engine_keeps_restarting_is_rolled_back_and_marked_bad() {
    // Restarts show over time: the worker must stay up a while to pass.
    let (mut h, old) = Harness::serving(V1, &[V2], "[worker.health]\nstable_for = \"100ms\"");
    h.fake.on_start(V2, OnStart::CrashLoops);
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    let error = assert_rolled_back(&h, out, &old, true);
    assert!(error.contains("restarted"), "{error}");
}

#[tokio::test]
async fn an_engine_unreachable_through_verification_rolls_back_without_blaming_the_image() {
    let (mut h, old) = Harness::serving(V1, &[V2], "");
    h.fake
        .fail_while_running("inspect", V2, fake::unreachable());
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    let error = assert_rolled_back(&h, out, &old, false);
    assert!(error.contains("could not verify"), "{error}");
    assert!(
        h.up.strikes.is_empty(),
        "no strike either: {:?}",
        h.up.strikes
    );
}

#[tokio::test]
async fn a_new_worker_found_dead_after_the_engine_was_away_is_not_blamed() {
    // An engine that restarts takes its containers down with it.
    let (mut h, old) = Harness::serving(V1, &[V2], "");
    h.fake.on_start(V2, OnStart::Exits(137));
    h.fake
        .before_next("start", |f| f.fail_next("inspect", fake::unreachable()));
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    let error = assert_rolled_back(&h, out, &old, false);
    assert!(error.contains("code 137"), "{error}");
    assert!(h.up.strikes.is_empty(), "{:?}", h.up.strikes);
}

#[tokio::test]
async fn a_swap_the_engine_drops_does_not_count_against_the_image() {
    let (mut h, old) = Harness::serving(V1, &[V2], "");
    h.fake.fail_next("stop", fake::unreachable());
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    assert_rolled_back(&h, out, &old, false);
    assert!(h.up.strikes.is_empty(), "{:?}", h.up.strikes);
}

#[tokio::test]
async fn a_new_worker_the_engine_will_not_start_counts_a_strike_only() {
    let (mut h, old) = Harness::serving(V1, &[V2], "");
    h.fake
        .fail_next("start", fake::call_err("start", "the new worker", 500));
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    let error = assert_rolled_back(&h, out, &old, false);
    assert!(error.contains("status 500"), "{error}");
    assert_eq!(h.up.strikes.get(V2), Some(&1));
}

#[tokio::test]
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
    assert_eq!(h.up.strikes.get(V2), None, "the image is not blamed");
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

#[tokio::test]
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

#[tokio::test]
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
    assert_eq!(p.step, Step::RollingBack);
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

#[tokio::test]
async fn a_reconcile_the_engine_refuses_keeps_the_pending_update() {
    let mut h = Harness::new(interrupted(V1, V2, Step::Verifying), "");
    h.fake.add_container(PREV, V1, false);
    let new = h.fake.add_container(W, V2, true);
    h.fake.fail_next("list_managed", fake::unreachable());
    assert!(h.up.reconcile().await.is_err());
    assert_eq!(
        h.saved().pending.map(|p| p.step),
        Some(Step::Verifying),
        "still in the journal"
    );
    h.up.reconcile().await.unwrap();
    assert_eq!(h.only_worker(V2).id, new);
    assert_eq!(h.saved().pending, None);
}

// --- preparing: pulls and creates, the old worker untouched -----------------

#[tokio::test]
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

#[tokio::test]
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
    assert!(h.up.strikes.is_empty(), "{:?}", h.up.strikes);
    h.untouched(&old);
    // The limit lifts: the update goes through.
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    assert_eq!(out, CheckOutcome::Updated(V2.into()));
    assert!(h.fake.position(&format!("pull {}", image(V2))).is_some());
}

#[tokio::test]
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

#[tokio::test]
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
    assert!(h.up.strikes.is_empty());
}

#[tokio::test]
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

#[tokio::test]
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

#[tokio::test]
async fn an_update_interrupted_while_the_old_worker_runs_is_aborted() {
    // Before the swap stopped it; or a reboot brought it back.
    for step in [Step::Pulling, Step::Draining, Step::Swapping] {
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

#[tokio::test]
async fn an_aborted_swap_gives_the_old_worker_its_restart_policy_back() {
    // The agent died between setting the old worker's restart policy to `no`
    // and stopping it: the old worker still runs, and must come back after
    // the next dockerd restart or crash like before.
    let mut h = Harness::new(interrupted(V1, V2, Step::Swapping), "");
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

#[tokio::test]
async fn an_interrupted_swap_whose_old_worker_was_stopped_goes_on() {
    let mut h = Harness::new(interrupted(V1, V2, Step::Swapping), "");
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

#[tokio::test]
async fn an_interrupted_verification_is_verified_and_committed() {
    let mut h = Harness::new(interrupted(V1, V2, Step::Verifying), "");
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

#[tokio::test]
async fn an_interrupted_rollback_is_finished() {
    let mut state = interrupted(V1, V2, Step::RollingBack);
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

#[tokio::test]
async fn an_interrupted_rollback_whose_old_container_is_gone_recreates_it() {
    let mut h = Harness::new(interrupted(V1, V2, Step::RollingBack), "");
    h.fake.add_image(&image(V1));
    h.fake.add_container(W, V2, true);
    h.up.reconcile().await.unwrap();
    let w = h.only_worker(V1);
    h.in_order(&[format!("create {W}"), format!("start {}", w.id)]);
    assert_eq!(h.saved().pending, None);
    assert_eq!(h.last().outcome, Outcome::RolledBack);
}

// --- reconcile: exactly one worker, on the right digest ---------------------

#[tokio::test]
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

#[tokio::test]
async fn of_two_running_workers_neither_named_the_one_on_the_current_digest_is_kept() {
    let mut h = Harness::new(committed(V1), "");
    let other = h.fake.add_container(NEXT, V2, true);
    let keep = h.fake.add_container(PREV, V1, true);
    h.up.reconcile().await.unwrap();
    assert_eq!(h.only_worker(V1).id, keep);
    h.in_order(&[format!("stop {other}"), format!("rename {keep} {W}")]);
}

#[tokio::test]
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

#[tokio::test]
async fn with_nothing_known_nothing_is_started() {
    let mut h = Harness::new(State::default(), "");
    h.up.reconcile().await.unwrap();
    assert_eq!(h.fake.containers(), []);
    assert!(!h.fake.calls().iter().any(|c| c.starts_with("create")));
}

#[tokio::test]
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

#[tokio::test]
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

#[tokio::test]
async fn a_foreign_container_named_like_the_next_worker_is_never_removed() {
    let (mut h, old) = Harness::serving(V1, &[V2], "");
    let foreign = h.fake.add_foreign(NEXT, Some("other-agent"), false);
    let out = h.up.update_to(V2, Trigger::Cli).await.unwrap();
    // The name is taken, so the new container cannot be created: the update
    // fails before the old worker is touched, and the foreign one stays.
    assert!(
        matches!(out, CheckOutcome::Failed(ref e) if e.contains("already in use")),
        "{out:?}"
    );
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

#[tokio::test]
async fn an_update_to_the_running_digest_does_nothing() {
    let (mut h, old) = Harness::serving(V1, &[], "");
    let out = h.up.update_to(V1, Trigger::Cli).await.unwrap();
    assert_eq!(out, CheckOutcome::UpToDate);
    h.never(&["create".into(), "stop".into()]);
    h.untouched(&old);
    assert!(h.history().is_empty());
}

// ---- operator actions: drain, undrain, rollback, pin, unpin ----

#[tokio::test]
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

#[tokio::test]
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

#[tokio::test]
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

#[tokio::test]
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

#[tokio::test]
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

#[tokio::test]
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

#[tokio::test]
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

#[tokio::test]
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

// ---- the GPU gates ----

/// A harness serving V1 with GPUs ("all") and a fake NVML of two healthy GPUs.
fn with_gpus() -> (Harness, String, Arc<crate::gpu::fake::FakeGpu>) {
    let (mut h, old) = Harness::serving(V1, &[V2], "[worker]\ngpus = \"all\"\n");
    let gpu = Arc::new(crate::gpu::fake::FakeGpu::healthy(2));
    h.up.set_gpu(gpu.clone());
    (h, old, gpu)
}

/// The driver reports `xids` (code, GPU index) just before the next `op` on the engine.
fn xids_before(
    h: &Harness,
    gpu: &Arc<crate::gpu::fake::FakeGpu>,
    op: &'static str,
    xids: &[(u64, u32)],
) {
    let (g, xids) = (gpu.clone(), xids.to_vec());
    h.fake.before_next(op, move |_| {
        for (code, index) in xids {
            g.push_xid(code, Some(index));
        }
    });
}

#[tokio::test]
async fn the_gpu_preflight_blocks_an_update_before_pull_or_drain_and_says_why() {
    let (mut h, _, gpu) = with_gpus();
    gpu.update_gpu(1, |g| g.ecc_dbe_volatile = Some(2));
    for _ in 0..3 {
        let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
        let CheckOutcome::Failed(why) = out else {
            panic!("{out:?}")
        };
        assert!(
            why.contains("GPU pre-flight") && why.contains("GPU 1") && why.contains("double-bit"),
            "{why}"
        );
    }
    h.never(&["pull".into(), "create".into(), "stop".into()]);
    h.only_worker(V1);
    let blocked: Vec<_> = h
        .history()
        .into_iter()
        .filter(|e| e.to.as_deref() == Some(V2))
        .collect();
    assert_eq!(blocked.len(), 1, "one history line per reason: {blocked:?}");
    assert_eq!(blocked[0].outcome, Outcome::Failed);
    assert!(
        !h.saved().is_bad(V2),
        "sick GPUs say nothing about the image"
    );
    gpu.update_gpu(1, |g| g.ecc_dbe_volatile = Some(0));
    assert_eq!(
        h.up.update_to(V2, Trigger::Poll).await.unwrap(),
        CheckOutcome::Updated(V2.into())
    );
}

#[tokio::test]
async fn no_driver_with_gpu_checks_on_is_a_clear_wait() {
    let (mut h, _, gpu) = with_gpus();
    gpu.set_no_driver(true);
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    assert!(
        matches!(&out, CheckOutcome::Failed(m) if m.contains("no NVIDIA driver") && m.contains("gpu.check = false")),
        "{out:?}"
    );
    h.only_worker(V1);
}

#[tokio::test]
async fn a_hardware_xid_since_the_last_good_check_holds_updates_until_an_operator_acts() {
    let (mut h, _, gpu) = with_gpus();
    gpu.push_xid(79, Some(0));
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    assert!(
        matches!(&out, CheckOutcome::Failed(m) if m.contains("79")),
        "{out:?}"
    );
    h.only_worker(V1);
    // An operator's explicit update acknowledges it.
    assert_eq!(
        h.up.update_to(V2, Trigger::Cli).await.unwrap(),
        CheckOutcome::Updated(V2.into())
    );
}

#[tokio::test]
async fn an_application_xid_from_the_new_worker_rolls_back_and_marks_it_bad() {
    let (mut h, old, gpu) = with_gpus();
    xids_before(&h, &gpu, "start", &[(13, 1)]);
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    let error = assert_rolled_back(&h, out, &old, true);
    assert!(
        error.contains("XID 13") && error.contains("GPU 1"),
        "{error}"
    );
}

#[tokio::test]
async fn a_hardware_xid_during_verification_is_not_blamed_and_drains_the_worker() {
    let (mut h, old, gpu) = with_gpus();
    xids_before(&h, &gpu, "start", &[(79, 0)]);
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    let CheckOutcome::RolledBack { error, .. } = &out else {
        panic!("{out:?}")
    };
    assert!(
        error.contains("not the image's fault") && error.contains("reboot"),
        "{error}"
    );
    let s = h.saved();
    assert!(!s.is_bad(V2), "a hardware fault is not the image's");
    assert!(
        s.drained && s.drain_complete,
        "gpu.drain_on_fault drains the worker"
    );
    assert!(s.drain_reason.unwrap().contains("XID 79"));
    assert!(h.fake.running().is_empty());
    assert_eq!(
        h.fake.container(&old).map(|c| c.digest),
        Some(Some(V1.to_string()))
    );
}

#[tokio::test]
async fn a_hardware_xid_while_idle_drains_the_worker_at_the_next_poll() {
    let (mut h, _, gpu) = with_gpus();
    gpu.push_xid(48, Some(1));
    // The registry is not reachable in these tests: the check fails after the watch.
    let _ = h.up.check(Trigger::Poll).await;
    let s = h.saved();
    assert!(s.drained && s.drain_complete, "{s:?}");
    assert!(h.fake.running().is_empty());
    assert!(h.up.last_error().unwrap_or("").contains("GPU fault"));
}

#[tokio::test]
async fn an_image_that_needs_a_newer_cuda_is_refused_before_the_drain() {
    let (mut h, _, _gpu) = with_gpus();
    h.fake.set_image_env(
        &image(V2),
        &[
            "PATH=/bin",
            "NVIDIA_REQUIRE_CUDA=cuda>=12.9 brand=tesla,driver>=470",
        ],
    );
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    let CheckOutcome::Failed(msg) = out else {
        panic!("{out:?}")
    };
    assert!(
        msg.contains("CUDA 12.9") && msg.contains("CUDA 12.4"),
        "{msg}"
    );
    h.never(&["stop".into()]);
    h.only_worker(V1);
    assert!(h.saved().is_bad(V2));
    assert_eq!(
        required_cuda("cuda>=11.8 brand=tesla"),
        Some("11.8".parse().unwrap())
    );
    assert_eq!(required_cuda("brand=tesla"), None);
}

#[tokio::test]
async fn a_gpu_fault_hold_is_saved_and_only_an_operator_lifts_it() {
    let (mut h, _, gpu) = with_gpus();
    gpu.push_xid(48, Some(0));
    let _ = h.up.check(Trigger::Poll).await;
    let s = h.saved();
    assert!(
        s.gpu_hold.as_deref().unwrap_or("").contains("XID 48"),
        "{s:?}"
    );
    // A restart (a new probe with an empty XID log) keeps the hold.
    let settings = h.up.settings.clone();
    let mut again = Updater::new(
        h.fake.clone(),
        RegistryClient::new(ClientOptions::default()).unwrap(),
        settings,
        CancellationToken::new(),
    )
    .unwrap();
    again.set_gpu(Arc::new(crate::gpu::fake::FakeGpu::healthy(2)));
    again.undrain().await.unwrap();
    let out = again.update_to(V2, Trigger::Poll).await.unwrap();
    assert!(
        matches!(&out, CheckOutcome::Failed(m) if m.contains("held after a GPU fault") && m.contains("agentctl check")),
        "{out:?}"
    );
    assert_eq!(
        again.update_to(V2, Trigger::Cli).await.unwrap(),
        CheckOutcome::Updated(V2.into())
    );
    assert_eq!(again.state().gpu_hold, None);
}

#[tokio::test]
async fn the_old_workers_dying_xids_are_not_held_against_the_new_image() {
    let (mut h, _, gpu) = with_gpus();
    // The old worker is killed mid-job: the driver reports 43 and 45 as it stops.
    xids_before(&h, &gpu, "stop", &[(43, 0), (45, 0)]);
    assert_eq!(
        h.up.update_to(V2, Trigger::Poll).await.unwrap(),
        CheckOutcome::Updated(V2.into())
    );
}

#[tokio::test]
async fn with_an_application_and_a_hardware_xid_the_hardware_fault_decides() {
    let (mut h, _, gpu) = with_gpus();
    xids_before(&h, &gpu, "start", &[(13, 0), (79, 0)]);
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    assert!(matches!(out, CheckOutcome::RolledBack { .. }), "{out:?}");
    assert!(!h.saved().is_bad(V2), "a hardware fault is not the image's");
    // XID 45 alone (a cleanup after a kill) blames nothing either.
    let (mut h, _, gpu) = with_gpus();
    xids_before(&h, &gpu, "start", &[(45, 0)]);
    assert_eq!(
        h.up.update_to(V2, Trigger::Poll).await.unwrap(),
        CheckOutcome::Updated(V2.into())
    );
}

#[tokio::test]
async fn a_hardware_xid_during_the_drain_keeps_the_old_worker() {
    let (mut h, _, gpu) = with_gpus();
    xids_before(&h, &gpu, "create", &[(79, 1)]);
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    assert!(
        matches!(&out, CheckOutcome::Aborted(m) if m.contains("XID 79")),
        "{out:?}"
    );
    // No swap: the old container stays (drained for the fault, as
    // gpu.drain_on_fault says), the new one is gone.
    let old = h.fake.container(W).expect("the old worker's container");
    assert_eq!(old.digest.as_deref(), Some(V1));
    assert!(h.fake.container(NEXT).is_none());
    let s = h.saved();
    assert!(s.gpu_hold.is_some() && !s.is_bad(V2) && s.drained);
}

#[tokio::test]
async fn images_that_turn_the_cuda_check_off_are_not_refused() {
    let (mut h, _, _gpu) = with_gpus();
    h.fake.set_image_env(
        &image(V2),
        &[
            "NVIDIA_REQUIRE_CUDA=cuda>=12.9",
            "NVIDIA_DISABLE_REQUIRE=true",
        ],
    );
    assert_eq!(
        h.up.update_to(V2, Trigger::Poll).await.unwrap(),
        CheckOutcome::Updated(V2.into())
    );
}
