//! `[[notify]]` against real HTTP receivers on loopback (axum): what arrives
//! in each format, the outcome filter, a receiver that is down and then up,
//! one that answers 503 at first, and one too slow to answer, which must
//! never hold the sender.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use gpu_agent::config::{load_from_strs, Settings};
use gpu_agent::notify::{Notifier, NotifyOptions};
use gpu_agent::update::{HistoryEntry, Kind, Outcome, Trigger};
use serde_json::Value;
use time::OffsetDateTime;

/// One test at a time: the log test's subscriber must see every event of
/// its notifier (tracing caches per call site whether anyone listens), and
/// the metrics counters are the process's.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Value>>>,
    /// Requests seen, answered or not.
    hits: Arc<Mutex<u32>>,
    /// Answer 503 to this many requests first.
    fail_first: u32,
    /// Wait this long before answering.
    delay: Duration,
}

async fn hook(State(r): State<Receiver>, Json(body): Json<Value>) -> StatusCode {
    let n = {
        let mut h = r.hits.lock().unwrap();
        *h += 1;
        *h
    };
    tokio::time::sleep(r.delay).await;
    if n <= r.fail_first {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    r.got.lock().unwrap().push(body);
    StatusCode::OK
}

/// Serves `r` on `addr` (port 0: any) until the test ends; gives the address.
async fn serve(r: Receiver, addr: SocketAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/hooks/T0/s3cret-path", post(hook))
        .with_state(r);
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/hooks/T0/s3cret-path")
}

fn settings(notify: &str) -> Settings {
    let text = format!(
        "[agent]\nid = \"host-7\"\n[image]\nrepository = \"127.0.0.1:5000/acme/worker\"\ntag = \"stable\"\n{notify}"
    );
    load_from_strs(&[(PathBuf::from("/etc/gpu-agent/agent.toml"), text)]).unwrap()
}

fn entry(outcome: Outcome, error: Option<&str>) -> HistoryEntry {
    HistoryEntry {
        at: OffsetDateTime::now_utc(),
        kind: Kind::Update,
        from: Some(format!("sha256:{}", "a1".repeat(32))),
        to: Some(format!("sha256:{}", "b2".repeat(32))),
        outcome,
        trigger: Trigger::Poll,
        error: error.map(str::to_string),
        downtime_ms: Some(900),
        reason: None,
        user: None,
        marked_bad: None,
        gpu_hold: None,
        changed: Vec::new(),
        spec: None,
    }
}

fn fast() -> NotifyOptions {
    NotifyOptions {
        timeout: Duration::from_millis(500),
        attempts: 8,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(400),
        queue: 8,
    }
}

/// Waits until `r` got `n` bodies (at most `within`); gives them.
async fn wait_for(r: &Receiver, n: usize, within: Duration) -> Vec<Value> {
    let t0 = Instant::now();
    loop {
        let got = r.got.lock().unwrap().clone();
        if got.len() >= n || t0.elapsed() > within {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn json_and_slack_receivers_get_the_outcomes_they_asked_for() {
    let _one = SERIAL.lock().await;
    let all = Receiver::default();
    let bad_only = Receiver::default();
    let slack = Receiver::default();
    let (a, b, c) = (
        serve(all.clone(), "127.0.0.1:0".parse().unwrap()).await,
        serve(bad_only.clone(), "127.0.0.1:0".parse().unwrap()).await,
        serve(slack.clone(), "127.0.0.1:0".parse().unwrap()).await,
    );
    let s = settings(&format!(
        "[[notify]]\nurl = \"{}\"\n\
         [[notify]]\nurl = \"{}\"\nformat = \"json\"\nevents = [\"rolled_back\", \"failed\"]\n\
         [[notify]]\nurl = \"{}\"\nformat = \"slack\"\nevents = [\"rolled_back\"]\n",
        url(a),
        url(b),
        url(c)
    ));
    let n = Notifier::spawn_with(&s, fast());
    n.send(&entry(Outcome::Success, None));
    n.send(&entry(
        Outcome::RolledBack,
        Some("worker <gpu-worker> not healthy within 60s"),
    ));

    let got = wait_for(&all, 2, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 2, "{got:?}");
    // In order, each with who it is about and the entry's own fields.
    assert_eq!(got[0]["outcome"], "success");
    assert_eq!(got[1]["outcome"], "rolled_back");
    for v in &got {
        assert_eq!(v["agent"], "host-7");
        assert_eq!(v["worker"], "gpu-worker");
        assert_eq!(v["image"], "127.0.0.1:5000/acme/worker");
        assert_eq!(v["kind"], "update");
        assert_eq!(v["to"], format!("sha256:{}", "b2".repeat(32)));
    }
    assert_eq!(
        got[1]["error"],
        "worker <gpu-worker> not healthy within 60s"
    );
    assert!(
        got[1]["text"].as_str().unwrap().contains("rolled back"),
        "{}",
        got[1]
    );

    let got = wait_for(&bad_only, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["outcome"], "rolled_back");

    let got = wait_for(&slack, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let text = got[0]["text"].as_str().unwrap();
    assert!(
        text.starts_with(":rotating_light: gpu-agent host-7: update of gpu-worker rolled back"),
        "{text}"
    );
    assert!(
        text.contains("worker &lt;gpu-worker&gt; not healthy"),
        "{text}"
    );
    assert_eq!(
        got[0].as_object().unwrap().len(),
        1,
        "only text: {}",
        got[0]
    );

    n.shutdown(Duration::from_secs(2)).await;
    // Nothing more came: the filter held.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(bad_only.got.lock().unwrap().len(), 1);
    assert_eq!(slack.got.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_receiver_that_is_down_then_up_gets_the_entry_and_so_does_one_that_fails_at_first() {
    let _one = SERIAL.lock().await;
    // A port nobody listens on yet.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let flaky = Receiver {
        fail_first: 2,
        ..Receiver::default()
    };
    let f = serve(flaky.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let s = settings(&format!(
        "[[notify]]\nurl = \"{}\"\n[[notify]]\nurl = \"{}\"\n",
        url(addr),
        url(f)
    ));
    let n = Notifier::spawn_with(&s, fast());
    n.send(&entry(Outcome::Failed, Some("pull failed")));

    // The flaky one: 503, 503, then 200.
    let got = wait_for(&flaky, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(*flaky.hits.lock().unwrap(), 3);

    // The down one comes up after a few tries.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let late = Receiver::default();
    serve(late.clone(), addr).await;
    let got = wait_for(&late, 1, Duration::from_secs(5)).await;
    assert_eq!(
        got.len(),
        1,
        "the entry never arrived after the receiver came up"
    );
    assert_eq!(got[0]["outcome"], "failed");
    assert_eq!(got[0]["error"], "pull failed");
    n.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_slow_receiver_never_holds_the_sender_and_the_queue_is_bounded() {
    let _one = SERIAL.lock().await;
    let slow = Receiver {
        delay: Duration::from_secs(30),
        ..Receiver::default()
    };
    let addr = serve(slow.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let s = settings(&format!("[[notify]]\nurl = \"{}\"\n", url(addr)));
    let opts = NotifyOptions {
        timeout: Duration::from_millis(300),
        attempts: 2,
        queue: 4,
        ..fast()
    };
    let n = Notifier::spawn_with(&s, opts);
    let dropped_before = metric(r#"gpu_agent_notify_total{result="dropped"}"#);
    let t0 = Instant::now();
    for _ in 0..50 {
        n.send(&entry(Outcome::RolledBack, None));
    }
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(100), "50 sends took {took:?}");
    // At most the queue and the one in flight are kept; the rest were dropped.
    let dropped = metric(r#"gpu_agent_notify_total{result="dropped"}"#) - dropped_before;
    assert!(dropped >= 45.0, "dropped {dropped}");
    // The timeout cut each try: the receiver saw the first entry twice
    // (two tries) within about a second, not after 30 s.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        *slow.hits.lock().unwrap() >= 2,
        "{}",
        *slow.hits.lock().unwrap()
    );
    assert!(slow.got.lock().unwrap().is_empty());
    // A stop with entries still queued is bounded too.
    let t0 = Instant::now();
    n.shutdown(Duration::from_millis(300)).await;
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}

/// A series' value in the process's metrics text.
fn metric(series: &str) -> f64 {
    let text = gpu_agent::metrics::global().render(&Default::default());
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{series} ")))
        .unwrap_or_else(|| panic!("{series} not in\n{text}"))
        .parse()
        .unwrap()
}

/// Log lines, kept for the test to read.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_webhook_path_never_reaches_the_logs() {
    let _one = SERIAL.lock().await;
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // One receiver that always fails, one address nobody listens on.
    let failing = Receiver {
        fail_first: u32::MAX,
        ..Receiver::default()
    };
    let f = serve(failing.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = free.local_addr().unwrap();
    drop(free);
    let s = settings(&format!(
        "[[notify]]\nurl = \"{}\"\n[[notify]]\nurl = \"{}\"\n",
        url(f),
        url(down)
    ));
    let opts = NotifyOptions {
        attempts: 2,
        ..fast()
    };
    let n = Notifier::spawn_with(&s, opts);
    n.send(&entry(Outcome::Aborted, None));
    n.shutdown(Duration::from_secs(5)).await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("notification not delivered"), "{text}");
    assert!(text.contains(&format!("http://{f}")), "{text}");
    assert!(text.contains(&format!("http://{down}")), "{text}");
    assert!(!text.contains("s3cret-path"), "{text}");
    assert_eq!(*failing.hits.lock().unwrap(), 2);
}
