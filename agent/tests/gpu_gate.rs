//! The GPU gates through the running daemon: the agent loads the fake NVML
//! driver of `tests/fake_nvml/` (found through `LD_LIBRARY_PATH`, as the real
//! `libnvidia-ml.so.1` would be) and deploys real workers on the test engine,
//! whose stub `nvidia-container-runtime-hook` serves `--gpus` requests. Also
//! what the worker sees of the GPUs it is given, and an engine that cannot
//! serve the CDI form.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

/// The fake driver in the test's folder, with its state file beside it.
struct Nvml {
    dir: PathBuf,
}

impl Nvml {
    fn new(s: &Setup, state: &str) -> Nvml {
        let dir = s.dir.path().join("nvml");
        std::fs::create_dir_all(&dir).unwrap();
        fake_nvml(&dir);
        let n = Nvml { dir };
        n.set(state);
        n
    }

    fn set(&self, state: &str) {
        let tmp = self.dir.join("fake_nvml.state.tmp");
        std::fs::write(&tmp, state).unwrap();
        std::fs::rename(tmp, self.dir.join("fake_nvml.state")).unwrap();
    }

    fn append(&self, line: &str) {
        let mut state = std::fs::read_to_string(self.dir.join("fake_nvml.state")).unwrap();
        state.push_str(line);
        state.push('\n');
        self.set(&state);
    }

    fn env(&self) -> [(&str, &str); 1] {
        [("LD_LIBRARY_PATH", self.dir.to_str().unwrap())]
    }
}

const TWO_GPUS: &str = "count=2\ndriver=550.54.15\ncuda=12040\n";

/// A config with the GPU gate on (two GPUs expected).
fn gated(s: &Setup, worker_extra: &str, stable_for: &str) -> String {
    s.config(
        "tag = \"stable\"",
        worker_extra,
        "[gpu]\ncheck = true\nexpected_count = 2\nmax_temperature_c = 85\n",
    )
    .replace(
        "stable_for = \"1s\"",
        &format!("stable_for = \"{stable_for}\""),
    )
}

fn step(s: &Setup) -> Option<String> {
    s.state()["pending"]["step"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sick_gpus_keep_the_worker_and_health_names_the_gpu() {
    let s = Setup::new("gpu-preflight");
    let v1 = s.push("v1", "stable");
    let nvml = Nvml::new(&s, TWO_GPUS);
    let agent = s.start_agent_env(&gated(&s, &s.env(""), "1s"), &nvml.env());
    s.wait_history(&v1, "success", &agent).await;
    let h = ctl(&s, &["health", "--json"]).await;
    h.expect(0);
    let h = h.json();
    assert_eq!(h["gpu"]["verdict"], "healthy", "{h:#}");
    assert_eq!(h["gpu"]["data"]["gpus"].as_array().unwrap().len(), 2);
    assert_eq!(h["gpu"]["data"]["cuda_version"], "12.4");

    nvml.set(&format!("{TWO_GPUS}gpu1.dbe=2\n"));
    let v2 = s.push("v2", "stable");
    let e = s.wait_history(&v2, "failed", &agent).await;
    let why = e["error"].as_str().unwrap();
    assert!(why.contains("GPU 1") && why.contains("double-bit"), "{why}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let c = s.running().await.unwrap();
    assert_eq!(c.digest.as_deref(), Some(v1.as_str()), "the worker stays");
    assert_eq!(
        s.history().iter().filter(|e| e["to"] == v2).count(),
        1,
        "one history line while the reason stays the same"
    );
    assert!(!s.is_marked_bad(&v2));
    let h = ctl(&s, &["health", "--json"]).await;
    h.expect(1);
    let h = h.json();
    assert_eq!(h["gpu"]["verdict"], "unhealthy", "{h:#}");
    assert!(
        h["gpu"]["detail"].as_str().unwrap().contains("GPU 1"),
        "{h:#}"
    );
    let st = ctl(&s, &["status", "--json"]).await.json();
    assert!(
        st["last_error"]
            .as_str()
            .unwrap()
            .contains("GPU pre-flight"),
        "{st:#}"
    );

    // The GPU is sound again: the update goes through.
    nvml.set(TWO_GPUS);
    s.wait_history(&v2, "success", &agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_xid_from_the_new_worker_rolls_it_back() {
    let s = Setup::new("gpu-appxid");
    let v1 = s.push("v1", "stable");
    let nvml = Nvml::new(&s, TWO_GPUS);
    let agent = s.start_agent_env(&gated(&s, &s.env(""), "6s"), &nvml.env());
    s.wait_history(&v1, "success", &agent).await;
    let v2 = s.push("v2", "stable");
    let verifying = wait_for(WAIT, || async {
        (step(&s).as_deref() == Some("verifying")).then_some(())
    })
    .await;
    assert!(verifying.is_some(), "{}", agent.log());
    nvml.append("xid=1:13");
    let e = s.wait_history(&v2, "rolled_back", &agent).await;
    let why = e["error"].as_str().unwrap();
    assert!(why.contains("XID 13") && why.contains("GPU 1"), "{why}");
    assert!(s.is_marked_bad(&v2));
    s.wait_running(&v1, "v1", &agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gpus_are_checked_after_the_swap_before_the_commit() {
    let s = Setup::new("gpu-postswap");
    let v1 = s.push("v1", "stable");
    let nvml = Nvml::new(&s, TWO_GPUS);
    let agent = s.start_agent_env(&gated(&s, &s.env(""), "6s"), &nvml.env());
    s.wait_history(&v1, "success", &agent).await;
    let v2 = s.push("v2", "stable");
    let verifying = wait_for(WAIT, || async {
        (step(&s).as_deref() == Some("verifying")).then_some(())
    })
    .await;
    assert!(verifying.is_some(), "{}", agent.log());
    // No XID: GPU 1 reports uncorrectable ECC errors with the new worker on it.
    nvml.set(&format!("{TWO_GPUS}gpu1.dbe=2\n"));
    let e = s.wait_history(&v2, "rolled_back", &agent).await;
    let why = e["error"].as_str().unwrap();
    assert!(
        why.contains("GPU health after the swap") && why.contains("GPU 1"),
        "{why}"
    );
    assert!(!s.is_marked_bad(&v2), "not the image's fault");
    assert!(s.state()["gpu_hold"].is_string(), "{:#}", s.state());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hardware_xid_is_reported_with_its_action_and_drains_the_worker() {
    let s = Setup::new("gpu-hwxid");
    let v1 = s.push("v1", "stable");
    let nvml = Nvml::new(&s, TWO_GPUS);
    let agent = s.start_agent_env(&gated(&s, &s.env(""), "1s"), &nvml.env());
    s.wait_history(&v1, "success", &agent).await;
    nvml.append("xid=0:79");
    let drained = wait_for(WAIT, || async {
        (s.state()["drain_complete"] == true).then_some(())
    })
    .await;
    assert!(drained.is_some(), "{}", agent.log());
    assert!(s.running().await.is_none(), "the worker was drained");
    let reason = s.state()["drain_reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("XID 79") && reason.contains("reboot the host"),
        "{reason}"
    );
    assert!(!s.is_marked_bad(&v1));
    let hold = s.state()["gpu_hold"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(hold.contains("XID 79"), "the hold is saved: {hold:?}");
    let h = ctl(&s, &["health", "--json"]).await.json();
    assert_eq!(h["gpu"]["verdict"], "unhealthy", "{h:#}");
    let xids = h["gpu"]["data"]["xids"].as_array().unwrap();
    assert!(
        xids.iter()
            .any(|x| x["code"] == 79 && x["class"] == "hardware" && x["action"] == "reboot_host"),
        "{h:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_needs_a_newer_cuda_is_refused_before_the_drain() {
    let s = Setup::new("gpu-cuda");
    let v1 = s.push("v1", "stable");
    let nvml = Nvml::new(&s, TWO_GPUS);
    let agent = s.start_agent_env(&gated(&s, &s.env(""), "1s"), &nvml.env());
    s.wait_history(&v1, "success", &agent).await;
    // v2 asking for CUDA 12.9, as CUDA base images say it.
    let local = format!("gpu-agent-test/cuda129:{}", s.port);
    let dockerfile = "FROM gpu-agent-test/worker:v2\nENV NVIDIA_REQUIRE_CUDA=\"cuda>=12.9 brand=tesla,driver>=535\"\n";
    let ctx = s.dir.path().join("cuda-ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    docker(&["build", "-q", "-t", &local, ctx.to_str().unwrap()]);
    let v2 = s.registry.push(&local, &s.repo, "stable");
    let e = s.wait_history(&v2, "failed", &agent).await;
    let why = e["error"].as_str().unwrap();
    assert!(
        why.contains("CUDA 12.9") && why.contains("CUDA 12.4"),
        "{why}"
    );
    assert!(s.is_marked_bad(&v2));
    let c = s.running().await.unwrap();
    assert_eq!(c.digest.as_deref(), Some(v1.as_str()));
    assert!(
        !s.events()
            .iter()
            .any(|(_, _, e)| e == "sigterm" || e == "drain"),
        "the old worker was not touched: {:?}",
        s.events()
    );
}

/// `NVIDIA_VISIBLE_DEVICES` as the worker's own process got it (the engine's
/// NVIDIA driver sets it in the process spec at start; `docker exec` does not
/// inherit it, so read PID 1's environment).
async fn visible_devices(s: &Setup) -> String {
    let env = docker(&["exec", &s.name, "/bin/busybox", "cat", "/proc/1/environ"]);
    env.split('\0')
        .find_map(|l| l.strip_prefix("NVIDIA_VISIBLE_DEVICES="))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_sees_exactly_the_gpus_configured() {
    for (gpus, seen) in [
        ("[\"GPU-1111\", \"GPU-2222\"]", "GPU-1111,GPU-2222"),
        ("2", "0,1"),
        ("\"all\"", "all"),
    ] {
        let s = Setup::new("gpu-devices");
        let v1 = s.push("v1", "stable");
        let cfg = s
            .config("tag = \"stable\"", &s.env(""), "")
            .replace("gpus = \"all\"", &format!("gpus = {gpus}"));
        let agent = s.start_agent(&cfg);
        s.wait_running(&v1, "v1", &agent).await;
        assert_eq!(visible_devices(&s).await, seen, "gpus = {gpus}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_cannot_serve_cdi_devices_is_one_clear_error() {
    let s = Setup::new("gpu-cdi");
    let v1 = s.push("v1", "stable");
    let cfg = s
        .config("tag = \"stable\"", &s.env(""), "")
        .replace("gpus = \"all\"", "gpus = \"all\"\ngpus_via = \"cdi\"");
    let agent = s.start_agent(&cfg);
    let e = s.wait_history(&v1, "failed", &agent).await;
    let why = e["error"].as_str().unwrap();
    assert!(
        why.contains("cannot give") && why.contains("nvidia-ctk cdi generate"),
        "{why}"
    );
    assert!(!s.is_marked_bad(&v1), "the image is not blamed");
    // Polls (every second) do not try again and again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        s.history().iter().filter(|e| e["to"] == v1).count(),
        1,
        "{:#?}",
        s.history()
    );
}
