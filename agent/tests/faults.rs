//! The fault matrix's cases that the other suites do not already cover
//! (docs/reliability.md maps every case to its test): a registry slower than
//! the request timeout, a hub event stream cut in the middle of an event, the
//! engine restarted in the middle of a pull, a swap and a verification (on a
//! private dockerd of the test's own), a full state directory, a truncated
//! state file, a drain endpoint that never answers, and 100 agentctl calls
//! at once during an update.
//!
//! Each case checks that the worker is kept (the same container), that the
//! history is intact, and that `agentctl status --json` says what went wrong.

mod common;
#[allow(dead_code)]
mod common_registry;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use common_registry::mock::{after, reply, Mock};
use gpu_agent::docker::{BollardEngine, Container, Engine};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn history_bytes(s: &Setup) -> Vec<u8> {
    std::fs::read(s.state_dir().join("history.jsonl")).unwrap_or_default()
}

/// Every line of history.jsonl parses (no torn or glued lines).
fn assert_history_parses(s: &Setup) {
    let text = std::fs::read_to_string(s.state_dir().join("history.jsonl")).unwrap();
    for (i, line) in text.lines().enumerate() {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "history line {} does not parse: {line:?}",
            i + 1
        );
    }
}

/// Waits until `status --json` has a `last_error` that `ok` accepts; returns it.
async fn wait_last_error(s: &Setup, agent: &Agent, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    let mut seen = String::new();
    while Instant::now() < deadline {
        let st = status(s).await;
        seen = st["last_error"].as_str().unwrap_or_default().to_string();
        if ok(&seen) {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "status never showed the expected last_error (last: {seen:?})\n{}",
        agent.log()
    )
}

// ---------------------------------------------------------------------------
// The registry, slower than the request timeout

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_slower_than_the_request_timeout_keeps_the_worker() {
    let s = Setup::new("f-regslow");
    let v1 = s.push("v1", "stable");
    let cfg = s.config("tag = \"stable\"", &s.env(""), "");
    let agent = s.start_agent(&cfg);
    s.wait_history(&v1, "success", &agent).await;
    drop(agent);
    let worker = s.running().await.unwrap();
    let history = history_bytes(&s);

    // A registry that answers, but only after 4 s; the agent's request
    // timeout is lowered to 2 s (a test-build switch; 30 s in production).
    let slow = Mock::start(|_| after(Duration::from_secs(4), reply(200, &[], "{}"))).await;
    let agent = s.start_agent_env(
        &cfg.replace(&s.registry.host(), &slow.addr.to_string()),
        &[("GPU_AGENT_TEST_REGISTRY_TIMEOUT_S", "2")],
    );
    let err = wait_last_error(&s, &agent, |e| {
        e.contains("timed out") || e.contains("timeout")
    })
    .await;
    assert!(
        err.contains(&slow.addr.to_string()),
        "names the registry: {err}"
    );
    let now = s.running().await.expect("the worker keeps running");
    assert_eq!(now.id, worker.id);
    assert_eq!(
        history_bytes(&s),
        history,
        "nothing was written to the history"
    );
    assert_eq!(status(&s).await["current_digest"], v1.as_str());
    // Retried: more than one HEAD reached the slow registry.
    assert!(slow.requests().len() > 1, "{:?}", slow.summary());
    assert_eq!(agent_alive(agent), None);
}

fn agent_alive(mut agent: Agent) -> Option<i32> {
    agent.exited()
}

// ---------------------------------------------------------------------------
// The hub's event stream, cut in the middle of an event

/// A hub on raw TCP: the event stream sends half a nudge and closes; every
/// other call is answered 204 (no opinion, report taken).
struct CutHub {
    port: u16,
    streams: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CutHub {
    async fn start() -> CutHub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let streams = Arc::new(AtomicUsize::new(0));
        let count = streams.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let count = count.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&head);
                    let first = line.lines().next().unwrap_or_default().to_string();
                    if first.contains("/events") {
                        count.fetch_add(1, Ordering::SeqCst);
                        let _ = sock
                            .write_all(
                                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                                  Cache-Control: no-cache\r\nConnection: close\r\n\r\n\
                                  : hello\n\nid: 7\nevent: nudge\ndata: {\"reason\": \"cut\", \"dig",
                            )
                            .await;
                        let _ = sock.flush().await;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        // Close in the middle of the event.
                    } else {
                        let _ = sock
                            .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                            .await;
                    }
                    let _ = sock.shutdown().await;
                });
            }
        });
        CutHub {
            port,
            streams,
            task,
        }
    }
}

impl Drop for CutHub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_event_stream_cut_mid_event_is_not_acted_on_and_is_reopened() {
    let s = Setup::new("f-hubcut");
    let hub = CutHub::start().await;
    let token = s.dir.path().join("hub-token");
    std::fs::write(&token, "cut-token-5e1d\n").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let v1 = s.push("v1", "stable");
    let cfg = s
        .config(
            "tag = \"stable\"",
            &s.env(""),
            &format!(
                "[hub]\nurl = \"http://127.0.0.1:{}\"\ntoken_file = \"{}\"\n",
                hub.port,
                token.display()
            ),
        )
        .replace("poll_interval = \"1s\"", "poll_interval = \"1h\"");
    let agent = s.start_agent(&cfg);
    s.wait_history(&v1, "success", &agent).await;
    let worker = s.running().await.unwrap();
    let history = history_bytes(&s);
    // The tag moves: a nudge acted on would deploy v2.
    s.push("v2", "stable");

    let reopened = wait_for(WAIT, || async {
        (hub.streams.load(Ordering::SeqCst) >= 3).then_some(())
    })
    .await;
    assert!(
        reopened.is_some(),
        "the stream was not reopened\n{}",
        agent.log()
    );
    // Between two tries, status says why the stream is down.
    let why = wait_for(WAIT, || async {
        let st = status(&s).await;
        st["hub"]["events_error"].as_str().map(str::to_string)
    })
    .await;
    assert!(why.is_some(), "status never said why the stream is down");
    assert!(
        !agent.log().contains("nudge from the hub"),
        "half an event was acted on\n{}",
        agent.log()
    );
    let now = s.running().await.unwrap();
    assert_eq!(now.id, worker.id);
    assert_eq!(history_bytes(&s), history);
    assert_eq!(agent_alive(agent), None, "the agent died");
}

// ---------------------------------------------------------------------------
// A drain endpoint that accepts the connection and never answers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_endpoint_that_hangs_times_out_and_keeps_the_old_worker() {
    let s = Setup::new("f-drainhang");
    // Accepts, reads, never answers; keeps the sockets open.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hang = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let v1 = s.push("v1", "stable");
    let drain = format!(
        "[worker.drain]\nhttp = \"http://127.0.0.1:{port}/drain\"\ntimeout = \"8s\"\non_timeout = \"abort\"\n"
    );
    let cfg = s
        .config("tag = \"stable\"", &s.env(""), &drain)
        .replace("poll_interval = \"1s\"", "poll_interval = \"1h\"");
    let agent = s.start_agent(&cfg);
    s.wait_history(&v1, "success", &agent).await;
    let worker = s.running().await.unwrap();
    let history = history_bytes(&s);
    let v2 = s.push("v2", "stable");

    let started = Instant::now();
    let r = ctl(&s, &["check", "--wait", "--json"]).await;
    let took = started.elapsed();
    assert_ne!(r.code, 0, "{r:#?}");
    assert!(
        took < Duration::from_secs(60),
        "the hang held the update {took:?}"
    );
    let e = s.wait_history(&v2, "aborted", &agent).await;
    let err = e["error"].as_str().unwrap_or_default();
    assert!(err.contains("drain"), "{e}");
    let st = status(&s).await;
    assert!(
        st["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("drain"),
        "{st:#}"
    );
    assert_eq!(st["current_digest"], v1.as_str());
    assert!(
        !s.is_marked_bad(&v2),
        "a hung drain is not the image's fault"
    );
    let now = s.running().await.unwrap();
    assert_eq!((now.id.as_str(), now.running), (worker.id.as_str(), true));
    let after = history_bytes(&s);
    assert!(after.starts_with(&history), "the history was rewritten");
    assert_history_parses(&s);
    hang.abort();
}

// ---------------------------------------------------------------------------
// A truncated state file

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_state_file_is_rebuilt_and_the_worker_and_history_kept() {
    let s = Setup::new("f-trunc");
    let v1 = s.push("v1", "stable");
    let cfg = s.config("tag = \"stable\"", &s.env(""), "");
    let mut agent = s.start_agent(&cfg);
    s.wait_history(&v1, "success", &agent).await;
    let bad = s.push("broken", "stable");
    s.wait_history(&bad, "rolled_back", &agent).await;
    agent.kill9();
    let worker = s.running().await.unwrap();
    let history = history_bytes(&s);
    let full = std::fs::read(s.state_dir().join("state.json")).unwrap();

    // Half the file (cut inside a value), then an empty file.
    for keep in [full.len() / 2, 0] {
        std::fs::write(s.state_dir().join("state.json"), &full[..keep]).unwrap();
        let mut agent = s.start_agent(&cfg);
        agent.wait_log("state rebuilt from the history").await;
        let st = wait_for(WAIT, || async {
            let st = status(&s).await;
            (st["phase"] == "idle" && st["current_digest"] == v1.as_str()).then_some(st)
        })
        .await
        .unwrap_or_else(|| panic!("not idle on v1 after the rebuild\n{}", agent.log()));
        assert!(
            st["bad_digests"].to_string().contains(&bad),
            "the bad mark was lost: {st:#}"
        );
        let now = s.running().await.unwrap();
        assert_eq!(now.id, worker.id, "the worker was replaced (keep {keep})");
        assert_eq!(
            history_bytes(&s),
            history,
            "the history changed (keep {keep})"
        );
        let saved: Value =
            serde_json::from_slice(&std::fs::read(s.state_dir().join("state.json")).unwrap())
                .expect("the rebuilt state parses");
        assert_eq!(saved["last_good_digest"], v1.as_str());
        agent.kill9();
    }
    let aside = std::fs::read_dir(s.state_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.json.corrupt-")
        })
        .count();
    assert!(aside >= 1, "the truncated file was not kept aside");
}

// ---------------------------------------------------------------------------
// The state directory's file system is full

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_directory_keeps_the_worker_says_where_and_recovers() {
    let s = Setup::new("f-diskfull");
    let fs = Tmpfs::mount(&s.state_dir(), "64k");
    let v1 = s.push("v1", "stable");
    let cfg = s
        .config("tag = \"stable\"", &s.env(""), "")
        .replace("poll_interval = \"1s\"", "poll_interval = \"1h\"");
    let mut agent = s.start_agent(&cfg);
    s.wait_history(&v1, "success", &agent).await;
    let worker = s.running().await.unwrap();
    let history = history_bytes(&s);
    let state = std::fs::read(s.state_dir().join("state.json")).unwrap();

    fs.fill();
    let v2 = s.push("v2", "stable");
    let r = ctl(&s, &["check", "--wait", "--json"]).await;
    assert_ne!(r.code, 0, "an update ran on a full disk: {r:#?}");
    let err = wait_last_error(&s, &agent, |e| !e.is_empty()).await;
    assert!(
        err.contains(&s.state_dir().display().to_string()),
        "the error names the path: {err}"
    );
    assert!(
        err.to_lowercase().contains("no space"),
        "the error says the disk is full: {err}"
    );
    let now = s.running().await.expect("the worker keeps running");
    assert_eq!(now.id, worker.id);
    assert_eq!(status(&s).await["current_digest"], v1.as_str());
    assert!(
        !s.is_marked_bad(&v2),
        "a full disk is not the image's fault"
    );
    assert!(
        agent.log().contains(&s.state_dir().display().to_string()),
        "the log names the path"
    );

    // Space again: both files still parse, the next check deploys v2.
    fs.free();
    let st: Value =
        serde_json::from_slice(&std::fs::read(s.state_dir().join("state.json")).unwrap())
            .expect("state.json still parses");
    assert_eq!(st["current_digest"], v1.as_str());
    assert_eq!(
        std::fs::read(s.state_dir().join("state.json")).unwrap(),
        state
    );
    assert!(history_bytes(&s).starts_with(&history));
    assert_history_parses(&s);
    ctl(&s, &["check", "--wait"]).await.expect(0);
    s.wait_running(&v2, "v2", &agent).await;
    s.wait_history(&v2, "success", &agent).await;
    assert!(history_bytes(&s).starts_with(&history));
    assert_history_parses(&s);
    assert!(status(&s).await["last_error"].is_null());
    agent.kill9();
}

// ---------------------------------------------------------------------------
// 100 agentctl calls at once, during an update

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_agentctl_calls_at_once_one_action_wins_the_rest_are_refused() {
    let s = Setup::new("f-ctl100");
    let v1 = s.push("v1", "stable");
    let cfg = s
        .config(
            "tag = \"stable\"",
            &s.env("INFLIGHT_JOBS = \"3\", JOB_SECONDS = \"2\""),
            &s.drain_table("60s"),
        )
        .replace("poll_interval = \"1s\"", "poll_interval = \"1h\"");
    let agent = s.start_agent(&cfg);
    s.wait_running(&v1, "v1", &agent).await;
    s.wait_history(&v1, "success", &agent).await;
    let v2 = s.push("v2", "stable");

    let run_all = |args: Vec<Vec<String>>| {
        let sock = socket(&s);
        async move {
            let mut set = tokio::task::JoinSet::new();
            for (i, a) in args.into_iter().enumerate() {
                let sock = sock.clone();
                set.spawn(async move {
                    let mut all = vec!["--socket".to_string(), sock.display().to_string()];
                    all.extend(a.iter().cloned());
                    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
                    (i, a, agentctl(&refs, &[]).await)
                });
            }
            let mut out = Vec::new();
            while let Some(r) = set.join_next().await {
                out.push(r.unwrap());
            }
            out
        }
    };

    // 100 checks at once while idle: exactly one starts the update.
    let checks = run_all((0..100).map(|_| vec!["check".to_string()]).collect()).await;
    let accepted = checks.iter().filter(|(_, _, r)| r.code == 0).count();
    let refused = checks.iter().filter(|(_, _, r)| r.code == 4).count();
    assert_eq!(
        (accepted, refused),
        (1, 99),
        "{:#?}",
        checks
            .iter()
            .filter(|(_, _, r)| r.code != 4)
            .collect::<Vec<_>>()
    );
    let why = &checks.iter().find(|(_, _, r)| r.code == 4).unwrap().2;
    assert!(
        !why.stderr.trim().is_empty(),
        "a refusal says why: {why:#?}"
    );

    // During that update: 50 status calls and 50 actions at once.
    let mut mix = Vec::new();
    for i in 0..100 {
        mix.push(match i % 4 {
            0 | 2 => vec!["status".into(), "--json".into()],
            1 => vec!["update".into(), "--digest".into(), v1.clone()],
            _ => match i % 3 {
                0 => vec!["drain".into()],
                1 => vec!["rollback".into()],
                _ => vec!["check".into()],
            },
        });
    }
    let results = run_all(mix).await;
    let mut busy = 0;
    for (i, a, r) in &results {
        if a[0] == "status" {
            r.expect(0);
            if r.json()["phase"] != "idle" {
                busy += 1;
            }
        } else {
            assert_eq!(r.code, 4, "call {i} {a:?} during an update: {r:#?}");
        }
    }
    assert!(busy > 0, "no status call saw the update");

    s.wait_running(&v2, "v2", &agent).await;
    s.wait_history(&v2, "success", &agent).await;
    let h = s.history();
    assert_eq!(h.len(), 2, "exactly one update ran: {h:#?}");
    assert_eq!(agent_alive(agent), None);
}

// ---------------------------------------------------------------------------
// The engine restarted in the middle of an update, on a private dockerd

/// A dockerd and containerd of this test's own (like `scripts/stack.sh`), so
/// that restarting the engine never touches the engine the other tests share.
struct PrivateEngine {
    dir: tempfile::TempDir,
    containerd: Option<Child>,
    dockerd: Option<Child>,
}

impl PrivateEngine {
    fn start() -> PrivateEngine {
        // Unix socket paths are short: keep the folder name short.
        let dir = tempfile::Builder::new()
            .prefix("gae")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("bin")).unwrap();
        let hook = d.join("bin/nvidia-container-runtime-hook");
        std::fs::write(&hook, "#!/bin/sh\ncat >/dev/null\nexit 0\n").unwrap();
        std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        std::fs::write(
            d.join("containerd.toml"),
            format!(
                "version = 2\nroot = \"{d}/ctrd-root\"\nstate = \"{d}/ctrd-state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{d}/ctrd.sock\"\n[ttrpc]\n  address = \"{d}/ctrd.sock.ttrpc\"\n\
                 [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n",
                d = d.display()
            ),
        )
        .unwrap();
        std::fs::write(d.join("daemon.json"), "{}").unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let containerd = Command::new("containerd")
            .arg("--config")
            .arg(d.join("containerd.toml"))
            .env("PATH", path_with(&d.join("bin")))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        let mut e = PrivateEngine {
            dir,
            containerd: Some(containerd),
            dockerd: None,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !e.dir.path().join("ctrd.sock").exists() {
            assert!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        e.start_dockerd();
        e
    }

    fn host(&self) -> String {
        format!("unix://{}/docker.sock", self.dir.path().display())
    }

    fn start_dockerd(&mut self) {
        let d = self.dir.path();
        let _ = std::fs::remove_file(d.join("docker.sock"));
        let _ = std::fs::remove_file(d.join("dockerd.pid"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("dockerd.log"))
            .unwrap();
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--containerd")
            .arg(d.join("ctrd.sock"))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
                "--userland-proxy=false",
                "--shutdown-timeout",
                "5",
            ])
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .args(["-H", &self.host()])
            .env("PATH", path_with(&d.join("bin")))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting dockerd");
        self.dockerd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new("docker")
                .env("DOCKER_HOST", self.host())
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the private dockerd did not start:\n{}",
                std::fs::read_to_string(d.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop_dockerd(&mut self) {
        if let Some(c) = self.dockerd.take() {
            terminate(c, Duration::from_secs(30));
        }
    }

    /// SIGTERM, then start again on the same folders (as a package upgrade does).
    fn restart(&mut self) {
        self.stop_dockerd();
        self.start_dockerd();
    }

    fn docker(&self, args: &[&str]) -> String {
        let out = Command::new("docker")
            .env("DOCKER_HOST", self.host())
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    async fn managed(&self, agent_id: &str) -> Vec<Container> {
        match BollardEngine::connect(&self.host(), agent_id).await {
            Ok(e) => e.list_managed().await.unwrap_or_default(),
            Err(_) => vec![],
        }
    }
}

/// SIGTERM, then SIGKILL if `child` has not exited within `grace`.
fn terminate(mut child: Child, grace: Duration) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + grace;
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        if self.dockerd.is_some() {
            let ids = self.docker(&["ps", "-aq"]);
            for id in ids.split_whitespace() {
                let _ = self.docker(&["rm", "-f", id]);
            }
        }
        self.stop_dockerd();
        if let Some(c) = self.containerd.take() {
            terminate(c, Duration::from_secs(20));
        }
        // Whatever the engine left mounted under its folders.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let root = self.dir.path().display().to_string();
            let mut points: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|p| p.starts_with(&root))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in points {
                let _ = Command::new("umount").args(["-l", p]).status();
            }
        }
    }
}

fn path_with(dir: &Path) -> String {
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A loopback TCP proxy to the test's registry that holds every new
/// connection for `delay_ms` first: a pull through it is slow enough to
/// catch in its `pulling` step.
struct SlowProxy {
    port: u16,
    delay_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowProxy {
    async fn start(upstream: u16) -> SlowProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delay = delay_ms.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let delay = delay.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    if let Ok(mut out) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        SlowProxy {
            port,
            delay_ms,
            task,
        }
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Restarts the private engine once `state.json` shows `pending.step = step`;
/// checks that the update converges to one healthy worker on v2, v2 is not
/// marked bad, the history kept its first entry, and status said why.
async fn engine_restart_during(step: &str) {
    let name = format!("f-eng-{step}");
    let s = Setup::new(&name);
    let mut engine = PrivateEngine::start();
    let proxy = SlowProxy::start(s.registry.port).await;
    let repo_host = format!("127.0.0.1:{}", proxy.port);
    let old_variant = if step == "swapping" { "slowstop" } else { "v1" };
    let v1 = s.push(old_variant, "stable");
    let (stable_for, stop_timeout) = match step {
        "verifying" => ("12s", "5s"),
        "swapping" => ("1s", "8s"),
        _ => ("1s", "5s"),
    };
    let cfg = s
        .config("tag = \"stable\"", &s.env(""), "")
        .replace(&docker_host(), &engine.host())
        .replace(&s.registry.host(), &repo_host)
        .replace("poll_interval = \"1s\"", "poll_interval = \"2s\"")
        .replace(
            "stable_for = \"1s\"",
            &format!("stable_for = \"{stable_for}\""),
        )
        .replace(
            "stop_timeout = \"5s\"",
            &format!("stop_timeout = \"{stop_timeout}\""),
        )
        .replace("timeout = \"15s\"", "timeout = \"40s\"");
    let agent = s.start_agent(&cfg);
    s.wait_history(&v1, "success", &agent).await;
    let first = history_bytes(&s);

    if step == "pulling" {
        proxy.delay_ms.store(1500, Ordering::SeqCst);
    }
    let v2 = s.push("v2", "stable");
    let reached = wait_for(WAIT, || async {
        (s.state()["pending"]["step"] == step).then_some(())
    })
    .await;
    assert!(reached.is_some(), "never reached {step}\n{}", agent.log());
    if step == "verifying" {
        // Into the stable time: the new worker has answered healthy for a while.
        let healthy = wait_for(WAIT, || async {
            (s.health().await?["version"] == "v2").then_some(())
        })
        .await;
        assert!(healthy.is_some(), "v2 never answered\n{}", agent.log());
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(s.state()["pending"]["step"], "verifying");
    }
    eprintln!(
        "{step}: restarting the engine at {}",
        time::OffsetDateTime::now_utc()
    );
    engine.restart();
    let back = time::OffsetDateTime::now_utc();
    eprintln!("{step}: the engine is back at {back}");
    proxy.delay_ms.store(0, Ordering::SeqCst);

    // Status says what went wrong while it happened (or the history does).
    let mut said = None;
    let until = Instant::now() + Duration::from_secs(30);
    while said.is_none() && Instant::now() < until {
        let st = ctl(&s, &["status", "--json"]).await;
        if st.code == 0 {
            said = st.json()["last_error"].as_str().map(str::to_string);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Converges: exactly one managed worker runs, on v2, healthy.
    let ok = wait_for(Duration::from_secs(120), || async {
        let running: Vec<Container> = engine
            .managed(&s.agent_id)
            .await
            .into_iter()
            .filter(|c| c.running)
            .collect();
        assert!(running.len() <= 1, "two managed workers run: {running:#?}");
        let c = running.into_iter().next()?;
        (c.name == s.name && c.digest.as_deref() == Some(v2.as_str())).then_some(())?;
        let h = s.health().await?;
        (h["version"] == "v2").then_some(())?;
        (s.state()["pending"].is_null() && s.state()["current_digest"] == v2.as_str()).then_some(())
    })
    .await;
    assert!(
        ok.is_some(),
        "did not converge on v2 after a restart during {step}: {:#?}\n{}",
        engine.managed(&s.agent_id).await,
        agent.log()
    );
    assert!(!s.is_marked_bad(&v2), "an engine restart was blamed on v2");
    let h = history_bytes(&s);
    assert!(h.starts_with(&first), "the history was rewritten");
    assert_history_parses(&s);
    let entries = s.history();
    let interrupted: Vec<&Value> = entries
        .iter()
        .filter(|e| e["to"] == v2.as_str() && e["outcome"] != "success")
        .collect();
    // What happened is on record: in status while it happened, in the
    // history, or (a verification that went on once the engine was back) in
    // the log.
    let log = agent.log();
    let logged = log.contains("the engine cannot be asked during the verification")
        || log.contains("the engine restarted the new worker during the verification");
    assert!(
        said.is_some() || !interrupted.is_empty() || logged,
        "nothing said the engine went away\n{}",
        agent.log()
    );
    if step == "verifying" {
        assert!(
            logged,
            "the verification did not notice the engine was away"
        );
        // The time the engine was away does not count as stable time: the
        // commit comes a full stable_for after the engine is back.
        let done = entries
            .iter()
            .find(|e| e["to"] == v2.as_str() && e["outcome"] == "success")
            .unwrap();
        let at = time::OffsetDateTime::parse(
            done["at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert!(
            at - back >= time::Duration::seconds(11),
            "verified {} after the engine came back (stable_for 12s)\n{}",
            at - back,
            agent.log()
        );
    }
    eprintln!("{step}: status said {said:?}; interrupted entries: {interrupted:?}");
    let final_st = status(&s).await;
    assert_eq!(final_st["current_digest"], v2.as_str(), "{final_st:#}");
    drop(agent);
    drop(engine);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_restarted_mid_pull_converges_without_a_bad_mark() {
    engine_restart_during("pulling").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_restarted_mid_swap_converges_without_a_bad_mark() {
    engine_restart_during("swapping").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_restarted_mid_verify_converges_without_a_bad_mark() {
    engine_restart_during("verifying").await;
}
