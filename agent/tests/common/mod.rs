//! Test helpers for the integration tests: the private engine and registry
//! that `scripts/test.sh` starts, a per-test registry process, the test
//! worker images, and a running `gpu-agent` process to poke at.
//!
//! Every test gets its own registry (its own port and storage), its own agent
//! id (so the agents sharing the engine keep apart), worker name and port.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use gpu_agent::docker::{BollardEngine, Container, Engine};
use serde_json::Value;

pub const WAIT: Duration = Duration::from_secs(90);

pub fn docker_host() -> String {
    std::env::var("GPU_AGENT_TEST_DOCKER_HOST").expect(
        "GPU_AGENT_TEST_DOCKER_HOST is not set: run the integration tests through scripts/test.sh, \
         which starts a private dockerd and registry",
    )
}

pub fn registry_bin() -> String {
    std::env::var("GPU_AGENT_TEST_REGISTRY_BIN").unwrap_or_else(|_| "docker-registry".into())
}

/// A free loopback port (bind to 0, read it, let it go).
pub fn free_port() -> u16 {
    // Spread tests over a range so a port just let go is not handed out twice.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        drop(l);
        if NEXT.swap(p, Ordering::SeqCst) != p {
            return p;
        }
    }
}

/// Runs the docker CLI against the test engine; panics with its output on failure.
pub fn docker(args: &[&str]) -> String {
    docker_env(args, &[])
}

pub fn docker_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new("docker")
        .env("DOCKER_HOST", docker_host())
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("running the docker CLI");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "docker {args:?} failed: {text}");
    text
}

/// A `docker-registry` process on its own loopback port and storage.
pub struct Registry {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    extra: String,
}

impl Registry {
    pub fn start() -> Registry {
        Self::start_with("")
    }

    /// `extra` is YAML added to the config (e.g. an `auth:` section).
    pub fn start_with(extra: &str) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry {
            port: free_port(),
            dir,
            child: None,
            extra: extra.to_string(),
        };
        r.launch();
        r
    }

    fn launch(&mut self) {
        let cfg = self.dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {{addr: 127.0.0.1:{}}}\n{}",
                self.dir.path().join("data").display(),
                self.port,
                self.extra
            ),
        )
        .unwrap();
        let log = std::fs::File::create(self.dir.path().join("registry.log")).unwrap();
        let child = Command::new(registry_bin())
            .arg("serve")
            .arg(&cfg)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Another handle on this registry, for several agents that pull from one
    /// registry (`Setup::with_registry`): it does not own the process (dropping
    /// it stops nothing), and its `dir` is an empty folder of its own.
    pub fn shared(&self) -> Registry {
        Registry {
            port: self.port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
            extra: self.extra.clone(),
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the process; the storage stays for [`Registry::restart`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Tags a local test image into this registry and pushes it; returns its digest.
    pub fn push(&self, local: &str, repo: &str, tag: &str) -> String {
        self.push_env(local, repo, tag, &[])
    }

    pub fn push_env(&self, local: &str, repo: &str, tag: &str, env: &[(&str, &str)]) -> String {
        let target = format!("{}/{repo}:{tag}", self.host());
        docker(&["tag", local, &target]);
        let out = docker_env(&["push", &target], env);
        let digest = out
            .split_whitespace()
            .skip_while(|w| *w != "digest:")
            .nth(1)
            .unwrap_or_else(|| panic!("no digest in push output: {out}"))
            .to_string();
        docker(&["rmi", &target]);
        digest
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The fields the SPEC promises in `agentctl status --json` (and so in every hub report).
pub const STATUS_FIELDS: [&str; 10] = [
    "agent_id",
    "phase",
    "current_digest",
    "last_good_digest",
    "drained",
    "pinned",
    "bad_digests",
    "last_check",
    "next_check",
    "last_error",
];

/// A registry behind htpasswd with one user, and a docker CLI config folder
/// logged in to it: push with `registry.push_env(.., &[("DOCKER_CONFIG", cli)])`.
pub fn htpasswd_registry(dir: &Path, user: &str, password: &str) -> (Registry, PathBuf) {
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        .expect("htpasswd (apache2-utils) is installed by scripts/test.sh");
    let htpasswd = dir.join("htpasswd");
    std::fs::write(&htpasswd, &out.stdout).unwrap();
    let reg = Registry::start_with(&format!(
        "auth: {{htpasswd: {{realm: test, path: {}}}}}\n",
        htpasswd.display()
    ));
    // The docker CLI logs in with a config folder of its own.
    let cli = dir.join("cli");
    std::fs::create_dir(&cli).unwrap();
    docker_env(
        &["login", "-u", user, "-p", password, &reg.host()],
        &[("DOCKER_CONFIG", cli.to_str().unwrap())],
    );
    (reg, cli)
}

/// Writes a docker `config.json` (the agent's `image.auth_file`) holding
/// `user:password` for `host`, with `mode`.
pub fn write_auth_file(path: &Path, host: &str, user: &str, password: &str, mode: u32) {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    std::fs::write(
        path,
        format!("{{\"auths\": {{\"{host}\": {{\"auth\": \"{auth}\"}}}}}}"),
    )
    .unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

/// The test worker images built by `scripts/build-test-images.sh`.
pub fn image(variant: &str) -> String {
    format!("gpu-agent-test/worker:{variant}")
}

/// Everything one test needs to run an agent.
pub struct Setup {
    pub name: String,
    pub agent_id: String,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub events: PathBuf,
    pub registry: Registry,
    pub repo: String,
}

impl Setup {
    pub fn new(name: &str) -> Setup {
        Self::with_registry(name, Registry::start())
    }

    pub fn with_registry(name: &str, registry: Registry) -> Setup {
        gpu_agent::init_tls();
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events");
        std::fs::create_dir_all(&events).unwrap();
        // The worker writes as root into the mounted folder.
        let _ =
            std::fs::set_permissions(&events, std::os::unix::fs::PermissionsExt::from_mode(0o777));
        let s = Setup {
            name: format!("t-{name}"),
            agent_id: format!("test-{name}"),
            port: free_port(),
            dir,
            events,
            registry,
            repo: format!("test/{name}"),
        };
        s.cleanup_engine();
        s
    }

    pub fn image_repo(&self) -> String {
        format!("{}/{}", self.registry.host(), self.repo)
    }

    pub fn push(&self, variant: &str, tag: &str) -> String {
        self.registry.push(&image(variant), &self.repo, tag)
    }

    pub fn health_url(&self) -> String {
        format!("http://127.0.0.1:{}/cgi-bin/health", self.port)
    }

    /// `[worker.drain]` with this worker's drain endpoint and `timeout`.
    pub fn drain_table(&self, timeout: &str) -> String {
        format!(
            "[worker.drain]\nhttp = \"{}\"\ntimeout = \"{timeout}\"\n",
            self.drain_url()
        )
    }

    pub fn drain_url(&self) -> String {
        format!("http://127.0.0.1:{}/cgi-bin/drain", self.port)
    }

    /// A config for this test; `extra` is appended (later keys may not repeat
    /// earlier ones, so pass whole tables such as `[worker.drain]`).
    pub fn config(&self, image_extra: &str, worker_extra: &str, extra: &str) -> String {
        format!(
            r#"[agent]
id = "{id}"
state_dir = "{state}"
control_socket = "{sock}"

[docker]
host = "{docker}"

[image]
repository = "{repo}"
poll_interval = "1s"
poll_jitter = "0s"
insecure = true
{image_extra}

[worker]
name = "{name}"
network = "host"
gpus = "all"
stop_timeout = "5s"
volumes = ["{events}:/events"]
{worker_extra}

[worker.health]
http = "{health}"
timeout = "15s"
stable_for = "1s"

{gpu}
{extra}
"#,
            // The test engine serves GPU requests through a stub hook, but
            // there is no NVML: the GPU gate is off unless a test sets [gpu].
            gpu = if extra.contains("[gpu]") {
                ""
            } else {
                "[gpu]\ncheck = false\n"
            },
            id = self.agent_id,
            state = self.dir.path().join("state").display(),
            sock = self.dir.path().join("agent.sock").display(),
            docker = docker_host(),
            repo = self.image_repo(),
            name = self.name,
            events = self.events.display(),
            health = self.health_url(),
        )
    }

    /// The worker environment every test passes: its port and the events file.
    pub fn env(&self, extra: &str) -> String {
        format!(
            "env = {{ PORT = \"{}\", EVENTS_FILE = \"/events/log\"{} }}",
            self.port,
            if extra.is_empty() {
                String::new()
            } else {
                format!(", {extra}")
            }
        )
    }

    pub fn write_config(&self, text: &str) -> PathBuf {
        let path = self.dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn start_agent(&self, config: &str) -> Agent {
        self.start_agent_env(config, &[])
    }

    pub fn start_agent_env(&self, config: &str, env: &[(&str, &str)]) -> Agent {
        let path = self.write_config(config);
        Agent::spawn(&path, &self.dir.path().join("agent.log"), env)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn state(&self) -> Value {
        std::fs::read_to_string(self.state_dir().join("state.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null)
    }

    /// Whether `state.json` marks `digest` bad.
    pub fn is_marked_bad(&self, digest: &str) -> bool {
        self.state()["bad_digests"]
            .as_array()
            .is_some_and(|a| a.iter().any(|b| b["digest"] == digest))
    }

    pub fn history(&self) -> Vec<Value> {
        std::fs::read_to_string(self.state_dir().join("history.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("history lines parse"))
            .collect()
    }

    pub fn events(&self) -> Vec<(u64, String, String)> {
        std::fs::read_to_string(self.events.join("log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some((
                    it.next()?.parse().ok()?,
                    it.next()?.to_string(),
                    it.next()?.to_string(),
                ))
            })
            .collect()
    }

    pub async fn engine(&self) -> BollardEngine {
        BollardEngine::connect(&docker_host(), &self.agent_id)
            .await
            .unwrap()
    }

    pub async fn managed(&self) -> Vec<Container> {
        self.engine().await.list_managed().await.unwrap()
    }

    /// The one running managed container; panics if more than one runs.
    pub async fn running(&self) -> Option<Container> {
        let running: Vec<Container> = self
            .managed()
            .await
            .into_iter()
            .filter(|c| c.running)
            .collect();
        assert!(running.len() <= 1, "two managed workers run: {running:#?}");
        running.into_iter().next()
    }

    /// The worker's health answer, if it answers 2xx.
    pub async fn health(&self) -> Option<Value> {
        let r = reqwest::Client::new()
            .get(self.health_url())
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// Waits until the worker runs `digest` under the worker name and answers healthy
    /// with `version`.
    pub async fn wait_running(&self, digest: &str, version: &str, agent: &Agent) {
        let ok = wait_for(WAIT, || async {
            let c = self.running().await?;
            (c.name == self.name && c.digest.as_deref() == Some(digest)).then_some(())?;
            let h = self.health().await?;
            (h["version"] == version).then_some(())
        })
        .await;
        if ok.is_none() {
            panic!(
                "worker never ran {version} ({digest}); containers: {:#?}\nagent log:\n{}",
                self.managed().await,
                agent.log()
            );
        }
    }

    /// Waits until the history has an entry with `outcome` for `to`.
    pub async fn wait_history(&self, to: &str, outcome: &str, agent: &Agent) -> Value {
        let found = wait_for(WAIT, || async {
            self.history()
                .into_iter()
                .find(|e| e["to"] == to && e["outcome"] == outcome)
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "no {outcome} entry for {to} in history {:#?}\nagent log:\n{}",
                self.history(),
                agent.log()
            )
        })
    }

    fn cleanup_engine(&self) {
        let ids = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=gpu-agent.agent={}", self.agent_id),
        ]);
        for id in ids.split_whitespace() {
            let _ = Command::new("docker")
                .env("DOCKER_HOST", docker_host())
                .args(["rm", "-f", id])
                .output();
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.cleanup_engine();
        self.remove_pulled_images();
    }
}

impl Setup {
    /// Removes the references the agents pulled from this test's registry
    /// (by reference only: the image itself stays while other names hold it).
    fn remove_pulled_images(&self) {
        let Ok(out) = Command::new("docker")
            .env("DOCKER_HOST", docker_host())
            .args([
                "images",
                "--digests",
                "--format",
                "{{.Repository}}@{{.Digest}}",
            ])
            .output()
        else {
            return;
        };
        let repo = self.image_repo();
        let refs: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.split('@').next() == Some(repo.as_str()) && !l.ends_with("<none>"))
            .map(str::to_string)
            .collect();
        if !refs.is_empty() {
            let _ = Command::new("docker")
                .env("DOCKER_HOST", docker_host())
                .arg("rmi")
                .args(&refs)
                .output();
        }
    }
}

/// A running `gpu-agent run` process; killed (-9) on drop.
pub struct Agent {
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    pub fn spawn(config: &Path, log: &Path, env: &[(&str, &str)]) -> Agent {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gpu-agent"))
            .args(["run", "-v", "--config"])
            .arg(config)
            .env("RUST_LOG", "gpu_agent=debug,info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("starting gpu-agent");
        Agent {
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Waits until the log contains `text`.
    pub async fn wait_log(&self, text: &str) {
        if wait_for(WAIT, || async { self.log().contains(text).then_some(()) })
            .await
            .is_none()
        {
            panic!("agent never logged {text:?}:\n{}", self.log());
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("agent did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn exited(&mut self) -> Option<i32> {
        self.child
            .as_mut()?
            .try_wait()
            .unwrap()
            .map(|s| s.code().unwrap_or(-1))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `f` every 100 ms until it gives `Some`, or `timeout` passes.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- agentctl as an operator runs it ----

/// What one agentctl run did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("agentctl printed no JSON ({e}): {self:#?}"))
    }

    #[track_caller]
    pub fn expect(&self, code: i32) -> &Run {
        assert_eq!(self.code, code, "agentctl exit code: {self:#?}");
        self
    }
}

/// Runs agentctl with `args` (no `--socket`: pass it, or use [`ctl`]).
pub async fn agentctl(args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .args(args)
        .env_remove("GPU_AGENT_SOCKET")
        .envs(env.iter().copied())
        .output()
        .await
        .expect("running agentctl");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs agentctl against the test's agent.
pub async fn ctl(s: &Setup, args: &[&str]) -> Run {
    let sock = socket(s);
    let mut all = vec!["--socket", sock.to_str().unwrap()];
    all.extend_from_slice(args);
    agentctl(&all, &[]).await
}

pub fn socket(s: &Setup) -> PathBuf {
    s.dir.path().join("agent.sock")
}

/// Puts the fake NVML driver library (`tests/fake_nvml/fake_nvml.c`) into
/// `dir` as `libnvidia-ml.so.1` and returns `dir`. The library is compiled once
/// per test process and copied here, so that each directory holds its own copy:
/// each copy loads as its own library, with its own state, read from
/// `fake_nvml.state` beside it (see the header of `fake_nvml.c` for the keys).
pub fn fake_nvml(dir: &Path) -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake_nvml/fake_nvml.c");
        let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fake_nvml");
        std::fs::create_dir_all(&out_dir).unwrap();
        // Compile under a name of our own, then rename: test binaries run at once.
        let tmp = out_dir.join(format!("libnvidia-ml.so.1.{}", std::process::id()));
        let out = Command::new("gcc")
            .args(["-shared", "-fPIC", "-Wall", "-o"])
            .arg(&tmp)
            .arg(&src)
            .output()
            .expect("running gcc (needed to build the fake NVML library)");
        assert!(
            out.status.success(),
            "gcc failed to build {}: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let built = out_dir.join("libnvidia-ml.so.1");
        std::fs::rename(&tmp, &built).unwrap();
        built
    });
    std::fs::copy(built, dir.join("libnvidia-ml.so.1")).unwrap();
    dir.to_path_buf()
}

// ---- kill -9 tests: watching the engine, and what a converged host is ----

/// Watches the engine from a task (every ~100 ms) while an agent is killed and
/// restarted: the longest time no managed worker ran, and the most that ran at once.
pub struct Watch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Gaps>,
}

/// What a [`Watch`] saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gaps {
    /// The longest stretch with no managed worker running.
    pub longest_none: Duration,
    /// The most managed workers seen running at once.
    pub most_running: usize,
    /// How many times the engine was asked.
    pub samples: u64,
}

impl Watch {
    pub async fn start(s: &Setup) -> Watch {
        let engine = s.engine().await;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut g = Gaps::default();
            let mut none_since: Option<Instant> = None;
            while !flag.load(Ordering::SeqCst) {
                let now = Instant::now();
                if let Ok(cs) = engine.list_managed().await {
                    g.samples += 1;
                    let n = cs.iter().filter(|c| c.running).count();
                    g.most_running = g.most_running.max(n);
                    match (n, none_since) {
                        (0, None) => none_since = Some(now),
                        (0, Some(_)) => {}
                        (_, Some(t)) => {
                            g.longest_none = g.longest_none.max(now - t);
                            none_since = None;
                        }
                        _ => {}
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if let Some(t) = none_since {
                g.longest_none = g.longest_none.max(Instant::now() - t);
            }
            g
        });
        Watch { stop, task }
    }

    pub async fn finish(self) -> Gaps {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

impl Setup {
    /// Waits until the host has converged on `digest` (`version`), then checks
    /// every invariant of a settled host: exactly one managed container, named
    /// as the worker (no `-next`/`-prev` left), running and healthy; the state
    /// file parses, has no update pending and names the running container's
    /// `gpu-agent.digest` label as current; every history line parses.
    pub async fn assert_converged(&self, digest: &str, version: &str, agent: &Agent) {
        let settled = wait_for(WAIT, || async {
            let cs = self.managed().await;
            let [c] = cs.as_slice() else { return None };
            (c.running && c.name == self.name && c.digest.as_deref() == Some(digest))
                .then_some(())?;
            let st = self.state();
            (st["pending"].is_null() && st["current_digest"] == digest).then_some(())?;
            (self.health().await?["version"] == version).then_some(())
        })
        .await;
        if settled.is_none() {
            panic!(
                "never converged on {version} ({digest}): containers {:#?}\nstate {}\nagent log:\n{}",
                self.managed().await,
                self.state(),
                agent.log()
            );
        }
        let text = std::fs::read_to_string(self.state_dir().join("state.json")).unwrap();
        let st: Value = serde_json::from_str(&text).expect("state.json parses");
        let cs = self.managed().await;
        assert_eq!(cs.len(), 1, "left over containers: {cs:#?}");
        assert_eq!(
            Some(st["current_digest"].as_str().unwrap()),
            cs[0].digest.as_deref(),
            "state {st} against the engine {cs:#?}"
        );
        assert!(st["pending"].is_null(), "{st}");
        assert!(!self.history().is_empty());
    }
}

// ---- shared by the fault suites ----

/// The value of one series (`name{labels}`, as the text shows it) in the
/// agent's /metrics on `port`; `None` when it is not there or the agent does
/// not answer.
pub async fn metric(port: u16, series: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// `agentctl status --json`, once the agent answers (it may be starting).
pub async fn status(s: &Setup) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = ctl(s, &["status", "--json"]).await;
        if r.code != 3 || Instant::now() > deadline {
            return r.expect(0).json();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A small tmpfs mounted at a folder; unmounted (lazily) on drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mount tmpfs (needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }

    /// Fills the file system with `fill` files until a write fails.
    pub fn fill(&self) {
        use std::io::Write as _;
        let mut f = std::fs::File::create(self.0.join("fill")).unwrap();
        let block = [0u8; 1024];
        while f.write_all(&block).and_then(|_| f.sync_data()).is_ok() {}
        // Small files for whatever fragments remain.
        for i in 0..256 {
            if std::fs::write(self.0.join(format!("fill-{i}")), [0u8; 64]).is_err() {
                break;
            }
        }
    }

    pub fn free(&self) {
        let _ = std::fs::remove_file(self.0.join("fill"));
        for i in 0..256 {
            let _ = std::fs::remove_file(self.0.join(format!("fill-{i}")));
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
