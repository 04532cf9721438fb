//! The daemon under a real `NOTIFY_SOCKET`: readiness, status lines,
//! watchdog pings and stopping, read from a datagram socket the test binds.

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// Collects every datagram sent to a socket in a folder of its own.
struct Notify {
    path: std::path::PathBuf,
    got: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Notify {
    fn bind() -> Notify {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let got = Arc::new(Mutex::new(vec![]));
        let sink = got.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                sink.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).trim_end().to_string());
            }
        });
        Notify {
            path,
            got,
            _dir: dir,
        }
    }

    fn messages(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }

    fn count(&self, prefix: &str) -> usize {
        self.messages()
            .iter()
            .filter(|m| m.starts_with(prefix))
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_status_watchdog_and_stopping_reach_systemd() {
    let s = Setup::new("notify");
    let v1 = s.push("v1", "stable");
    let n = Notify::bind();
    let cfg = s.config("tag = \"stable\"", &s.env(""), "");
    let mut agent = s.start_agent_env(
        &cfg,
        &[
            ("NOTIFY_SOCKET", n.path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    s.wait_history(&v1, "success", &agent).await;
    let ready = wait_for(WAIT, || async { (n.count("READY=1") == 1).then_some(()) }).await;
    assert!(ready.is_some(), "no READY=1: {:?}", n.messages());

    // A status line per phase of the first deploy, ending on the running worker.
    let short: String = v1.trim_start_matches("sha256:").chars().take(12).collect();
    let idle = wait_for(WAIT, || async {
        n.messages()
            .iter()
            .any(|m| m == &format!("STATUS=idle; worker {short}"))
            .then_some(())
    })
    .await;
    assert!(idle.is_some(), "{:?}", n.messages());
    for phase in ["STATUS=pulling", "STATUS=verifying"] {
        assert!(
            n.messages().iter().any(|m| m.starts_with(phase)),
            "no {phase}: {:?}",
            n.messages()
        );
    }

    // Watchdog pings at half of WATCHDOG_USEC (1 s): about two a second.
    let before = n.count("WATCHDOG=1");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pings = n.count("WATCHDOG=1") - before;
    assert!((4..=8).contains(&pings), "{pings} pings in 3 s");

    assert_eq!(agent.terminate(), Some(0));
    assert_eq!(n.count("STOPPING=1"), 1, "{:?}", n.messages());
    assert!(s.running().await.is_some(), "the worker outlives the agent");
    assert!(
        !s.dir.path().join("agent.sock").exists(),
        "the control socket was left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_pings_go_on_during_a_long_update() {
    let s = Setup::new("watchdog-drain");
    let v1 = s.push("v1", "stable");
    let n = Notify::bind();
    let cfg = s.config(
        "tag = \"stable\"",
        &s.env("INFLIGHT_JOBS = \"4\", JOB_SECONDS = \"1\""),
        &s.drain_table("60s"),
    );
    let agent = s.start_agent_env(
        &cfg,
        &[
            ("NOTIFY_SOCKET", n.path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    s.wait_history(&v1, "success", &agent).await;
    let v2 = s.push("v2", "stable");
    agent.wait_log("waiting for in-flight jobs").await;
    let before = n.count("WATCHDOG=1");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = n.count("WATCHDOG=1") - before;
    assert!(
        during >= 3,
        "only {during} pings in 2 s of draining: a long update would be killed"
    );
    s.wait_history(&v2, "success", &agent).await;
}
