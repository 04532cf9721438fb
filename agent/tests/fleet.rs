//! Fleet rollouts against a real 3-member etcd cluster on loopback: the slot
//! semaphore under contention, canaries and bake, halts, pause/resume/abort,
//! a lost member, all of etcd down, a dead slot holder, and `gpu-fleet` end to
//! end (the built binary).

mod common_etcd;
#[allow(dead_code)]
mod common_registry;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common_etcd::EtcdCluster;
use gpu_agent::fleet::gate::GateOptions;
use gpu_agent::fleet::{Decision, Etcd, EtcdGate, EtcdOptions, FleetGate, HostReport, Outcome};

const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const C: &str = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

async fn etcd(c: &EtcdCluster) -> Etcd {
    let mut o = EtcdOptions::new(c.endpoints());
    o.request_timeout = Duration::from_secs(2);
    o.connect_timeout = Duration::from_secs(1);
    Etcd::connect(&o)
        .await
        .expect("connecting to the test etcd")
}

async fn gate(e: &Etcd, group: &str, host: &str) -> EtcdGate {
    let mut o = GateOptions::new(host, group);
    o.lease_ttl = Duration::from_secs(4);
    let g = EtcdGate::start(e.clone(), o);
    assert!(
        g.connected(Duration::from_secs(10)).await,
        "{host} did not reach etcd"
    );
    g
}

async fn on_digest(g: &EtcdGate, d: &str) {
    g.report_host(HostReport {
        digest: Some(d.into()),
        phase: "idle".into(),
        gpu: "ok".into(),
        last_event: None,
    })
    .await;
}

/// Asks until Go; panics with the last answer after `within`.
async fn go(g: &EtcdGate, digest: &str, within: Duration) -> u32 {
    let start = Instant::now();
    loop {
        let d = g.decide(digest).await;
        if let Decision::Go { slot } = d {
            return slot;
        }
        assert!(
            start.elapsed() < within,
            "{}: still {d:?} after {within:?}",
            g.host()
        );
        let _ = tokio::time::timeout(Duration::from_millis(500), g.changed()).await;
    }
}

fn fleet(c: &EtcdCluster, group: &str, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gpu-fleet"))
        .arg("--etcd")
        .arg(c.endpoints().join(","))
        .args(["--group", group])
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn fleet_ok(c: &EtcdCluster, group: &str, args: &[&str]) -> String {
    let (code, text) = fleet(c, group, args);
    assert_eq!(code, 0, "gpu-fleet {args:?}: {text}");
    text
}

/// `n` hosts go through the slots for `digest`, each holding its slot for
/// `hold`; returns the most that ever held at once.
async fn roll(gates: Vec<Arc<EtcdGate>>, digest: &'static str, hold: Duration) -> u32 {
    let now = Arc::new(AtomicU32::new(0));
    let max = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for g in gates {
        let (now, max) = (now.clone(), max.clone());
        tasks.push(tokio::spawn(async move {
            go(&g, digest, Duration::from_secs(90)).await;
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            max.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(hold).await;
            now.fetch_sub(1, Ordering::SeqCst);
            on_digest(&g, digest).await;
            g.report_outcome(digest, Outcome::Verified, "")
                .await
                .unwrap();
            g.release().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    max.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slots_never_exceed_max_unavailable_with_many_contenders() {
    let c = EtcdCluster::start(3);
    fleet_ok(
        &c,
        "sem",
        &["policy", "set", "--max-unavailable", "3", "--canary", "0"],
    );
    let e = etcd(&c).await;
    let mut gates = Vec::new();
    for i in 0..40 {
        gates.push(Arc::new(gate(&e, "sem", &format!("host-{i:02}")).await));
    }
    let max = roll(gates, A, Duration::from_millis(150)).await;
    assert_eq!(max, 3, "at most 3 at once, and the 3 slots were used");
    let hosts = fleet_ok(&c, "sem", &["hosts", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&hosts).unwrap();
    assert_eq!(v["hosts"].as_array().unwrap().len(), 40);
    assert!(
        v["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["slot"].is_null()),
        "{hosts}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_goes_alone_then_the_rest_after_bake() {
    let c = EtcdCluster::start(3);
    fleet_ok(
        &c,
        "can",
        &[
            "policy",
            "set",
            "--max-unavailable",
            "4",
            "--canary",
            "1",
            "--bake",
            "3s",
        ],
    );
    let e = etcd(&c).await;
    let mut gates = Vec::new();
    for i in 0..5 {
        gates.push(gate(&e, "can", &format!("h{i}")).await);
    }
    let mut go_now = Vec::new();
    for (i, g) in gates.iter().enumerate() {
        match g.decide(B).await {
            Decision::Go { .. } => go_now.push(i),
            Decision::Wait { why } => assert!(why.contains("canaries"), "{why}"),
            d => panic!("{d:?}"),
        }
    }
    assert_eq!(go_now.len(), 1, "one canary goes alone: {go_now:?}");
    let canary = &gates[go_now[0]];
    on_digest(canary, B).await;
    canary
        .report_outcome(B, Outcome::Verified, "")
        .await
        .unwrap();
    canary.release().await.unwrap();
    let verified = Instant::now();
    let others: Vec<&EtcdGate> = gates
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != go_now[0])
        .map(|(_, g)| g)
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    match others[0].decide(B).await {
        Decision::Wait { why } => assert!(why.contains("bake"), "{why}"),
        d => panic!("during the bake: {d:?}"),
    }
    for g in &others {
        go(g, B, Duration::from_secs(15)).await;
    }
    assert!(
        verified.elapsed() >= Duration::from_secs(2),
        "the rest went before the bake ended"
    );
    let view = others[0].view();
    assert!(view.slot.is_some() && view.waiting.is_none(), "{view:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_digest_halts_after_the_canary_and_resume_and_abort_do_what_they_say() {
    let c = EtcdCluster::start(3);
    let g = "halt";
    fleet_ok(
        &c,
        g,
        &[
            "policy",
            "set",
            "--max-unavailable",
            "2",
            "--canary",
            "1",
            "--halt-after",
            "1",
            "--bake",
            "1s",
        ],
    );
    let e = etcd(&c).await;
    let mut gates = Vec::new();
    for i in 0..4 {
        let gt = gate(&e, g, &format!("h{i}")).await;
        on_digest(&gt, A).await;
        gates.push(gt);
    }
    let out = fleet_ok(&c, g, &["rollout", "start", B]);
    assert!(out.contains("previous sha256:aaaa"), "{out}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        gates[0].desired().as_deref(),
        Some(B),
        "the rollout reached the host"
    );
    // The canary tries and rolls back: the digest halts; nobody else tries it.
    let mut canary = None;
    for (i, gt) in gates.iter().enumerate() {
        if let Decision::Go { .. } = gt.decide(B).await {
            assert!(canary.is_none(), "two canaries");
            canary = Some(i);
        }
    }
    let k = canary.expect("a canary");
    gates[k]
        .report_outcome(B, Outcome::RolledBack, "health check failed")
        .await
        .unwrap();
    gates[k].release().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for gt in &gates {
        assert!(
            matches!(gt.decide(B).await, Decision::Halted { .. }),
            "{:?}",
            gt.view()
        );
    }
    let (code, text) = fleet(&c, g, &["rollout", "status", "--wait", "--timeout", "20s"]);
    assert_eq!(code, 1, "a halted rollout fails the wait: {text}");
    assert!(
        text.contains("halted") && text.contains("1 failed"),
        "{text}"
    );
    // Pause and resume.
    let (code, text) = fleet(&c, g, &["rollout", "pause"]);
    assert_eq!(code, 4, "a halted rollout cannot be paused: {text}");
    fleet_ok(&c, g, &["rollout", "resume"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let other = gates.iter().enumerate().find(|(i, _)| *i != k).unwrap().1;
    assert!(
        !matches!(other.decide(B).await, Decision::Halted { .. }),
        "resumed"
    );
    fleet_ok(&c, g, &["rollout", "pause"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = gates
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != k)
        .nth(1)
        .unwrap()
        .1;
    match third.decide(B).await {
        Decision::Wait { why } => assert!(why.contains("paused"), "{why}"),
        d => panic!("paused: {d:?}"),
    }
    // Abort: every host wants the previous digest again, through the slots (no canary).
    other.release().await.unwrap();
    fleet_ok(&c, g, &["rollout", "abort"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for gt in &gates {
        assert_eq!(gt.desired().as_deref(), Some(A));
    }
    go(&gates[k], A, Duration::from_secs(10)).await;
    let (code, text) = fleet(&c, g, &["rollout", "status", "--wait"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("aborted"), "{text}");
    // A new rollout that every host verifies completes; --wait exits 0.
    gates[k].release().await.unwrap();
    fleet_ok(&c, g, &["policy", "set", "--canary", "0"]);
    fleet_ok(&c, g, &["rollout", "start", C]);
    let all: Vec<Arc<EtcdGate>> = gates.into_iter().map(Arc::new).collect();
    let waiter = {
        let eps = c.endpoints().join(",");
        std::thread::spawn(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_gpu-fleet"))
                .args([
                    "--etcd",
                    &eps,
                    "--group",
                    "halt",
                    "rollout",
                    "status",
                    "--wait",
                    "--timeout",
                    "60s",
                ])
                .output()
                .unwrap()
        })
    };
    assert!(roll(all, C, Duration::from_millis(100)).await <= 2);
    let out = waiter.join().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("complete"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_goes_on_when_one_etcd_member_dies() {
    let mut c = EtcdCluster::start(3);
    fleet_ok(
        &c,
        "member",
        &["policy", "set", "--max-unavailable", "2", "--canary", "0"],
    );
    let e = etcd(&c).await;
    let mut gates = Vec::new();
    for i in 0..10 {
        gates.push(Arc::new(gate(&e, "member", &format!("h{i}")).await));
    }
    let first: Vec<Arc<EtcdGate>> = gates.drain(..4).collect();
    assert!(roll(first, A, Duration::from_millis(100)).await <= 2);
    c.kill(0);
    assert!(roll(gates, A, Duration::from_millis(100)).await <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_all_of_etcd_down_no_update_starts_and_it_resumes_when_back() {
    let mut c = EtcdCluster::start(3);
    let e = etcd(&c).await;
    fleet_ok(&c, "down", &["policy", "set", "--canary", "0"]);
    let g = gate(&e, "down", "h0").await;
    c.kill_all();
    let start = Instant::now();
    loop {
        match g.decide(A).await {
            Decision::Wait { why } if why.contains("etcd not reachable") => break,
            Decision::Go { .. } => panic!("went without etcd"),
            _ => {}
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never noticed etcd down"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!g.view().etcd_reachable);
    let (code, text) = fleet(&c, "down", &["rollout", "status"]);
    assert_eq!(code, 3, "gpu-fleet says etcd is not reachable: {text}");
    c.restart_all();
    go(&g, A, Duration::from_secs(40)).await;
    assert!(g.view().etcd_reachable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_that_dies_holding_a_slot_keeps_it_until_released() {
    let c = EtcdCluster::start(3);
    fleet_ok(
        &c,
        "dead",
        &["policy", "set", "--max-unavailable", "1", "--canary", "0"],
    );
    let e = etcd(&c).await;
    let a = gate(&e, "dead", "host-a").await;
    let b = gate(&e, "dead", "host-b").await;
    go(&a, A, Duration::from_secs(5)).await;
    a.kill().await;
    // Past host-a's lease: its record is gone, its slot is not.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(matches!(b.decide(A).await, Decision::Wait { .. }));
    let hosts = fleet_ok(&c, "dead", &["hosts"]);
    let line = hosts
        .lines()
        .find(|l| l.starts_with("host-a"))
        .unwrap_or_else(|| panic!("{hosts}"));
    assert!(line.contains("holding") && line.contains("gone"), "{hosts}");
    // Coming back, the host finds its slot (and gives it back once steady).
    let a2 = gate(&e, "dead", "host-a").await;
    assert!(a2.view().slot.is_some(), "{:?}", a2.view());
    drop(a2);
    let out = fleet_ok(&c, "dead", &["release", "host-a"]);
    assert!(out.contains("released"), "{out}");
    go(&b, A, Duration::from_secs(10)).await;
}

#[test]
fn gpu_fleet_exit_codes_and_help() {
    let bin = env!("CARGO_BIN_EXE_gpu-fleet");
    let run = |args: &[&str]| {
        let o = std::process::Command::new(bin)
            .args(args)
            .env_remove("GPU_FLEET_ETCD")
            .output()
            .unwrap();
        (
            o.status.code().unwrap(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    let (code, help) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(
        help.contains("Exit codes") && help.contains("rollout"),
        "{help}"
    );
    assert_eq!(run(&["hosts"]).0, 2, "no etcd named");
    assert_eq!(
        run(&["--etcd", "http://10.1.2.3:2379", "--group", "g", "hosts"]).0,
        2,
        "plain http off loopback"
    );
    assert_eq!(run(&["rollout", "frobnicate"]).0, 2);
    // A closed loopback port: not reachable.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, text) = run(&[
        "--etcd",
        &format!("http://127.0.0.1:{port}"),
        "--group",
        "g",
        "policy",
        "show",
    ]);
    assert_eq!(code, 3, "{text}");
    let (code, text) = run(&["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(text.contains("gpu-fleet"));
}

#[test]
fn gpu_fleet_policy_and_refusals_on_a_real_cluster() {
    let c = EtcdCluster::start(3);
    let out = fleet_ok(&c, "cli", &["policy", "show"]);
    assert!(
        out.contains("max_unavailable 1, canary 1, bake 10m, halt_after 1, halt_ratio 0%"),
        "{out}"
    );
    fleet_ok(
        &c,
        "cli",
        &[
            "policy",
            "set",
            "--max-unavailable",
            "5%",
            "--halt-ratio",
            "20%",
        ],
    );
    let out = fleet_ok(&c, "cli", &["policy", "show", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["policy"]["max_unavailable"], "5%");
    assert_eq!(v["policy"]["halt_ratio"], 20);
    assert_eq!(
        fleet(&c, "cli", &["policy", "set", "--max-unavailable", "0"]).0,
        2
    );
    assert_eq!(
        fleet(&c, "cli", &["rollout", "resume"]).0,
        4,
        "no rollout to resume"
    );
    assert_eq!(fleet(&c, "cli", &["rollout", "status", "--wait"]).0, 4);
    let (code, text) = fleet(&c, "cli", &["rollout", "start", "not a ref"]);
    assert_eq!(code, 2, "{text}");
    let out = fleet_ok(&c, "cli", &["rollout", "start", "127.0.0.1:1/x/y@sha256:dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd", "--canary", "2"]);
    assert!(
        out.contains("sha256:dddd") && out.contains("canary 2"),
        "{out}"
    );
    let (code, text) = fleet(&c, "cli", &["rollout", "abort"]);
    assert_eq!(code, 4, "no previous digest: {text}");
    let out = fleet_ok(&c, "cli", &["rollout", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["rollout"]["state"], "rolling");
}

/// One etcd member with `args` (TLS or not), on fresh loopback ports; killed on drop.
struct Single {
    child: std::process::Child,
    client: String,
    _dir: tempfile::TempDir,
}

impl Drop for Single {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn single(scheme: &str, extra: &[String]) -> Single {
    let dir = tempfile::tempdir().unwrap();
    let ls: Vec<_> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let (cp, pp) = (
        ls[0].local_addr().unwrap().port(),
        ls[1].local_addr().unwrap().port(),
    );
    drop(ls);
    let client = format!("{scheme}://127.0.0.1:{cp}");
    let peer = format!("http://127.0.0.1:{pp}");
    let child = std::process::Command::new(common_etcd::etcd_bin())
        .args(["--name", "s", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("s={peer}")])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(
            std::fs::File::create(dir.path().join("log"))
                .map(std::process::Stdio::from)
                .unwrap(),
        )
        .spawn()
        .unwrap();
    Single {
        child,
        client,
        _dir: dir,
    }
}

fn run_fleet(args: &[&str]) -> (i32, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_gpu-fleet"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Retries `args` until it exits 0 (etcd starting), then returns its output.
fn until_ok(args: &[&str]) -> String {
    let start = Instant::now();
    loop {
        let (code, text) = run_fleet(args);
        if code == 0 {
            return text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "gpu-fleet {args:?}: {text}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn gpu_fleet_speaks_tls_with_a_client_certificate() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n).to_string_lossy().into_owned();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fleet test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    std::fs::write(p("ca.pem"), ca.pem()).unwrap();
    for (name, san) in [("server", "127.0.0.1"), ("client", "gpu-agent")] {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![san.to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, san);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(p(&format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(p(&format!("{name}-key.pem")), key.serialize_pem()).unwrap();
    }
    let e = single(
        "https",
        &[
            "--cert-file".into(),
            p("server.pem"),
            "--key-file".into(),
            p("server-key.pem"),
            "--client-cert-auth".into(),
            "--trusted-ca-file".into(),
            p("ca.pem"),
        ],
    );
    let (ca_f, cert_f, key_f) = (p("ca.pem"), p("client.pem"), p("client-key.pem"));
    let base = ["--etcd", e.client.as_str(), "--group", "tls"];
    let full: Vec<&str> = base
        .iter()
        .copied()
        .chain([
            "--ca-file",
            &ca_f,
            "--cert-file",
            &cert_f,
            "--key-file",
            &key_f,
        ])
        .collect();
    until_ok(&[&full[..], &["policy", "set", "--canary", "3"]].concat());
    let out = until_ok(&[&full[..], &["policy", "show"]].concat());
    assert!(out.contains("canary 3"), "{out}");
    // Without the client certificate, or without the CA, etcd is not reached.
    let no_cert: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--ca-file", &ca_f, "policy", "show"])
        .collect();
    assert_ne!(run_fleet(&no_cert).0, 0);
    let no_ca: Vec<&str> = base
        .iter()
        .copied()
        .chain([
            "--cert-file",
            &cert_f,
            "--key-file",
            &key_f,
            "policy",
            "show",
        ])
        .collect();
    assert_ne!(run_fleet(&no_ca).0, 0);
    let half: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--cert-file", &cert_f, "policy", "show"])
        .collect();
    assert_eq!(
        run_fleet(&half).0,
        2,
        "a certificate without its key is a usage error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_fleet_and_the_gate_log_in_with_etcd_auth() {
    let e = single("http", &[]);
    let d = tempfile::tempdir().unwrap();
    let ctl = |args: &[&str]| {
        std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &e.client])
            .args(args)
            .output()
            .unwrap()
    };
    let start = Instant::now();
    while !ctl(&["put", "/probe", "x"]).status.success() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "etcd did not start"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for args in [
        vec!["user", "add", "root:rootpw"],
        vec!["role", "add", "fleet"],
        vec![
            "role",
            "grant-permission",
            "fleet",
            "--prefix=true",
            "readwrite",
            "/gpu-agent/fleet/auth/",
        ],
        vec!["user", "add", "gpu-agent:s3cret"],
        vec!["user", "grant-role", "gpu-agent", "fleet"],
        vec!["auth", "enable"],
    ] {
        let o = ctl(&args);
        assert!(
            o.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let pw = d.path().join("pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let bad = d.path().join("bad");
    std::fs::write(&bad, "nope").unwrap();
    let pw_s = pw.to_string_lossy().into_owned();
    let args = [
        "--etcd",
        &e.client,
        "--group",
        "auth",
        "--username",
        "gpu-agent",
        "--password-file",
        &pw_s,
    ];
    let out = until_ok(&[&args[..], &["policy", "set", "--max-unavailable", "2"]].concat());
    assert!(out.contains("max_unavailable 2"), "{out}");
    let (code, text) = run_fleet(&[
        "--etcd",
        &e.client,
        "--group",
        "auth",
        "--username",
        "gpu-agent",
        "--password-file",
        &bad.to_string_lossy(),
        "policy",
        "show",
    ]);
    assert_eq!(code, 1, "a wrong password fails: {text}");
    assert!(
        text.contains("authentication failed") || text.contains("auth"),
        "{text}"
    );
    let (code, text) = run_fleet(&[
        "--etcd",
        &e.client,
        "--group",
        "other",
        "--username",
        "gpu-agent",
        "--password-file",
        &pw_s,
        "policy",
        "set",
        "--canary",
        "0",
    ]);
    assert_eq!(code, 1, "outside the granted prefix: {text}");
    assert!(text.contains("permission denied"), "{text}");
    // The agent's gate logs in the same way and takes a slot.
    let mut o = EtcdOptions::new(vec![e.client.clone()]);
    o.username = Some("gpu-agent".into());
    o.password_file = Some(pw.clone());
    let etcd = Etcd::connect(&o).await.unwrap();
    fleet_ok_args(&[&args[..], &["policy", "set", "--canary", "0"]].concat());
    let g = gate(&etcd, "auth", "h0").await;
    go(&g, A, Duration::from_secs(10)).await;
}

fn fleet_ok_args(args: &[&str]) {
    let (code, text) = run_fleet(args);
    assert_eq!(code, 0, "gpu-fleet {args:?}: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_start_resolves_a_tag_once_through_the_real_registry() {
    use common_registry::real::{Auth, Registry, OCI_MANIFEST};
    gpu_agent::init_tls();
    let c = EtcdCluster::start(3);
    let reg = Registry::start(Auth::None).await;
    let pushed = reg
        .pusher(None)
        .image("fleet/worker", "v2", OCI_MANIFEST, "amd64", "v2")
        .await;
    let reference = format!("{}/fleet/worker:v2", reg.host());
    let out = fleet_ok(&c, "reg", &["rollout", "start", &reference, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["rollout"]["digest"], pushed.digest.as_str(), "{out}");
    assert_eq!(v["rollout"]["reference"], reference.as_str());
    // The tag moves afterwards: the group's digest does not.
    reg.pusher(None)
        .image("fleet/worker", "v2", OCI_MANIFEST, "amd64", "v3")
        .await;
    let e = etcd(&c).await;
    let g = gate(&e, "reg", "h0").await;
    assert_eq!(g.desired().as_deref(), Some(pushed.digest.as_str()));
    // A bare tag, with the repository from the agent's config.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nid = \"h0\"\n[image]\nrepository = \"{}/fleet/worker\"\ninsecure = true\n[fleet]\netcd = [{}]\ngroup = \"reg\"\n",
            reg.host(),
            c.endpoints().iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join(", ")
        ),
    )
    .unwrap();
    let (code, text) = run_fleet(&[
        "--config",
        &config.to_string_lossy(),
        "rollout",
        "start",
        "v2",
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(
        !text.contains(&format!("rollout of {}", pushed.digest))
            && text.contains(&format!("previous {}", pushed.digest)),
        "the moved tag resolves anew: {text}"
    );
    let (code, text) = run_fleet(&[
        "--config",
        &config.to_string_lossy(),
        "rollout",
        "start",
        "no-such-tag",
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("resolving"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_etcd_missed_is_recorded_before_the_slot_is_given_back() {
    let mut c = EtcdCluster::start(3);
    fleet_ok(
        &c,
        "miss",
        &["policy", "set", "--canary", "0", "--max-unavailable", "1"],
    );
    let e = etcd(&c).await;
    let g = gate(&e, "miss", "h0").await;
    go(&g, B, Duration::from_secs(10)).await;
    c.kill_all();
    assert!(g
        .report_outcome(B, Outcome::RolledBack, "verify failed")
        .await
        .is_err());
    assert!(g.release().await.is_err());
    assert!(
        g.view().slot.is_some(),
        "the slot stays held while etcd is away"
    );
    // That update is over: a new one (another digest) does not go with its
    // slot, unasked (canaries, halts, its turn), while etcd is away.
    match g.decide(C).await {
        Decision::Wait { why } => assert!(why.contains("no update starts"), "{why}"),
        d => panic!("a new update went with the slot of the last one: {d:?}"),
    }
    c.restart_all();
    // The session sends the outcome (which halts B), then gives the slot back.
    let start = Instant::now();
    while g.view().slot.is_some() {
        assert!(start.elapsed() < Duration::from_secs(40), "{:?}", g.view());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(matches!(g.decide(B).await, Decision::Halted { .. }));
    let out = fleet_ok(&c, "miss", &["hosts", "--json"]);
    assert!(out.contains("\"h0\"") && !out.contains("holding"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_slots_in_the_policy_let_a_waiting_host_go() {
    let c = EtcdCluster::start(3);
    fleet_ok(
        &c,
        "grow",
        &["policy", "set", "--canary", "0", "--max-unavailable", "1"],
    );
    let e = etcd(&c).await;
    let a = gate(&e, "grow", "a").await;
    let b = gate(&e, "grow", "b").await;
    go(&a, A, Duration::from_secs(10)).await;
    match b.decide(A).await {
        Decision::Wait { why } => assert!(why.contains("1 hosts ahead"), "{why}"),
        d => panic!("{d:?}"),
    }
    fleet_ok(&c, "grow", &["policy", "set", "--max-unavailable", "2"]);
    go(&b, A, Duration::from_secs(10)).await;
}

/// A host that waited in the queue and no longer wants a slot (an abort put
/// it back on what it runs) leaves the queue with `release`: it no longer
/// stands ahead of the hosts that still wait, and it no longer says it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_host_that_releases_leaves_the_queue() {
    let c = EtcdCluster::start(3);
    fleet_ok(
        &c,
        "leave",
        &["policy", "set", "--canary", "0", "--max-unavailable", "1"],
    );
    let e = etcd(&c).await;
    let a = gate(&e, "leave", "a").await;
    let b = gate(&e, "leave", "b").await;
    let d = gate(&e, "leave", "d").await;
    go(&a, A, Duration::from_secs(10)).await;
    assert!(matches!(b.decide(A).await, Decision::Wait { .. }));
    match d.decide(A).await {
        Decision::Wait { why } => assert!(why.contains("2 hosts ahead"), "{why}"),
        x => panic!("{x:?}"),
    }
    assert!(b.view().waiting.is_some());
    b.release().await.unwrap();
    assert_eq!(b.view().waiting, None);
    let out = fleet_ok(&c, "leave", &["hosts", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let b_line = v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == "b")
        .cloned();
    assert!(b_line.is_some_and(|h| h["slot"].is_null()), "{out}");
    // The holder gives its slot back: the host behind b goes.
    a.release().await.unwrap();
    go(&d, A, Duration::from_secs(10)).await;
}
