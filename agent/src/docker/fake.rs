//! [`FakeEngine`]: an in-memory [`Engine`] for unit tests of the update
//! driver's decisions. It keeps containers and images the way the engine does
//! (unique names, 404 for a missing container, 409 for a taken name, force
//! remove, labels), lets a test script what a digest does once started and
//! which calls fail, and logs every call so a test can assert their order.
//!
//! The call log has one line a call, `<method> <argument>…` as the driver
//! passed them (`stop c1`, `rename c1 t-w-prev`, `set_restart c1 no`); a call
//! that failed ends in ` (failed)`. Container ids are `c1`, `c2`, … in
//! creation order.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::{Container, Engine, EngineError, HealthState, SpecHash, WorkerSpec};
use crate::registry::EngineCredentials;

/// The [`Engine`] methods, as named in the call log and in failure rules.
pub const OPS: [&str; 12] = [
    "list_managed",
    "inspect",
    "has_image",
    "pull",
    "create",
    "start",
    "stop",
    "remove",
    "rename",
    "set_restart",
    "logs_tail",
    "prune_images",
];

/// What a container of a digest does once started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStart {
    /// Keeps running; its HEALTHCHECK stays in this state (`None`: it has none).
    Runs(HealthState),
    /// Exits at once with this code.
    Exits(i64),
    /// Runs, but the engine restarts it again and again: every inspect sees
    /// the restart count one higher.
    CrashLoops,
}

/// The error the engine gives for a refused call with this HTTP status.
pub fn call_err(op: &'static str, target: &str, status: u16) -> EngineError {
    EngineError::Call {
        op,
        target: target.to_string(),
        message: format!("injected failure (status {status})"),
        status: Some(status),
    }
}

/// The error of an engine that does not answer.
pub fn unreachable() -> EngineError {
    EngineError::Unreachable {
        host: "unix:///fake/docker.sock".into(),
        message: "connection refused".into(),
    }
}

/// A pull the engine reports as failed with `message` (as the registry said it).
pub fn pull_err(message: &str) -> EngineError {
    EngineError::Pull {
        image: "(fake)".into(),
        message: message.to_string(),
    }
}

type Hook = Box<dyn FnOnce(&FakeEngine) + Send>;

/// An in-memory engine. Clones share their state.
#[derive(Clone)]
pub struct FakeEngine {
    agent_id: String,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    /// In creation order.
    containers: Vec<Entry>,
    images: BTreeSet<String>,
    image_env: HashMap<String, Vec<String>>,
    on_start: HashMap<String, OnStart>,
    /// What a container whose environment has `KEY=value` does once started
    /// (before its digest's behaviour).
    on_start_env: Vec<(String, OnStart)>,
    /// The spec labels seeded containers carry (`add_container`).
    seed_spec: Option<SpecHash>,
    logs: HashMap<String, String>,
    rules: Vec<Rule>,
    hooks: Vec<(&'static str, Hook)>,
    calls: Vec<String>,
}

#[derive(Debug, Clone)]
struct Entry {
    id: String,
    name: String,
    image: String,
    digest: Option<String>,
    agent: Option<String>,
    spec: Option<SpecHash>,
    /// `worker.env` as created (`KEY=value`).
    env: Vec<String>,
    managed: bool,
    running: bool,
    exit_code: Option<i64>,
    restart_count: i64,
    health: HealthState,
    crash_loops: bool,
    restart: String,
    restart_max_retries: Option<u32>,
}

impl Entry {
    fn container(&self) -> Container {
        Container {
            id: self.id.clone(),
            name: self.name.clone(),
            digest: self.digest.clone(),
            agent: self.agent.clone(),
            spec: self.spec.clone(),
            running: self.running,
            restarting: false,
            status: match (self.running, self.exit_code) {
                (true, _) => "running",
                (false, None) => "created",
                (false, Some(_)) => "exited",
            }
            .to_string(),
            exit_code: Some(self.exit_code.unwrap_or(0)),
            restart_count: self.restart_count,
            started_at: None,
            health: if self.running {
                self.health
            } else {
                HealthState::None
            },
            error: None,
        }
    }
}

/// A failure a test injected.
struct Rule {
    op: &'static str,
    error: EngineError,
    /// `None`: every matching call fails.
    left: Option<usize>,
    /// Only while a container of this digest runs.
    while_running: Option<String>,
}

fn op_name(op: &str) -> &'static str {
    OPS.iter()
        .find(|o| **o == op)
        .copied()
        .unwrap_or_else(|| panic!("the fake engine has no operation {op:?}; use one of {OPS:?}"))
}

fn not_found(op: &'static str, target: &str) -> EngineError {
    EngineError::Call {
        op,
        target: target.to_string(),
        message: format!("No such container: {target}"),
        status: Some(404),
    }
}

impl Inner {
    fn find(&self, id_or_name: &str) -> Option<usize> {
        self.containers
            .iter()
            .position(|c| c.id == id_or_name)
            .or_else(|| self.containers.iter().position(|c| c.name == id_or_name))
    }

    fn name_taken(&self, name: &str, except: Option<usize>) -> bool {
        self.containers
            .iter()
            .enumerate()
            .any(|(i, c)| c.name == name && Some(i) != except)
    }

    fn digest_running(&self, digest: &str) -> bool {
        self.containers
            .iter()
            .any(|c| c.running && c.digest.as_deref() == Some(digest))
    }

    /// The injected failure for this call, if any; consumes one use of it.
    fn injected(&mut self, op: &str) -> Option<EngineError> {
        let i = self.rules.iter().position(|r| {
            r.op == op
                && r.while_running
                    .as_deref()
                    .is_none_or(|d| self.digest_running(d))
        })?;
        let error = self.rules[i].error.clone();
        if let Some(left) = self.rules[i].left.as_mut() {
            *left -= 1;
            if *left == 0 {
                self.rules.remove(i);
            }
        }
        Some(error)
    }

    fn apply_start(&mut self, i: usize) {
        let digest = self.containers[i].digest.clone().unwrap_or_default();
        let by_env = self
            .on_start_env
            .iter()
            .find(|(kv, _)| self.containers[i].env.contains(kv))
            .map(|(_, b)| *b);
        let behaviour = by_env
            .or_else(|| self.on_start.get(&digest).copied())
            .unwrap_or(OnStart::Runs(HealthState::None));
        let c = &mut self.containers[i];
        c.crash_loops = false;
        match behaviour {
            OnStart::Runs(h) => {
                c.running = true;
                c.exit_code = Some(0);
                c.health = h;
            }
            OnStart::Exits(code) => {
                c.running = false;
                c.exit_code = Some(code);
                c.health = HealthState::None;
            }
            OnStart::CrashLoops => {
                c.running = true;
                c.exit_code = Some(1);
                c.health = HealthState::None;
                c.crash_loops = true;
            }
        }
    }
}

impl FakeEngine {
    /// An empty engine; `list_managed` returns the containers whose
    /// `gpu-agent.agent` label is `agent_id`.
    pub fn new(agent_id: &str) -> Self {
        FakeEngine {
            agent_id: agent_id.to_string(),
            inner: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs the hooks waiting for `op`, logs the call and returns the injected
    /// failure, if any. `call` is the log line.
    fn enter(&self, op: &'static str, call: String) -> Result<MutexGuard<'_, Inner>, EngineError> {
        let hooks: Vec<Hook> = {
            let mut s = self.lock();
            let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut s.hooks)
                .into_iter()
                .partition(|(o, _)| *o == op);
            s.hooks = later;
            now.into_iter().map(|(_, h)| h).collect()
        };
        for h in hooks {
            h(self);
        }
        let mut s = self.lock();
        match s.injected(op) {
            Some(e) => {
                s.calls.push(format!("{call} (failed)"));
                Err(e)
            }
            None => {
                s.calls.push(call);
                Ok(s)
            }
        }
    }

    /// Marks the last logged call as failed (the engine refused it itself).
    fn refused(s: &mut Inner, e: EngineError) -> EngineError {
        if let Some(last) = s.calls.last_mut() {
            last.push_str(" (failed)");
        }
        e
    }

    // --- setting the scene -------------------------------------------------

    /// Makes the image `repo@digest` present.
    pub fn add_image(&self, image_ref: &str) {
        self.lock().images.insert(image_ref.to_string());
    }

    /// Sets the environment an image declares (`KEY=value`).
    pub fn set_image_env(&self, image_ref: &str, env: &[&str]) {
        self.lock().image_env.insert(
            image_ref.to_string(),
            env.iter().map(|e| e.to_string()).collect(),
        );
    }

    /// Takes the image away (someone else pruned it).
    pub fn remove_image(&self, image_ref: &str) {
        self.lock().images.remove(image_ref);
    }

    /// Adds a container this agent manages, as the agent would have created
    /// it (restart policy `unless-stopped`, the spec labels of
    /// [`FakeEngine::seed_spec`]); returns its id. A running one behaves as
    /// its digest's [`OnStart`] says.
    pub fn add_container(&self, name: &str, digest: &str, running: bool) -> String {
        let agent = self.agent_id.clone();
        self.insert(name, Some(digest), Some(&agent), running)
    }

    /// The spec labels containers added by [`FakeEngine::add_container`]
    /// carry (`None`: none, as a version before them created it).
    pub fn seed_spec(&self, spec: Option<SpecHash>) {
        self.lock().seed_spec = spec;
    }

    /// Sets the `worker.env` a seeded container was created with.
    pub fn set_env(&self, id: &str, env: &[&str]) {
        let mut s = self.lock();
        let i = s.find(id).expect("a container");
        s.containers[i].env = env.iter().map(|e| e.to_string()).collect();
    }

    /// A container whose `worker.env` has `key=value` does this once started
    /// (whatever its digest does).
    pub fn on_start_env(&self, key_value: &str, behaviour: OnStart) {
        self.lock()
            .on_start_env
            .push((key_value.to_string(), behaviour));
    }

    /// Adds a container with the managed label but another agent's label
    /// (`None`: no agent label at all); returns its id.
    pub fn add_foreign(&self, name: &str, agent: Option<&str>, running: bool) -> String {
        self.insert(name, Some("sha256:foreign"), agent, running)
    }

    fn insert(
        &self,
        name: &str,
        digest: Option<&str>,
        agent: Option<&str>,
        running: bool,
    ) -> String {
        let mut s = self.lock();
        assert!(
            !s.name_taken(name, None),
            "the fake already has a container named {name}"
        );
        s.next_id += 1;
        let id = format!("c{}", s.next_id);
        let spec = s.seed_spec.clone();
        s.containers.push(Entry {
            id: id.clone(),
            name: name.to_string(),
            image: format!("(seeded)@{}", digest.unwrap_or("-")),
            digest: digest.map(str::to_string),
            agent: agent.map(str::to_string),
            spec,
            env: Vec::new(),
            managed: true,
            running: false,
            exit_code: None,
            restart_count: 0,
            health: HealthState::None,
            crash_loops: false,
            restart: "unless-stopped".into(),
            restart_max_retries: None,
        });
        if running {
            let i = s.containers.len() - 1;
            s.apply_start(i);
        }
        id
    }

    /// What a container of `digest` does when it is started (default: it runs
    /// and has no HEALTHCHECK).
    pub fn on_start(&self, digest: &str, behaviour: OnStart) {
        self.lock().on_start.insert(digest.to_string(), behaviour);
    }

    /// The output of containers of `digest`, for `logs_tail`.
    pub fn set_logs(&self, digest: &str, text: &str) {
        self.lock()
            .logs
            .insert(digest.to_string(), text.to_string());
    }

    /// The next call of `op` fails with `error`.
    pub fn fail_next(&self, op: &str, error: EngineError) {
        self.fail_times(op, 1, error);
    }

    /// The next `n` calls of `op` fail with `error`.
    pub fn fail_times(&self, op: &str, n: usize, error: EngineError) {
        assert!(n > 0);
        self.lock().rules.push(Rule {
            op: op_name(op),
            error,
            left: Some(n),
            while_running: None,
        });
    }

    /// Every call of `op` fails with `error` while a container of `digest` runs.
    pub fn fail_while_running(&self, op: &str, digest: &str, error: EngineError) {
        self.lock().rules.push(Rule {
            op: op_name(op),
            error,
            left: None,
            while_running: Some(digest.to_string()),
        });
    }

    /// Runs `f` just before the next call of `op` (e.g. to make an image vanish).
    pub fn before_next(&self, op: &str, f: impl FnOnce(&FakeEngine) + Send + 'static) {
        self.lock().hooks.push((op_name(op), Box::new(f)));
    }

    // --- looking at the result ---------------------------------------------

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// Forgets the calls so far (to look only at what follows).
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// Where in the call log `call` first appears.
    pub fn position(&self, call: &str) -> Option<usize> {
        self.lock().calls.iter().position(|c| c == call)
    }

    /// One container by id or name, as `inspect` would show it (without
    /// logging a call or advancing a crash loop).
    pub fn container(&self, id_or_name: &str) -> Option<Container> {
        let s = self.lock();
        s.find(id_or_name).map(|i| s.containers[i].container())
    }

    /// Every container, managed or not, in creation order.
    pub fn containers(&self) -> Vec<Container> {
        self.lock()
            .containers
            .iter()
            .map(Entry::container)
            .collect()
    }

    /// The running containers, in creation order.
    pub fn running(&self) -> Vec<Container> {
        self.containers()
            .into_iter()
            .filter(|c| c.running)
            .collect()
    }

    /// The restart policy of a container (`unless-stopped`, `no`, `on-failure:3`).
    pub fn restart_policy(&self, id_or_name: &str) -> Option<String> {
        let s = self.lock();
        s.find(id_or_name).map(|i| {
            let c = &s.containers[i];
            match c.restart_max_retries {
                Some(n) => format!("{}:{n}", c.restart),
                None => c.restart.clone(),
            }
        })
    }

    /// The `worker.env` a container was created with (`KEY=value`).
    pub fn env_of(&self, id_or_name: &str) -> Vec<String> {
        let s = self.lock();
        s.find(id_or_name)
            .map(|i| s.containers[i].env.clone())
            .unwrap_or_default()
    }

    /// The images present.
    pub fn images(&self) -> BTreeSet<String> {
        self.lock().images.clone()
    }
}

impl Engine for FakeEngine {
    async fn list_managed(&self) -> Result<Vec<Container>, EngineError> {
        let s = self.enter("list_managed", "list_managed".into())?;
        Ok(s.containers
            .iter()
            .filter(|c| c.managed && c.agent.as_deref() == Some(self.agent_id.as_str()))
            .map(Entry::container)
            .collect())
    }

    async fn inspect(&self, id: &str) -> Result<Option<Container>, EngineError> {
        let mut s = self.enter("inspect", format!("inspect {id}"))?;
        let Some(i) = s.find(id) else {
            return Ok(None);
        };
        let c = &mut s.containers[i];
        if c.running && c.crash_loops {
            c.restart_count += 1;
        }
        Ok(Some(c.container()))
    }

    async fn has_image(&self, image_ref: &str) -> Result<bool, EngineError> {
        let s = self.enter("has_image", format!("has_image {image_ref}"))?;
        Ok(s.images.contains(image_ref))
    }

    async fn image_env(&self, image_ref: &str) -> Result<Vec<String>, EngineError> {
        let s = self.enter("image_env", format!("image_env {image_ref}"))?;
        if !s.images.contains(image_ref) {
            return Err(call_err("inspect image", image_ref, 404));
        }
        Ok(s.image_env.get(image_ref).cloned().unwrap_or_default())
    }

    async fn pull(
        &self,
        image_ref: &str,
        _creds: Option<EngineCredentials>,
    ) -> Result<(), EngineError> {
        let mut s = self.enter("pull", format!("pull {image_ref}"))?;
        s.images.insert(image_ref.to_string());
        Ok(())
    }

    async fn create(&self, name: &str, spec: &WorkerSpec) -> Result<String, EngineError> {
        let mut s = self.enter("create", format!("create {name}"))?;
        if s.name_taken(name, None) {
            let e = EngineError::Call {
                op: "create",
                target: name.to_string(),
                message: format!("Conflict. The container name \"/{name}\" is already in use"),
                status: Some(409),
            };
            return Err(Self::refused(&mut s, e));
        }
        if !s.images.contains(&spec.image_ref) {
            let e = EngineError::Call {
                op: "create",
                target: name.to_string(),
                message: format!("No such image: {}", spec.image_ref),
                status: Some(404),
            };
            return Err(Self::refused(&mut s, e));
        }
        s.next_id += 1;
        let id = format!("c{}", s.next_id);
        s.containers.push(Entry {
            id: id.clone(),
            name: name.to_string(),
            image: spec.image_ref.clone(),
            digest: Some(spec.digest.clone()),
            agent: Some(spec.agent_id.clone()),
            spec: Some(spec.spec_hash()),
            env: spec
                .worker
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            managed: true,
            running: false,
            exit_code: None,
            restart_count: 0,
            health: HealthState::None,
            crash_loops: false,
            restart: spec.worker.restart.clone(),
            restart_max_retries: spec.worker.restart_max_retries,
        });
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<(), EngineError> {
        let mut s = self.enter("start", format!("start {id}"))?;
        let Some(i) = s.find(id) else {
            return Err(Self::refused(&mut s, not_found("start", id)));
        };
        // Starting a running container is a no-op (the engine answers 304).
        if !s.containers[i].running {
            s.apply_start(i);
        }
        Ok(())
    }

    async fn stop(&self, id: &str, _timeout: Duration) -> Result<(), EngineError> {
        let mut s = self.enter("stop", format!("stop {id}"))?;
        let Some(i) = s.find(id) else {
            return Err(Self::refused(&mut s, not_found("stop", id)));
        };
        let c = &mut s.containers[i];
        if c.running {
            c.running = false;
            c.crash_loops = false;
            c.exit_code = Some(143);
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), EngineError> {
        let mut s = self.enter("remove", format!("remove {id}"))?;
        if let Some(i) = s.find(id) {
            s.containers.remove(i);
        }
        Ok(())
    }

    async fn rename(&self, id: &str, name: &str) -> Result<(), EngineError> {
        let mut s = self.enter("rename", format!("rename {id} {name}"))?;
        let Some(i) = s.find(id) else {
            return Err(Self::refused(&mut s, not_found("rename", id)));
        };
        if s.containers[i].name == name {
            let e = EngineError::Call {
                op: "rename",
                target: id.to_string(),
                message: "Renaming a container with the same name as its current name".into(),
                status: Some(400),
            };
            return Err(Self::refused(&mut s, e));
        }
        if s.name_taken(name, Some(i)) {
            let e = EngineError::Call {
                op: "rename",
                target: id.to_string(),
                message: format!("Conflict. The container name \"/{name}\" is already in use"),
                status: Some(409),
            };
            return Err(Self::refused(&mut s, e));
        }
        s.containers[i].name = name.to_string();
        Ok(())
    }

    async fn set_restart(
        &self,
        id: &str,
        policy: &str,
        max_retries: Option<u32>,
    ) -> Result<(), EngineError> {
        let mut s = self.enter("set_restart", format!("set_restart {id} {policy}"))?;
        let Some(i) = s.find(id) else {
            return Err(Self::refused(&mut s, not_found("set_restart", id)));
        };
        let c = &mut s.containers[i];
        c.restart = policy.to_string();
        c.restart_max_retries = max_retries;
        Ok(())
    }

    async fn logs_tail(&self, id: &str, lines: usize) -> Result<String, EngineError> {
        let mut s = self.enter("logs_tail", format!("logs_tail {id}"))?;
        let Some(i) = s.find(id) else {
            return Err(Self::refused(&mut s, not_found("logs_tail", id)));
        };
        let digest = s.containers[i].digest.clone().unwrap_or_default();
        let text = s.logs.get(&digest).cloned().unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        Ok(all[all.len().saturating_sub(lines)..].join("\n"))
    }

    async fn prune_images(&self, repository: &str, keep: &[String]) -> Result<usize, EngineError> {
        let mut s = self.enter("prune_images", format!("prune_images {repository}"))?;
        let prefix = format!("{repository}@");
        // An image a container uses is refused by the engine and stays.
        let prunable: Vec<String> = s
            .images
            .iter()
            .filter(|r| {
                r.strip_prefix(&prefix)
                    .is_some_and(|d| !keep.iter().any(|k| k == d))
                    && !s.containers.iter().any(|c| &c.image == *r)
            })
            .cloned()
            .collect();
        for r in &prunable {
            s.images.remove(r);
        }
        Ok(prunable.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_are_unique_and_failures_are_injected_once() {
        let fake = FakeEngine::new("me");
        let a = fake.add_container("w", "sha256:a", true);
        let b = fake.add_container("w-next", "sha256:b", false);
        let e = fake.rename(&b, "w").await.unwrap_err();
        assert!(
            matches!(
                e,
                EngineError::Call {
                    status: Some(409),
                    ..
                }
            ),
            "{e}"
        );
        fake.fail_next("stop", unreachable());
        assert!(fake
            .stop(&a, Duration::ZERO)
            .await
            .unwrap_err()
            .is_engine_down());
        fake.stop(&a, Duration::ZERO).await.unwrap();
        fake.rename(&a, "w-prev").await.unwrap();
        fake.rename(&b, "w").await.unwrap();
        assert_eq!(
            fake.calls(),
            [
                "rename c2 w (failed)",
                "stop c1 (failed)",
                "stop c1",
                "rename c1 w-prev",
                "rename c2 w"
            ]
        );
        assert!(!fake.container("w-prev").unwrap().running);
        fake.add_foreign("x", Some("other"), true);
        let managed: Vec<String> = fake
            .list_managed()
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(managed, ["w-prev", "w"]);
    }

    #[tokio::test]
    async fn started_containers_behave_as_their_digest_is_scripted() {
        let fake = FakeEngine::new("me");
        fake.on_start("sha256:x", OnStart::Exits(3));
        fake.on_start("sha256:y", OnStart::CrashLoops);
        fake.add_container("x", "sha256:x", true);
        fake.add_container("y", "sha256:y", true);
        let x = fake.inspect("x").await.unwrap().unwrap();
        assert_eq!((x.running, x.exit_code), (false, Some(3)));
        let first = fake.inspect("y").await.unwrap().unwrap().restart_count;
        let second = fake.inspect("y").await.unwrap().unwrap().restart_count;
        assert!(second > first);
        assert_eq!(fake.inspect("gone").await.unwrap(), None);
    }
}
