//! [`FakeGpu`]: an in-memory [`GpuProbe`] for unit tests of the logic that
//! reads GPUs (the update's health gate, `agentctl health`, metrics). A test
//! sets the snapshot it answers, makes it answer "no driver", and pushes XIDs
//! as the watcher thread would.

use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{CudaVersion, GpuError, GpuProbe, GpuReading, Snapshot, Xid, XidLog};

/// GPU `index` as a healthy H100 reads: 40 °C, no ECC errors, nothing pending,
/// full x16 link, no throttling, persistence mode on. UUID `GPU-fake-0000-<index>`.
pub fn healthy_gpu(index: u32) -> GpuReading {
    GpuReading {
        index,
        uuid: format!("GPU-fake-0000-{index}"),
        name: "NVIDIA H100 80GB HBM3".to_string(),
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

/// `n` healthy GPUs (see [`healthy_gpu`]) on driver 550.54.15, CUDA 12.4.
pub fn healthy_snapshot(n: u32) -> Snapshot {
    Snapshot {
        driver_version: "550.54.15".to_string(),
        cuda_version: Some(CudaVersion {
            major: 12,
            minor: 4,
        }),
        gpus: (0..n).map(healthy_gpu).collect(),
    }
}

/// A scriptable [`GpuProbe`].
#[derive(Debug)]
pub struct FakeGpu {
    state: Mutex<State>,
    log: XidLog,
}

#[derive(Debug)]
struct State {
    snapshot: Snapshot,
    no_driver: Option<String>,
    snapshots: usize,
}

impl FakeGpu {
    /// A host with `n` healthy GPUs.
    pub fn healthy(n: u32) -> FakeGpu {
        FakeGpu::with_snapshot(healthy_snapshot(n))
    }

    pub fn with_snapshot(snapshot: Snapshot) -> FakeGpu {
        FakeGpu {
            state: Mutex::new(State {
                snapshot,
                no_driver: None,
                snapshots: 0,
            }),
            log: XidLog::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What `snapshot` answers from now on.
    pub fn set_snapshot(&self, snapshot: Snapshot) {
        self.state().snapshot = snapshot;
    }

    /// Changes the snapshot in place.
    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.state().snapshot);
    }

    /// Changes the reading of GPU `index`; panics if there is none.
    pub fn update_gpu(&self, index: u32, f: impl FnOnce(&mut GpuReading)) {
        let mut state = self.state();
        let gpu = state
            .snapshot
            .gpus
            .iter_mut()
            .find(|g| g.index == index)
            .unwrap_or_else(|| panic!("FakeGpu has no GPU {index}"));
        f(gpu);
    }

    /// Makes `snapshot` fail with [`GpuError::NoDriver`] (true) or answer again (false).
    pub fn set_no_driver(&self, no_driver: bool) {
        self.state().no_driver =
            no_driver.then(|| "libnvidia-ml.so.1: cannot open shared object file".to_string());
    }

    /// Records an XID as the watcher would; the UUID comes from the snapshot.
    pub fn push_xid(&self, code: u64, gpu_index: Option<u32>) -> Xid {
        let uuid = gpu_index.and_then(|i| {
            self.state()
                .snapshot
                .gpus
                .iter()
                .find(|g| g.index == i)
                .map(|g| g.uuid.clone())
        });
        self.log
            .push(time::OffsetDateTime::now_utc(), gpu_index, uuid, code)
    }

    /// How many times `snapshot` was called.
    pub fn snapshot_calls(&self) -> usize {
        self.state().snapshots
    }
}

impl GpuProbe for FakeGpu {
    fn snapshot(&self) -> Result<Snapshot, GpuError> {
        let mut state = self.state();
        state.snapshots += 1;
        match &state.no_driver {
            Some(detail) => Err(GpuError::NoDriver {
                detail: detail.clone(),
            }),
            None => Ok(state.snapshot.clone()),
        }
    }

    fn xids_since(&self, after: u64) -> Vec<Xid> {
        self.log.since(after)
    }

    fn last_xid_seq(&self) -> u64 {
        self.log.last_seq()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{XidAction, XidClass};

    #[test]
    fn fake_answers_what_it_is_told() {
        let gpu = FakeGpu::healthy(2);
        assert_eq!(gpu.snapshot().unwrap(), healthy_snapshot(2));
        gpu.update_gpu(1, |g| g.temperature_c = Some(99));
        assert_eq!(gpu.snapshot().unwrap().gpus[1].temperature_c, Some(99));
        gpu.set_no_driver(true);
        assert!(gpu.snapshot().unwrap_err().is_no_driver());
        gpu.set_no_driver(false);
        gpu.update(|s| s.gpus.truncate(1));
        assert_eq!(gpu.snapshot().unwrap().gpus.len(), 1);
        assert_eq!(gpu.snapshot_calls(), 4);
    }

    #[test]
    fn fake_xids_are_classified_and_numbered() {
        let gpu = FakeGpu::healthy(2);
        assert_eq!(gpu.last_xid_seq(), 0);
        gpu.push_xid(13, Some(0));
        let x = gpu.push_xid(79, Some(1));
        assert_eq!(x.seq, 2);
        assert_eq!(x.gpu_uuid.as_deref(), Some("GPU-fake-0000-1"));
        assert_eq!(
            (x.class, x.action),
            (XidClass::Hardware, XidAction::RebootHost)
        );
        assert_eq!(gpu.last_xid_seq(), 2);
        assert_eq!(gpu.xids_since(1), vec![x]);
    }
}
