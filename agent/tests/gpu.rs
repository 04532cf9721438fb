//! `gpu_agent::gpu::NvmlProbe` through the real nvml-wrapper code path,
//! against the fake driver library of `tests/fake_nvml/` (its header lists the
//! state keys): the inventory, each health reading on its way into `assess`,
//! XIDs through the watcher thread, and hosts without a driver. Needs gcc; no
//! GPU, driver or docker.
//!
//! Each test loads its own copy of the library with its own state file, so
//! the tests run in parallel in one process without seeing each other's GPUs.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use gpu_agent::gpu::{
    assess, CudaVersion, GpuProbe, GpuReading, Limits, NvmlProbe, Snapshot, XidAction, XidClass,
};

/// One copy of the fake driver with its state file.
struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn new(state: &str) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        common::fake_nvml(dir.path());
        let fake = Fake { dir };
        fake.set(state);
        fake
    }

    fn lib(&self) -> PathBuf {
        self.dir.path().join("libnvidia-ml.so.1")
    }

    fn probe(&self) -> NvmlProbe {
        NvmlProbe::with_library(self.lib())
    }

    /// Replaces the state (atomically: the fake re-reads it on every call).
    fn set(&self, state: &str) {
        let tmp = self.dir.path().join("fake_nvml.state.tmp");
        std::fs::write(&tmp, state).unwrap();
        std::fs::rename(tmp, self.dir.path().join("fake_nvml.state")).unwrap();
    }

    /// Adds a line to the state, e.g. `xid=1:79`.
    fn append(&self, line: &str) {
        let path = self.dir.path().join("fake_nvml.state");
        let mut state = std::fs::read_to_string(path).unwrap();
        state.push_str(line);
        state.push('\n');
        self.set(&state);
    }

    /// How often each NVML function was called (needs `record_calls=1`).
    fn calls(&self) -> HashMap<String, u64> {
        let text =
            std::fs::read_to_string(self.dir.path().join("fake_nvml.calls")).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
            .collect()
    }

    fn call_count(&self, name: &str) -> u64 {
        self.calls().get(name).copied().unwrap_or(0)
    }
}

/// Polls `f` every 20 ms until it holds; false after `timeout`.
fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

const LIMITS: Limits = Limits {
    expected_count: Some(2),
    max_temperature_c: 85,
};

/// A GPU as the fake reports it by default (all readings healthy).
fn default_gpu(index: u32) -> GpuReading {
    GpuReading {
        index,
        uuid: format!("GPU-fake-0000-{index}"),
        name: "NVIDIA H100 80GB HBM3".into(),
        memory_total_mib: 81559,
        memory_used_mib: 0,
        temperature_c: Some(40),
        ecc_dbe_volatile: Some(0),
        remapped_rows_pending: Some(false),
        remapped_rows_failed: Some(false),
        retired_pages_pending: Some(false),
        pcie_width: Some(16),
        pcie_max_width: Some(16),
        thermal_throttled: Some(false),
        persistence_mode: Some(true),
    }
}

#[test]
fn inventory_of_two_gpus() {
    let fake = Fake::new(
        "count=2\n\
         driver=550.54.15\n\
         cuda=12040\n\
         gpu0.uuid=GPU-5e8ac2a1-0c3b-4e0a-9d6b-2f1e7c9a0b11\n\
         gpu0.mem_used_mib=1024\n\
         gpu1.name=NVIDIA A100-SXM4-40GB\n\
         gpu1.mem_total_mib=40960\n",
    );
    let snapshot = fake.probe().snapshot().unwrap();
    assert_eq!(
        snapshot,
        Snapshot {
            driver_version: "550.54.15".into(),
            cuda_version: Some(CudaVersion {
                major: 12,
                minor: 4
            }),
            gpus: vec![
                GpuReading {
                    uuid: "GPU-5e8ac2a1-0c3b-4e0a-9d6b-2f1e7c9a0b11".into(),
                    memory_used_mib: 1024,
                    ..default_gpu(0)
                },
                GpuReading {
                    name: "NVIDIA A100-SXM4-40GB".into(),
                    memory_total_mib: 40960,
                    ..default_gpu(1)
                },
            ],
        }
    );
    let a = assess(&snapshot, &LIMITS, &[]);
    assert!(a.healthy && a.problems.is_empty(), "{a:#?}");
}

#[test]
fn each_health_reading_flows_into_assess() {
    type Case = (&'static str, fn(&GpuReading) -> bool, bool, &'static str);
    let cases: [Case; 9] = [
        (
            "gpu1.temp=91",
            |g| g.temperature_c == Some(91),
            true,
            "temperature 91 °C is above the limit of 85 °C",
        ),
        (
            "gpu1.dbe=2",
            |g| g.ecc_dbe_volatile == Some(2),
            true,
            "2 volatile double-bit ECC errors",
        ),
        (
            "gpu1.remap_pending=1",
            |g| g.remapped_rows_pending == Some(true) && g.remapped_rows_failed == Some(false),
            true,
            "a memory row remapping is pending",
        ),
        (
            "gpu1.remap_failed=1",
            |g| g.remapped_rows_failed == Some(true) && g.remapped_rows_pending == Some(false),
            true,
            "a memory row remapping failed",
        ),
        (
            "gpu1.retired_pending=1",
            |g| g.retired_pages_pending == Some(true),
            true,
            "memory pages are pending retirement",
        ),
        (
            "gpu1.pcie_width=8",
            |g| g.pcie_width == Some(8) && g.pcie_max_width == Some(16),
            false,
            "PCIe link runs at x8 of x16",
        ),
        (
            "gpu1.throttle=1",
            |g| g.thermal_throttled == Some(true),
            false,
            "clocks are slowed down for heat (thermal throttling) at 40 °C",
        ),
        (
            // SW thermal slowdown counts as thermal throttling too.
            "gpu1.throttle_mask=0x20",
            |g| g.thermal_throttled == Some(true),
            false,
            "clocks are slowed down for heat",
        ),
        (
            "gpu1.persistence=0",
            |g| g.persistence_mode == Some(false),
            false,
            "persistence mode is off",
        ),
    ];
    for (line, reading_is, blocks, says) in cases {
        let fake = Fake::new(&format!("count=2\n{line}\n"));
        let s = fake.probe().snapshot().unwrap();
        assert!(reading_is(&s.gpus[1]), "{line}: {:#?}", s.gpus[1]);
        assert_eq!(s.gpus[0], default_gpu(0), "{line}");
        let a = assess(&s, &LIMITS, &[]);
        assert_eq!(a.problems.len(), 1, "{line}: {a:#?}");
        let p = &a.problems[0];
        assert_eq!(p.gpu_index, Some(1), "{line}");
        assert_eq!(p.blocks_update, blocks, "{line}");
        assert_eq!(a.healthy, !blocks, "{line}");
        let prefix = format!("GPU 1 (GPU-fake-0000-1): {says}");
        assert!(p.what.starts_with(&prefix), "{line}: {}", p.what);
    }
}

#[test]
fn throttling_for_other_reasons_is_not_thermal() {
    // SW power cap and HW slowdown (not thermal) alone.
    let fake = Fake::new("count=2\ngpu1.throttle_mask=0x4\ngpu0.throttle_mask=0x8\n");
    let s = fake.probe().snapshot().unwrap();
    assert_eq!(s.gpus[0].thermal_throttled, Some(false));
    assert_eq!(s.gpus[1].thermal_throttled, Some(false));
    assert!(assess(&s, &LIMITS, &[]).problems.is_empty());
}

#[test]
fn readings_a_device_does_not_support_are_none() {
    let fake = Fake::new(
        "count=2\ncuda=na\n\
         gpu1.temp=na\ngpu1.dbe=na\ngpu1.remap_pending=na\ngpu1.retired_pending=na\n\
         gpu1.pcie_width=na\ngpu1.pcie_max=na\ngpu1.throttle=na\ngpu1.persistence=na\n",
    );
    let s = fake.probe().snapshot().unwrap();
    assert_eq!(s.cuda_version, None);
    assert_eq!(
        s.gpus[1],
        GpuReading {
            temperature_c: None,
            ecc_dbe_volatile: None,
            remapped_rows_pending: None,
            remapped_rows_failed: None,
            retired_pages_pending: None,
            pcie_width: None,
            pcie_max_width: None,
            thermal_throttled: None,
            persistence_mode: None,
            ..default_gpu(1)
        }
    );
    assert!(assess(&s, &LIMITS, &[]).healthy);
}

#[test]
fn fewer_gpus_than_expected_blocks_updates() {
    let fake = Fake::new("count=1\n");
    let s = fake.probe().snapshot().unwrap();
    assert_eq!(s.gpus.len(), 1);
    let a = assess(&s, &LIMITS, &[]);
    assert!(!a.healthy);
    assert_eq!(a.problems.len(), 1);
    assert_eq!(a.problems[0].gpu_index, None);
    assert_eq!(a.problems[0].action, XidAction::RebootHost);
    assert!(
        a.problems[0]
            .what
            .starts_with("expected 2 GPUs, NVML sees 1 (GPU 0 (GPU-fake-0000-0)): "),
        "{}",
        a.problems[0].what
    );
}

#[test]
fn a_running_probe_sees_the_gpus_change() {
    let fake = Fake::new("count=2\n");
    let probe = fake.probe();
    assert!(assess(&probe.snapshot().unwrap(), &LIMITS, &[]).healthy);
    fake.set("count=3\ngpu2.temp=95\n");
    let s = probe.snapshot().unwrap();
    assert_eq!(s.gpus.len(), 3);
    assert_eq!(s.gpus[2].temperature_c, Some(95));
    assert!(!assess(&s, &LIMITS, &[]).healthy);
    fake.set("count=1\n");
    assert_eq!(probe.snapshot().unwrap().gpus.len(), 1);
}

#[test]
fn xids_of_each_class_come_through_the_watcher() {
    let fake = Fake::new("count=2\ngpu1.uuid=GPU-b\n");
    let probe = fake.probe();
    probe.start().unwrap();
    assert_eq!(probe.last_xid_seq(), 0);
    let sent = [
        (0, 13),
        (1, 79),
        (1, 109),
        (0, 48),
        (0, 31),
        (1, 94),
        (0, 43),
        (1, 999),
    ];
    for (gpu, code) in sent {
        fake.append(&format!("xid={gpu}:{code}"));
    }
    assert!(
        wait_until(Duration::from_secs(10), || probe.xids_since(0).len()
            == sent.len()),
        "the watcher delivered {:?}",
        probe.xids_since(0)
    );
    assert!(
        thread_named("gpu-xid"),
        "no thread named gpu-xid in this process"
    );
    let xids = probe.xids_since(0);
    let got: Vec<_> = xids
        .iter()
        .map(|x| {
            (
                x.seq,
                x.gpu_index,
                x.gpu_uuid.clone().unwrap(),
                x.code,
                x.class,
                x.action,
            )
        })
        .collect();
    use XidAction::*;
    use XidClass::*;
    let uuid = |i: u32| {
        if i == 0 {
            "GPU-fake-0000-0".to_string()
        } else {
            "GPU-b".to_string()
        }
    };
    assert_eq!(
        got,
        vec![
            (1, Some(0), uuid(0), 13, Application, RestartApp),
            (2, Some(1), uuid(1), 79, Hardware, RebootHost),
            (3, Some(1), uuid(1), 109, Ambiguous, Investigate),
            (4, Some(0), uuid(0), 48, Hardware, ResetGpu),
            (5, Some(0), uuid(0), 31, Application, RestartApp),
            (6, Some(1), uuid(1), 94, Hardware, ResetGpu),
            (7, Some(0), uuid(0), 43, Application, RestartApp),
            (8, Some(1), uuid(1), 999, Other, Investigate),
        ]
    );
    assert_eq!(xids[1].meaning, "GPU has fallen off the bus");
    assert_eq!(probe.last_xid_seq(), 8);
    assert_eq!(
        probe
            .xids_since(6)
            .iter()
            .map(|x| x.seq)
            .collect::<Vec<_>>(),
        [7, 8]
    );

    // Hardware XIDs block; application, ambiguous and other ones are reported.
    let a = assess(&probe.snapshot().unwrap(), &LIMITS, &xids);
    assert!(!a.healthy);
    let blocking: Vec<&str> = a
        .problems
        .iter()
        .filter(|p| p.blocks_update)
        .map(|p| p.what.as_str())
        .collect();
    assert_eq!(blocking.len(), 3, "{a:#?}");
    assert!(blocking[0].starts_with("GPU 1 (GPU-b): XID 79 (GPU has fallen off the bus) at "));
    assert!(blocking[1].starts_with("GPU 0 (GPU-fake-0000-0): XID 48 "));
    assert!(blocking[2].starts_with("GPU 1 (GPU-b): XID 94 "));
    assert_eq!(a.problems.len(), sent.len());

    // Each XID is delivered once: nothing more comes.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(probe.last_xid_seq(), 8);
}

/// Whether a thread of this process has that name.
fn thread_named(name: &str) -> bool {
    std::fs::read_dir("/proc/self/task").unwrap().any(|t| {
        let comm = t.unwrap().path().join("comm");
        std::fs::read_to_string(comm).is_ok_and(|c| c.trim() == name)
    })
}

#[test]
fn gpus_that_do_not_report_xids_are_left_out_of_watching() {
    // GPU 1 reports only single-bit ECC events, GPU 2 none at all.
    let fake = Fake::new("count=3\ngpu1.events=0x1\ngpu2.events=na\n");
    let probe = fake.probe();
    probe.start().unwrap();
    fake.append("xid=1:79");
    fake.append("xid=2:79");
    fake.append("xid=0:13");
    assert!(wait_until(Duration::from_secs(10), || probe.last_xid_seq() >= 1));
    std::thread::sleep(Duration::from_millis(500));
    let xids = probe.xids_since(0);
    assert_eq!(xids.len(), 1, "{xids:#?}");
    assert_eq!((xids[0].gpu_index, xids[0].code), (Some(0), 13));
}

#[test]
fn the_watcher_recovers_from_wait_errors_after_a_pause() {
    let fake = Fake::new("count=1\nrecord_calls=1\nfail_wait=2\n");
    let probe = fake.probe();
    let started = Instant::now();
    probe.start().unwrap();
    fake.append("xid=0:79");
    assert!(
        wait_until(Duration::from_secs(15), || probe.last_xid_seq() == 1),
        "no XID after the wait errors: {:?}",
        fake.calls()
    );
    // Two failures in a row, followed by pauses of 2 s and 4 s and a new event
    // set each: no busy loop.
    assert!(started.elapsed() >= Duration::from_secs(6));
    let calls = fake.calls();
    assert_eq!(calls["nvmlEventSetCreate"], 3, "{calls:?}");
    assert_eq!(calls["nvmlEventSetFree"], 2, "{calls:?}");
    assert!(calls["nvmlEventSetWait_v2"] < 20, "{calls:?}");
    assert_eq!(probe.xids_since(0)[0].class, XidClass::Hardware);
}

#[test]
fn stop_ends_the_watcher_and_drop_shuts_nvml_down() {
    let fake = Fake::new("count=2\nrecord_calls=1\n");
    let probe = fake.probe();
    probe.start().unwrap();
    assert!(wait_until(Duration::from_secs(5), || fake
        .call_count("nvmlEventSetWait_v2")
        >= 1));
    assert_eq!(fake.call_count("nvmlDeviceRegisterEvents"), 2);

    let t = Instant::now();
    probe.stop();
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(fake.call_count("nvmlEventSetFree"), 1);
    let waits = fake.call_count("nvmlEventSetWait_v2");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(fake.call_count("nvmlEventSetWait_v2"), waits);
    // NVML stays up for snapshots until the probe goes.
    assert_eq!(fake.call_count("nvmlShutdown"), 0);
    assert_eq!(probe.snapshot().unwrap().gpus.len(), 2);
    drop(probe);
    assert_eq!(fake.call_count("nvmlShutdown"), 1);
}

#[test]
fn dropping_a_watching_probe_ends_the_watcher() {
    let fake = Fake::new("count=1\nrecord_calls=1\n");
    let probe = fake.probe();
    probe.start().unwrap();
    assert!(wait_until(Duration::from_secs(5), || fake
        .call_count("nvmlEventSetWait_v2")
        >= 1));
    drop(probe);
    // The watcher holds NVML until it sees the stop, within one wait.
    assert!(
        wait_until(Duration::from_secs(3), || fake.call_count("nvmlShutdown")
            == 1),
        "{:?}",
        fake.calls()
    );
    assert_eq!(fake.call_count("nvmlEventSetFree"), 1);
}

#[test]
fn a_driver_that_is_not_loaded_is_no_driver() {
    let fake = Fake::new("count=2\nfail_init=1\nrecord_calls=1\n");
    let probe = fake.probe();
    let err = probe.snapshot().unwrap_err();
    assert!(err.is_no_driver(), "{err}");
    assert!(
        err.to_string()
            .contains("the NVIDIA kernel driver is not loaded"),
        "{err}"
    );
    assert!(probe.start().unwrap_err().is_no_driver());
    assert!(probe.xids_since(0).is_empty());
    assert_eq!(probe.last_xid_seq(), 0);
    // Not tried again within the retry interval.
    assert_eq!(fake.call_count("nvmlInit_v2"), 1);
}

#[test]
fn no_library_at_all_is_no_driver() {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libnvidia-ml.so.1");
    let probe = NvmlProbe::with_library(&lib);
    let err = probe.snapshot().unwrap_err();
    assert!(err.is_no_driver(), "{err}");
    let text = err.to_string();
    assert!(text.starts_with("no NVIDIA driver: "), "{text}");
    assert!(text.contains(&lib.display().to_string()), "{text}");
    assert!(text.contains("cannot open shared object file"), "{text}");
    assert_eq!(probe.last_xid_seq(), 0);
}

#[test]
fn a_driver_installed_later_is_picked_up_after_the_retry_interval() {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libnvidia-ml.so.1");
    std::fs::write(dir.path().join("fake_nvml.state"), "count=2\n").unwrap();
    // Built first (gcc can take longer than the interval on a busy machine),
    // installed within the interval below.
    let built = tempfile::tempdir().unwrap();
    common::fake_nvml(built.path());
    let probe = NvmlProbe::with_library(&lib).retry_interval(Duration::from_secs(1));
    assert!(probe.snapshot().unwrap_err().is_no_driver());
    std::fs::copy(built.path().join("libnvidia-ml.so.1"), &lib).unwrap();
    // Within the interval the last answer stands.
    assert!(probe.snapshot().unwrap_err().is_no_driver());
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(probe.snapshot().unwrap().gpus.len(), 2);
}

#[test]
fn without_a_state_file_beside_it_the_fake_reads_fake_nvml_state() {
    // The variable is process-wide, so the check runs in a child process: this
    // test binary again, running only this test.
    const CHILD: &str = "GPU_AGENT_TEST_FAKE_NVML_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let dir = tempfile::tempdir().unwrap();
        common::fake_nvml(dir.path());
        let probe = NvmlProbe::with_library(dir.path().join("libnvidia-ml.so.1"));
        let s = probe.snapshot().unwrap();
        assert_eq!(s.gpus.len(), 3);
        assert_eq!(s.gpus[2].uuid, "GPU-from-env");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::write(&state, "count=3\ngpu2.uuid=GPU-from-env\n").unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "without_a_state_file_beside_it_the_fake_reads_fake_nvml_state",
        ])
        .env(CHILD, "1")
        .env("FAKE_NVML_STATE", &state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("1 passed"), "{text}");
}
