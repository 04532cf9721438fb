//! Every await has a bound, or the watchdog sees it (the fault matrix, cases
//! 52-55): an NVML reading of a GPU that stopped answering ends in an error
//! within its deadline; a pull that trickles forever ends at
//! `image.pull_timeout` with the old worker kept; and a turn of the loop that
//! hangs on an engine call past its bound stops the watchdog's pings. Real
//! things throughout: the fake NVML driver through nvml-wrapper, the test
//! engine and registry behind a real proxy that trickles or hangs, real
//! `sd_notify` datagrams from the agent binary.

mod common;
mod proxy;
mod sd_notify;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use gpu_agent::gpu::{GpuProbe, NvmlProbe};
use sd_notify::Notify;

#[tokio::test(flavor = "multi_thread")]
async fn a_gpu_that_stops_answering_is_an_error_within_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    fake_nvml(dir.path());
    let state = dir.path().join("fake_nvml.state");
    std::fs::write(&state, "count=2\n").unwrap();
    let probe: Arc<dyn GpuProbe> = Arc::new(NvmlProbe::with_library(
        dir.path().join("libnvidia-ml.so.1"),
    ));
    let snap = gpu_agent::gpu::read_within(probe.clone(), Duration::from_secs(20))
        .await
        .expect("the GPUs read");
    assert_eq!(snap.gpus.len(), 2);

    // The GPU falls off the bus: its next reading never comes back (10 min).
    std::fs::write(&state, "count=2\nhang_ms=600000\n").unwrap();
    let t = Instant::now();
    let e = gpu_agent::gpu::read_within(probe.clone(), Duration::from_secs(2))
        .await
        .expect_err("a reading that never returns is an error");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let msg = e.to_string();
    assert!(
        msg.contains("no answer within 2s") && msg.contains("fallen off the bus"),
        "{msg}"
    );
    assert!(
        !e.is_no_driver(),
        "a GPU error that blocks updates, not 'no driver'"
    );
    // The readings after it do not pile up threads without end either.
    for _ in 0..6 {
        let t = Instant::now();
        let e = gpu_agent::gpu::read_within(probe.clone(), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(3), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_that_trickles_forever_ends_at_pull_timeout_with_the_old_worker_kept() {
    let s = Setup::new("pull-trickle");
    let upstream: SocketAddr = s.registry.host().parse().unwrap();
    let (registry, addr) = proxy::tcp(upstream).await;
    let d1 = s.push("v1", "latest");
    // The agent pulls through the proxy; the engine sees a registry at `addr`.
    // Checks only when asked (below), so the pull starts once the image is set up.
    let config = s
        .config("pull_timeout = \"5s\"", &s.env(""), "")
        .replace(&s.registry.host(), &addr.to_string())
        .replace("poll_interval = \"1s\"", "poll_interval = \"1h\"");
    let agent = s.start_agent(&config);
    s.wait_running(&d1, "v1", &agent).await;

    // An image the engine does not have yet (a pull of one it has, such as
    // the test images it built, fetches nothing): v2 with a label of this
    // run's own, pushed, then removed from the engine.
    let unique = format!("gpu-agent-test/trickle:{}", std::process::id());
    let tmp = format!("t-trickle-{}", std::process::id());
    docker(&["create", "--name", &tmp, &image("v2"), "true"]);
    docker(&[
        "commit",
        "--change",
        &format!("LABEL trickle={}", std::process::id()),
        &tmp,
        &unique,
    ]);
    docker(&["rm", &tmp]);
    let d2 = s.registry.push(&unique, &s.repo, "latest");
    docker(&["rmi", &unique]);
    // The registry now sends downloads at 4 bytes a second: this pull would
    // take many minutes, and progress never stops long enough to count as stalled.
    registry.trickle(true);
    // (Refused for a moment while the first deploy is still being committed.)
    let asked = wait_for(Duration::from_secs(30), || async {
        (ctl(&s, &["check"]).await.code == 0).then_some(())
    })
    .await;
    assert!(
        asked.is_some(),
        "agentctl check was refused:\n{}",
        agent.log()
    );
    let started = Instant::now();
    let entry = wait_for(Duration::from_secs(60), || async {
        let h = ctl(&s, &["history", "--json"]).await.json();
        h.as_array()?
            .iter()
            .find(|e| e["to"] == d2.as_str())
            .cloned()
    })
    .await
    .unwrap_or_else(|| panic!("the trickling pull never ended:\n{}", agent.log()));
    let took = started.elapsed();
    eprintln!("pull gave up after {took:?}: {entry:#}");
    assert!(took < Duration::from_secs(40), "{took:?}");
    assert_ne!(entry["outcome"], "success");
    let error = entry["error"].as_str().unwrap_or_default();
    assert!(error.contains("image.pull_timeout"), "{entry:#}");
    // The old worker serves on; a pull's timeout says nothing about the image.
    let c = s.running().await.expect("the old worker runs");
    assert_eq!(c.digest.as_deref(), Some(d1.as_str()));
    assert!(!s.is_marked_bad(&d2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_turn_hung_on_an_engine_call_stops_the_watchdog() {
    let s = Setup::new("watchdog-hang");
    let d1 = s.push("v1", "latest");
    // The agent reaches the engine through a proxy that can stop answering.
    let sock = s.dir.path().join("engine.sock");
    let engine = proxy::unix(&sock, docker_host().trim_start_matches("unix://").into());
    let config = s
        .config("", &s.env(""), "")
        .replace(&docker_host(), &format!("unix://{}", sock.display()));
    let notify = Notify::bind(s.dir.path());
    let agent = s.start_agent_env(
        &config,
        &[
            ("NOTIFY_SOCKET", &notify.env()),
            ("WATCHDOG_USEC", "1000000"),
            // Test builds: every phase may take 3 s before it counts as hung.
            ("GPU_AGENT_TEST_WATCHDOG_BOUND_S", "3"),
        ],
    );
    s.wait_running(&d1, "v1", &agent).await;
    let since = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        notify.times("WATCHDOG=1").iter().any(|t| *t > since),
        "no watchdog pings while the agent is well:\n{}",
        agent.log()
    );

    // The engine stops answering: the next poll's first engine call hangs
    // (its own timeout is 2 minutes).
    engine.hang(true);
    let hung = Instant::now();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let pings: Vec<Instant> = notify
        .times("WATCHDOG=1")
        .into_iter()
        .filter(|t| *t > hung)
        .collect();
    let last = pings.last().copied().unwrap_or(hung);
    eprintln!(
        "{} pings after the hang, the last {:?} after it",
        pings.len(),
        last - hung
    );
    assert!(
        last - hung < Duration::from_secs(7),
        "the watchdog was still pinged {:?} into a hung engine call:\n{}",
        last - hung,
        agent.log()
    );
    assert!(
        agent.log().contains("has not advanced past its bound"),
        "{}",
        agent.log()
    );
    engine.hang(false);
}
