//! The driver's decisions against fakes of every port ([`FakeEngine`], and
//! `fakes.rs`: the registry, the hub, the worker probe, the clock): which
//! container runs after an update, a failure or a crash, what is marked bad,
//! and what the journal says. The same sequences run against a real dockerd,
//! registry and hub in `agent/tests/`; here they run on paused tokio time, so
//! a verification's polls and a drain's timeout take no real time, and can
//! script what a real engine or hub rarely does on cue.
//!
//! Every test builds a [`Harness`] (settings with no `health.http`, so health
//! is the fake container's HEALTHCHECK state; a fresh state folder; fake
//! ports), sets the scene in the fakes, drives the [`Updater`] and asserts the
//! outcome. One file per job of the driver: `sequence.rs`, `converge.rs`,
//! `operator.rs`, `gpu.rs`, and `ports.rs` (the registry's tag and semver
//! check, the hub's desired digest and nudges, the registration check, the
//! hub's in-flight count as the drain), `outage.rs` (a full disk, rollbacks
//! that blame nothing, failures of the host, a worker that refuses `DELETE`),
//! `dry_run.rs` (dry runs change nothing, and their verdicts hold).

mod converge;
mod dry_run;
mod fakes;
mod fleet;
mod gpu;
mod operator;
mod outage;
mod ports;
mod sequence;
mod spec_change;
mod trust;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;

use time::OffsetDateTime;

use self::fakes::{FakeClock, FakeHub, FakeProbe, FakeRegistry, FakeTrust};
use super::journal::Pending;
use super::*;
use crate::config::Settings;
use crate::docker::fake::{self, FakeEngine, OnStart};
use crate::docker::{Container, Engine, EngineError, HealthState};

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
/// The policy is `tag = "stable"` unless `extra` sets `version`.
fn settings(dir: &Path, extra: &str) -> Settings {
    let policy = if extra.contains("version = ") {
        ""
    } else {
        "tag = \"stable\""
    };
    let main = format!(
        r#"
[agent]
id = "{AGENT}"
state_dir = "{dir}"
[docker]
host = "unix:///nonexistent/docker.sock"
[image]
repository = "{REPO}"
{policy}
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
fn interrupted(from: &str, to: &str, step: Phase) -> State {
    State {
        pending: Some(Pending {
            from: Some(from.into()),
            to: to.into(),
            trigger: Trigger::Poll,
            step,
            started_at: OffsetDateTime::now_utc(),
            error: (step == Phase::RollingBack).then(|| "the new worker exited with code 3".into()),
            kind: Kind::Update,
            pin: None,
            to_spec: None,
            from_spec: None,
            changed: Vec::new(),
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
    registry: Arc<FakeRegistry>,
    probe: Arc<FakeProbe>,
    hub: Option<Arc<FakeHub>>,
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
        // Seeded containers carry the config's settings, as this version makes them.
        fake.seed_spec(Some(crate::docker::SpecHash::of(&settings.worker)));
        let registry = Arc::new(FakeRegistry::default());
        let probe = Arc::new(FakeProbe::default());
        let hub = settings.hub.clone().map(|s| Arc::new(FakeHub::new(s)));
        let ports = Ports {
            registry: registry.clone(),
            probe: probe.clone(),
            clock: Arc::new(FakeClock::default()),
            trust: None,
        };
        let mut up = Updater::new(fake.clone(), ports, settings, CancellationToken::new()).unwrap();
        up.set_hub(hub.clone().map(|h| h as Arc<dyn super::ports::Hub>));
        Harness {
            fake,
            registry,
            probe,
            hub,
            up,
            _dir: dir,
            errors,
            _log: log,
        }
    }

    /// [`Harness::serving`] with `[image.verify]` as `trust` says.
    fn trusting(trust: FakeTrust, extra: &str) -> (Self, String) {
        let (mut h, old) = Harness::serving(V1, &[V2], extra);
        let settings = h.up.settings.clone();
        let hub = h.hub.clone();
        h.up = Updater::new(
            h.fake.clone(),
            Ports {
                registry: h.registry.clone(),
                probe: h.probe.clone(),
                clock: Arc::new(FakeClock::default()),
                trust: Some(Arc::new(trust)),
            },
            settings,
            CancellationToken::new(),
        )
        .unwrap();
        h.up.set_hub(hub.map(|h| h as Arc<dyn super::ports::Hub>));
        (h, old)
    }

    /// Fresh fake ports (for a second updater over the same engine).
    fn ports() -> Ports {
        Ports {
            registry: Arc::new(FakeRegistry::default()),
            probe: Arc::new(FakeProbe::default()),
            clock: Arc::new(FakeClock::default()),
            trust: None,
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
    /// along allowed transitions (a refused move is logged as an error).
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
