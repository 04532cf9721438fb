//! The hub's event stream against real TCP servers that misbehave, and the
//! nudges that pile up while the loop is busy: the `Hub` of the library, its
//! tasks started as the daemon starts them. No engine or registry needed.
//!
//! - a hub that accepts the connection and closes it at once, or that answers
//!   `200 text/event-stream` and ends the stream at once, is retried with a
//!   backoff that grows (not every second forever);
//! - when nudges pile up faster than the loop takes them, the newest one is
//!   the one the loop gets.

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpu_agent::hub::{Hub, Nudges};
use gpu_agent::update::View;
use hub_client::mock::MockHub;
use hub_client::Nudge;
use tokio_util::sync::CancellationToken;

/// A config with the hub at `url`, loaded as the daemon loads it.
fn settings(dir: &std::path::Path, url: &str) -> gpu_agent::config::Settings {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "[agent]\nid = \"hub-stream\"\nstate_dir = \"{}\"\n\n[image]\nrepository = \"127.0.0.1:5/x/y\"\n\n[hub]\nurl = \"{url}\"\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    gpu_agent::config::load(&path).unwrap()
}

/// Starts the hub's tasks as the daemon does; returns the nudges and the stop.
fn start(settings: gpu_agent::config::Settings) -> (Arc<Hub>, Nudges, CancellationToken) {
    gpu_agent::init_tls();
    let hub = Hub::from_settings(&settings).unwrap().unwrap();
    let (_view_tx, view) = tokio::sync::watch::channel(View::default());
    let (_settings_tx, settings_rx) = tokio::sync::watch::channel(Arc::new(settings));
    let nudges = Nudges::new();
    let stop = CancellationToken::new();
    hub.start(
        view,
        settings_rx,
        nudges.clone(),
        stop.clone(),
        stop.clone(),
    );
    (hub, nudges, stop)
}

/// A TCP server on loopback that does `serve` with each connection; counts them.
fn server(serve: fn(std::net::TcpStream)) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            c.fetch_add(1, Ordering::SeqCst);
            serve(conn);
        }
    });
    (url, count)
}

/// Counts the connections the agent makes to a misbehaving hub in 10 s. With
/// a backoff that grows (1 s, 2 s, 4 s, 8 s, plus up to half as much jitter)
/// that is at most 4; reconnecting every second or two, 6 or more.
async fn connections_in_10s(serve: fn(std::net::TcpStream)) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let (url, count) = server(serve);
    let (hub, _nudges, stop) = start(settings(dir.path(), &url));
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.cancel();
    let n = count.load(Ordering::SeqCst);
    eprintln!("{n} connections in 10 s; status: {:?}", hub.status());
    assert!(hub.status().events_error.is_some());
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hub_that_accepts_and_closes_at_once_is_retried_with_a_growing_backoff() {
    let n = connections_in_10s(drop).await;
    assert!(
        (2..=4).contains(&n),
        "{n} connections in 10 s: the backoff does not grow"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hub_that_ends_the_event_stream_at_once_is_retried_with_a_growing_backoff() {
    // A proper 200 with the stream's content type, and the end of the body.
    let n = connections_in_10s(|mut conn| {
        use std::io::{Read, Write};
        let mut buf = [0u8; 4096];
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = conn.read(&mut buf);
        let _ = conn.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    })
    .await;
    assert!(
        (2..=4).contains(&n),
        "{n} connections in 10 s: an event stream that ends at once resets the backoff"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn when_nudges_pile_up_the_newest_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockHub::start(None).await.unwrap();
    let (hub, nudges, stop) = start(settings(dir.path(), mock.url().as_str()));
    let open = Instant::now();
    while hub.status().events != "connected" {
        assert!(
            open.elapsed() < Duration::from_secs(20),
            "the stream never opened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The loop is busy (an update): nobody takes the nudges while 200 arrive.
    let digest = |i: u32| format!("sha256:{i:064x}");
    for i in 1..=200 {
        mock.nudge(
            "hub-stream",
            Nudge {
                reason: format!("nudge {i}"),
                digest: Some(digest(i)),
            },
        );
    }
    let sent = Instant::now();
    while nudges.replaced() < 199 {
        assert!(
            sent.elapsed() < Duration::from_secs(20),
            "only {} nudges arrived",
            nudges.replaced() + 1
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The loop comes back: one check, for the newest nudge.
    let n = tokio::time::timeout(Duration::from_secs(1), nudges.recv())
        .await
        .expect("a nudge waits");
    assert_eq!(n.digest.as_deref(), Some(digest(200).as_str()), "{n:?}");
    assert!(nudges.take().is_none(), "one check for the whole pile");
    // And the next one after that is not lost either.
    mock.nudge(
        "hub-stream",
        Nudge {
            reason: "later".into(),
            digest: Some(digest(201)),
        },
    );
    let n = tokio::time::timeout(Duration::from_secs(10), nudges.recv())
        .await
        .expect("the later nudge arrives");
    assert_eq!(n.digest.as_deref(), Some(digest(201).as_str()));
    stop.cancel();
}
