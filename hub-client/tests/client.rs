//! The hub client against the mock hub, over real HTTP on loopback.

#![cfg(feature = "mock")]

use std::path::{Path, PathBuf};
use std::time::Duration;

use hub_client::mock::{MockHub, Mode};
use hub_client::{
    Desired, DrainNotice, ErrorKind, EventStream, HubClient, HubOptions, Nudge, Report,
    TokenSource, WorkerView,
};
use serde_json::json;

const AGENT: &str = "gpu-host-17";
const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

/// A client of `hub` for [`AGENT`]: short timeout, fast retries.
fn client(hub: &MockHub, token: TokenSource) -> HubClient {
    let mut o = HubOptions::new(hub.url(), AGENT, token);
    o.timeout = Duration::from_secs(2);
    o.retry_base = Duration::from_millis(10);
    o.stream_idle_timeout = Duration::from_secs(5);
    HubClient::new(o).unwrap()
}

fn token_file(dir: &Path, token: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("hub-token");
    let tmp = dir.join("hub-token.new");
    std::fs::write(&tmp, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, &p).unwrap();
    p
}

fn desired(digest: &str) -> Desired {
    Desired {
        repository: "ghcr.io/acme/worker".into(),
        digest: digest.into(),
    }
}

fn nudge(reason: &str, digest: Option<&str>) -> Nudge {
    Nudge {
        reason: reason.into(),
        digest: digest.map(str::to_string),
    }
}

/// Waits (up to 5 s) for `cond`.
async fn until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The next event of `s` (within 5 s) as (id, nudge).
async fn next_nudge(s: &mut EventStream) -> (String, Nudge) {
    let ev = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("an event within 5 s")
        .expect("no stream error")
        .expect("the stream is open");
    assert_eq!(ev.event, "nudge");
    (
        ev.id.expect("nudges carry an id"),
        Nudge::parse(&ev.data).unwrap(),
    )
}

/// Nothing more arrives on `s` for a while (keep-alives do not count as events).
async fn quiet(s: &mut EventStream) {
    if let Ok(r) = tokio::time::timeout(Duration::from_millis(300), s.next()).await {
        panic!("expected no event, got {r:?}");
    }
}

/// A plain HTTP client for the worker routes.
fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

#[tokio::test]
async fn desired_is_a_digest_or_no_opinion() {
    let hub = MockHub::start(None).await.unwrap();
    let c = client(&hub, TokenSource::none());
    assert_eq!(c.desired().await.unwrap(), None);
    hub.set_desired(AGENT, Some(desired(D1)));
    assert_eq!(c.desired().await.unwrap(), Some(desired(D1)));
    // Another agent's desired digest is not ours.
    hub.set_desired("other", Some(desired(D2)));
    assert_eq!(c.desired().await.unwrap(), Some(desired(D1)));
    hub.set_desired(AGENT, None);
    assert_eq!(c.desired().await.unwrap(), None);
    let calls: Vec<_> = hub.received().iter().map(|r| (r.seq, r.call)).collect();
    assert_eq!(
        calls,
        [
            (1, "desired"),
            (2, "desired"),
            (3, "desired"),
            (4, "desired")
        ]
    );
}

#[tokio::test]
async fn garbage_answers_are_garbage_errors() {
    let hub = MockHub::start(None).await.unwrap();
    let c = client(&hub, TokenSource::none());
    hub.set_desired(AGENT, Some(desired("sha256:XYZ")));
    let e = c.desired().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Garbage, "{e}");
    assert!(e.to_string().contains("'digest'"), "{e}");

    hub.set_desired(AGENT, Some(desired(D1)));
    hub.set_mode(Mode::Garbage);
    let e = c.desired().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Garbage, "{e}");
    let e = c.worker().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Garbage, "{e}");
    let e = c.events(None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Garbage, "{e}");
    assert!(e.to_string().contains("text/html"), "{e}");
    // Garbage is not retried.
    assert_eq!(
        hub.received()
            .iter()
            .filter(|r| r.call == "desired")
            .count(),
        2
    );

    hub.set_mode(Mode::Normal);
    assert_eq!(c.desired().await.unwrap(), Some(desired(D1)));
}

#[tokio::test]
async fn a_wrong_or_missing_token_is_unauthorized() {
    let dir = tempfile::tempdir().unwrap();
    let hub = MockHub::start(Some("s3cret".into())).await.unwrap();
    hub.set_desired(AGENT, Some(desired(D1)));

    let wrong = client(&hub, TokenSource::file(token_file(dir.path(), "nope")));
    let e = wrong.desired().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    let e = wrong.events(None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    assert_eq!(hub.connects(AGENT), 0);

    let none = client(&hub, TokenSource::none());
    let e = none.report(&Report::default()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    assert!(hub.reports(AGENT).is_empty());

    let right = client(&hub, TokenSource::file(token_file(dir.path(), "s3cret")));
    assert_eq!(right.desired().await.unwrap(), Some(desired(D1)));
    hub.set_mode(Mode::Unauthorized);
    let e = right.desired().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
}

#[tokio::test]
async fn a_changed_token_file_is_used_on_the_next_call() {
    let dir = tempfile::tempdir().unwrap();
    let hub = MockHub::start(Some("new-token".into())).await.unwrap();
    let c = client(&hub, TokenSource::file(token_file(dir.path(), "old-token")));
    assert_eq!(
        c.worker().await.unwrap_err().kind(),
        ErrorKind::Unauthorized
    );
    token_file(dir.path(), "new-token");
    assert!(!c.worker().await.unwrap().registered);
}

#[tokio::test]
async fn down_is_unavailable_after_the_retries() {
    let hub = MockHub::start(None).await.unwrap();
    let c = client(&hub, TokenSource::none());
    hub.set_mode(Mode::Down);
    let e = c.desired().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("503"), "{e}");
    // One call and two retries.
    assert_eq!(hub.received().len(), 3);
    let e = c
        .drain(&DrainNotice {
            draining: true,
            reason: "swap".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(hub.drains(AGENT).is_empty());

    // Down for real: nothing listens.
    hub.set_mode(Mode::Normal);
    hub.stop().await;
    let e = c.desired().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    hub.restart().await.unwrap();
    assert_eq!(c.desired().await.unwrap(), None);
}

#[tokio::test]
async fn slower_than_the_timeout_is_a_timeout() {
    let hub = MockHub::start(None).await.unwrap();
    let mut o = HubOptions::new(hub.url(), AGENT, TokenSource::none());
    o.timeout = Duration::from_millis(300);
    o.retries = 0;
    let c = HubClient::new(o).unwrap();
    hub.set_mode(Mode::Slow(Duration::from_secs(3)));
    let started = std::time::Instant::now();
    let e = c.desired().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let e = c.events(None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    // Slow but within the timeout is fine.
    hub.set_mode(Mode::Slow(Duration::from_millis(50)));
    assert_eq!(c.desired().await.unwrap(), None);
}

#[tokio::test]
async fn reports_and_drain_notices_arrive_as_sent() {
    let hub = MockHub::start(None).await.unwrap();
    let c = client(&hub, TokenSource::none());
    let status = json!({
        "agent_id": AGENT, "phase": "idle", "current_digest": D1, "last_good_digest": D1,
        "drained": false, "pinned": null, "bad_digests": [D2],
        "last_check": "2024-05-01T12:00:00Z", "next_check": null, "last_error": null,
    });
    let event = json!({"at": "2024-05-01T12:00:00Z", "kind": "update", "from": D2, "to": D1,
        "outcome": "success", "trigger": "nudge", "error": null, "downtime_ms": 1200});
    let r = Report {
        status: status.as_object().unwrap().clone(),
        event: Some(event.clone()),
    };
    c.report(&r).await.unwrap();
    c.report(&Report {
        event: None,
        ..r.clone()
    })
    .await
    .unwrap();
    let mut with_event = status.clone();
    with_event["event"] = event;
    assert_eq!(hub.reports(AGENT), [with_event, status]);

    let on = DrainNotice {
        draining: true,
        reason: format!("update to {D2}"),
    };
    let off = DrainNotice {
        draining: false,
        reason: "verified".into(),
    };
    c.drain(&on).await.unwrap();
    c.drain(&off).await.unwrap();
    assert_eq!(hub.drains(AGENT), [on, off]);
    let calls: Vec<_> = hub.received().iter().map(|r| r.call).collect();
    assert_eq!(calls, ["report", "report", "drain", "drain"]);
    assert_eq!(hub.received()[2].body["draining"], true);
}

#[tokio::test]
async fn the_mock_refuses_bodies_of_the_wrong_shape() {
    let hub = MockHub::start(None).await.unwrap();
    let h = http();
    let post = |path: &str, body: &'static str| {
        h.post(hub.url().join(path).unwrap())
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    let report = format!("v1/agents/{AGENT}/report");
    let drain = format!("v1/agents/{AGENT}/drain");
    assert_eq!(post(&report, "[1, 2]").await.unwrap().status(), 400);
    assert_eq!(post(&report, "not json").await.unwrap().status(), 400);
    assert_eq!(
        post(&drain, r#"{"draining": "yes"}"#)
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        post(&drain, r#"{"draining": true}"#)
            .await
            .unwrap()
            .status(),
        204
    );
    assert!(hub.reports(AGENT).is_empty());
    assert_eq!(hub.drains(AGENT).len(), 1);
}

#[tokio::test]
async fn the_worker_view_follows_registration() {
    let hub = MockHub::start(Some("agent-token".into())).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let c = client(
        &hub,
        TokenSource::file(token_file(dir.path(), "agent-token")),
    );
    let unknown = WorkerView {
        registered: false,
        digest: None,
        in_flight: Some(0),
    };
    assert_eq!(c.worker().await.unwrap(), unknown);

    hub.register(AGENT, Some(D1));
    hub.set_worker_in_flight(AGENT, 3);
    let view = c.worker().await.unwrap();
    assert_eq!(
        view,
        WorkerView {
            registered: true,
            digest: Some(D1.into()),
            in_flight: Some(3)
        }
    );
    assert_eq!(hub.worker(AGENT), view);

    hub.unregister(AGENT);
    let view = c.worker().await.unwrap();
    assert!(!view.registered);
    assert_eq!(view.digest, None);

    // While refused, a registration changes nothing.
    hub.refuse_registration(AGENT, true);
    hub.register(AGENT, Some(D2));
    assert!(!c.worker().await.unwrap().registered);
    hub.refuse_registration(AGENT, false);
    hub.register(AGENT, Some(D2));
    assert_eq!(c.worker().await.unwrap().digest.as_deref(), Some(D2));
}

#[tokio::test]
async fn workers_register_over_http_without_the_token_and_can_be_refused() {
    let hub = MockHub::start(Some("agent-token".into())).await.unwrap();
    let h = http();
    let register = hub
        .url()
        .join(&format!("v1/workers/{AGENT}/register"))
        .unwrap();
    // busybox: wget --post-data "digest=$GPU_AGENT_DIGEST"
    let r = h
        .post(register.clone())
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("digest={D1}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(hub.worker(AGENT).digest.as_deref(), Some(D1));

    hub.refuse_registration(AGENT, true);
    let r = h
        .post(register.clone())
        .json(&json!({ "digest": D2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        hub.worker(AGENT).digest.as_deref(),
        Some(D1),
        "not recorded"
    );

    hub.refuse_registration(AGENT, false);
    let r = h
        .post(register.clone())
        .json(&json!({ "digest": D2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(hub.worker(AGENT).digest.as_deref(), Some(D2));

    let r = h
        .post(register)
        .json(&json!({ "digest": "latest" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let in_flight = hub
        .url()
        .join(&format!("v1/workers/{AGENT}/in_flight"))
        .unwrap();
    let r = h.post(in_flight).body("in_flight=4").send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(hub.worker(AGENT).in_flight, Some(4));
    // Worker routes are not protocol calls.
    assert!(hub.received().is_empty());
}

#[tokio::test]
async fn a_nudge_arrives_on_the_open_stream() {
    let hub = MockHub::start(None).await.unwrap();
    let c = client(&hub, TokenSource::none());
    let mut s = c.events(None).await.unwrap();
    until("the stream to open", || hub.stream_count(AGENT) == 1).await;
    let id = hub.nudge(AGENT, nudge("release", Some(D2)));
    hub.nudge("other-host", nudge("not for us", None));
    let (got_id, n) = next_nudge(&mut s).await;
    assert_eq!(got_id, id.to_string());
    assert_eq!(n, nudge("release", Some(D2)));
    assert_eq!(s.retry_hint(), Some(Duration::from_millis(1000)));
    assert_eq!(s.last_event_id(), Some(id.to_string().as_str()));
    quiet(&mut s).await;
    assert_eq!(hub.connects(AGENT), 1);
    drop(s);
    until("the stream to close", || hub.stream_count(AGENT) == 0).await;
}

#[tokio::test]
async fn keep_alive_comments_hold_the_stream_open() {
    let hub = MockHub::start(None).await.unwrap();
    hub.set_keep_alive(Duration::from_millis(100));
    let mut o = HubOptions::new(hub.url(), AGENT, TokenSource::none());
    o.stream_idle_timeout = Duration::from_millis(400);
    let c = HubClient::new(o).unwrap();
    let mut s = c.events(None).await.unwrap();
    // Longer than the idle timeout, with no event: the comments keep it alive.
    quiet(&mut s).await;
    quiet(&mut s).await;
    let id = hub.nudge(AGENT, nudge("still here", None));
    assert_eq!(next_nudge(&mut s).await.0, id.to_string());

    // Without them, the client gives the stream up.
    hub.set_keep_alive(Duration::from_secs(60));
    let mut s = c.events(None).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
}

#[tokio::test]
async fn after_a_restart_the_missed_nudges_are_replayed() {
    let hub = MockHub::start(None).await.unwrap();
    let c = client(&hub, TokenSource::none());
    let mut s = c.events(None).await.unwrap();
    until("the stream to open", || hub.stream_count(AGENT) == 1).await;
    let first = hub.nudge(AGENT, nudge("one", None));
    assert_eq!(next_nudge(&mut s).await.0, first.to_string());
    let last = s.last_event_id().unwrap().to_string();

    hub.stop().await;
    assert_eq!(hub.stream_count(AGENT), 0);
    let end = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("the stream ends at once");
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
    assert_eq!(
        c.events(Some(&last)).await.unwrap_err().kind(),
        ErrorKind::Unavailable
    );

    let missed = [
        hub.nudge(AGENT, nudge("two", None)),
        hub.nudge(AGENT, nudge("three", Some(D1))),
    ];
    hub.restart().await.unwrap();
    let mut s = c.events(Some(&last)).await.unwrap();
    let (id2, n2) = next_nudge(&mut s).await;
    let (id3, n3) = next_nudge(&mut s).await;
    assert_eq!([id2, id3], missed.map(|i| i.to_string()));
    assert_eq!(
        (n2.reason.as_str(), n3.digest.as_deref()),
        ("two", Some(D1))
    );
    quiet(&mut s).await;
    // And new ones follow the replay.
    let four = hub.nudge(AGENT, nudge("four", None));
    assert_eq!(next_nudge(&mut s).await.0, four.to_string());

    // A connection without Last-Event-ID gets no replay.
    let mut fresh = c.events(None).await.unwrap();
    quiet(&mut fresh).await;
    assert_eq!(hub.connects(AGENT), 3);
    let events: Vec<_> = hub
        .received()
        .into_iter()
        .filter(|r| r.call == "events")
        .map(|r| r.body["last_event_id"].clone())
        .collect();
    // (The call while it was stopped never reached it.)
    assert_eq!(events, [json!(null), json!(last), json!(null)]);
}

#[tokio::test]
async fn the_backlog_keeps_the_last_hundred() {
    let hub = MockHub::start(None).await.unwrap();
    let c = client(&hub, TokenSource::none());
    let ids: Vec<u64> = (0..105)
        .map(|i| hub.nudge(AGENT, nudge(&format!("n{i}"), None)))
        .collect();
    let mut s = c.events(Some(&ids[0].to_string())).await.unwrap();
    let (id, n) = next_nudge(&mut s).await;
    // ids[1..5] fell out of the backlog.
    assert_eq!(id, ids[5].to_string());
    assert_eq!(n.reason, "n5");
    for want in &ids[6..] {
        assert_eq!(next_nudge(&mut s).await.0, want.to_string());
    }
    quiet(&mut s).await;
}

/// A hub that answers every request with `status` and `body` (raw HTTP/1.1 on loopback).
async fn hostile_hub(status: &'static str, body: String) -> url::Url {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body.as_bytes()).await;
            });
        }
    });
    url::Url::parse(&format!("http://{addr}/")).unwrap()
}

#[tokio::test]
async fn escape_sequences_from_the_hub_arrive_escaped_and_capped() {
    // An error body.
    let body = format!(
        "\u{1b}[2J\u{1b}]0;owned\u{7}\u{9b}31m{}",
        "x".repeat(10_000)
    );
    for status in [
        "500 Internal Server Error",
        "403 Forbidden",
        "404 Not Found",
    ] {
        let url = hostile_hub(status, body.clone()).await;
        let mut o = HubOptions::new(url, AGENT, TokenSource::none());
        o.timeout = Duration::from_secs(2);
        o.retries = 0;
        let e = HubClient::new(o)
            .unwrap()
            .desired()
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\\u{1b}[2J\\u{1b}]0;owned\\u{7}\\u{9b}31m"),
            "{e}"
        );
        assert!(!hub_client::text::has_control(&e), "{e:?}");
        assert!(e.len() < 1000, "{} bytes", e.len());
    }
    // A 200 that is not JSON.
    let url = hostile_hub("200 OK", body).await;
    let mut o = HubOptions::new(url, AGENT, TokenSource::none());
    o.timeout = Duration::from_secs(2);
    let e = HubClient::new(o)
        .unwrap()
        .desired()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        !hub_client::text::has_control(&e) && e.len() < 1000,
        "{e:?}"
    );

    // A nudge's reason, through the real event stream.
    let hub = MockHub::start(None).await.unwrap();
    let c = client(&hub, TokenSource::none());
    let mut s = c.events(None).await.unwrap();
    until("the stream to open", || hub.stream_count(AGENT) == 1).await;
    hub.nudge(
        AGENT,
        nudge("\u{1b}]8;;http://evil/\u{7}click\u{1b}]8;;\u{7}", None),
    );
    let (_, n) = next_nudge(&mut s).await;
    assert_eq!(
        n.reason,
        "\\u{1b}]8;;http://evil/\\u{7}click\\u{1b}]8;;\\u{7}"
    );
}
