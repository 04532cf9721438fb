//! A real 3-member etcd cluster on loopback (Debian's `etcd-server`), one per
//! test, on ports of its own, in a temporary folder: members can be killed and
//! started again on the same data to test a lost member or all of etcd down.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn etcd_bin() -> String {
    std::env::var("GPU_AGENT_TEST_ETCD_BIN").unwrap_or_else(|_| "etcd".into())
}

/// Two free loopback ports per member (client, peer).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("binding a loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    initial: String,
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster has a leader.
    pub fn start(n: usize) -> EtcdCluster {
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports(2 * n);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("e{i}"),
                client: ports[2 * i],
                peer: ports[2 * i + 1],
                child: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = EtcdCluster {
            dir,
            members,
            initial,
        };
        for i in 0..n {
            c.spawn(i, "new");
        }
        c.wait_healthy(Duration::from_secs(30));
        c
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let m = &self.members[i];
        let data: PathBuf = self.dir.path().join(&m.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", m.name)))
            .unwrap();
        let client = format!("http://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let child = Command::new(etcd_bin())
            .args(["--name", &m.name, "--data-dir"])
            .arg(&data)
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
            .args(["--initial-cluster", &self.initial])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "gpu-agent-test"])
            // Fast elections on loopback, so a killed member costs little time.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting {} ({e}): install Debian's etcd-server (scripts/test.sh does)",
                    etcd_bin()
                )
            });
        self.members[i].child = Some(child);
    }

    /// The client URLs of all members.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect()
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    /// Starts member `i` again on its data.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i, "existing");
    }

    pub fn restart_all(&mut self) {
        for i in 0..self.members.len() {
            self.spawn(i, "existing");
        }
        self.wait_healthy(Duration::from_secs(30));
    }

    /// etcdctl against the live members.
    pub fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoints().join(","))
            .args(args)
            .output()
            .expect("running etcdctl (Debian's etcd-client)")
    }

    pub fn wait_healthy(&self, within: Duration) {
        let start = Instant::now();
        loop {
            let out = self.etcdctl(&["--command-timeout", "2s", "put", "/health-probe", "ok"]);
            if out.status.success() {
                return;
            }
            if start.elapsed() > within {
                let logs: String = self
                    .members
                    .iter()
                    .map(|m| {
                        std::fs::read_to_string(self.dir.path().join(format!("{}.log", m.name)))
                            .unwrap_or_default()
                    })
                    .map(|l| l.lines().rev().take(10).collect::<Vec<_>>().join("\n"))
                    .collect();
                panic!(
                    "etcd did not become healthy within {within:?}: {}\n{logs}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}
