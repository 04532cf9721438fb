//! The GPUs of this host, through NVML: what they are (inventory, driver and
//! CUDA version), how they are (temperature, ECC, row remapping, page
//! retirement, PCIe link, throttling, persistence mode) and the XID errors the
//! driver reports. [`GpuProbe`] is the trait the rest of the agent reads;
//! [`NvmlProbe`] implements it over nvml-wrapper (`libnvidia-ml.so.1`, loaded
//! at run time, so the agent runs on hosts without a driver), and `fake`
//! implements it in memory for unit tests.
//!
//! What the readings mean is decided here too, without I/O: [`classify`] maps
//! an XID code to NVIDIA's catalog, and [`assess`] turns a [`Snapshot`] and
//! recent XIDs into the problems that block an update or are only reported.
//!
//! Architecture invariant: `gpu/` reads and judges; it never decides whether
//! an update runs (`update/` does, from an [`Assessment`]).

mod assess;
#[cfg(test)]
pub mod fake;
mod nvml;
mod xid;

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub use assess::{assess, Assessment, Limits, Problem};
pub use nvml::NvmlProbe;
pub(crate) use xid::XidLog;
pub use xid::{classify, XID_LOG_CAPACITY};

/// A CUDA version as the driver supports it (NVML) or an image requires it
/// (`NVIDIA_REQUIRE_CUDA="cuda>=12.4"`). Ordered: `12.4 < 12.10 < 13.0`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct CudaVersion {
    pub major: u32,
    pub minor: u32,
}

impl CudaVersion {
    /// From NVML's integer form (`1000 * major + 10 * minor`: 12040 is 12.4).
    pub fn from_nvml(version: i32) -> Option<CudaVersion> {
        let v = u32::try_from(version).ok().filter(|v| *v > 0)?;
        Some(CudaVersion {
            major: v / 1000,
            minor: (v % 1000) / 10,
        })
    }
}

impl fmt::Display for CudaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A CUDA version that is not `MAJOR` or `MAJOR.MINOR`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CUDA version {0:?}: expected MAJOR or MAJOR.MINOR, e.g. 12.4")]
pub struct CudaVersionError(pub String);

impl FromStr for CudaVersion {
    type Err = CudaVersionError;

    /// `"12.4"` or `"12"` (minor 0); surrounding whitespace is ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || CudaVersionError(s.to_string());
        let t = s.trim();
        let (major, minor) = match t.split_once('.') {
            Some((major, minor)) => (major, minor),
            None => (t, "0"),
        };
        let number = |part: &str| {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            part.parse::<u32>().map_err(|_| bad())
        };
        Ok(CudaVersion {
            major: number(major)?,
            minor: number(minor)?,
        })
    }
}

/// One GPU as read now. `None`: the device does not support that reading
/// (NVML's NotSupported), e.g. ECC counters with ECC disabled.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GpuReading {
    /// NVML's index (the order `nvidia-smi` lists the GPUs in).
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub memory_total_mib: u64,
    pub memory_used_mib: u64,
    pub temperature_c: Option<u32>,
    /// Volatile double-bit (uncorrected) ECC errors since the last driver load
    /// or GPU reset (None: ECC not supported/enabled).
    pub ecc_dbe_volatile: Option<u64>,
    /// A row remapping waits for a GPU reset to take effect.
    pub remapped_rows_pending: Option<bool>,
    /// A row remapping failed: the memory can no longer be repaired.
    pub remapped_rows_failed: Option<bool>,
    /// Pages are waiting to be retired at the next driver load (pre-Ampere).
    pub retired_pages_pending: Option<bool>,
    pub pcie_width: Option<u32>,
    pub pcie_max_width: Option<u32>,
    /// HW or SW thermal slowdown among the current clock throttle reasons.
    pub thermal_throttled: Option<bool>,
    pub persistence_mode: Option<bool>,
}

/// Every GPU of the host, read at one time.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Snapshot {
    pub driver_version: String,
    /// The highest CUDA version the driver supports (None: NVML cannot say).
    pub cuda_version: Option<CudaVersion>,
    pub gpus: Vec<GpuReading>,
}

/// Who is likely at fault for an XID, after NVIDIA's XID catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum XidClass {
    /// The application's own fault; the GPU is fine.
    Application,
    /// The GPU (or its link, memory, firmware) is at fault.
    Hardware,
    /// May be the application or the GPU.
    Ambiguous,
    /// Informational, unused, or not in the catalog.
    Other,
}

/// What the catalog says to do first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum XidAction {
    RestartApp,
    ResetGpu,
    RebootHost,
    Investigate,
}

/// An XID error the watcher saw (NVML's critical XID event).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Xid {
    /// Increasing from 1 per probe, so that readers can ask for what is new.
    pub seq: u64,
    /// When the agent received it.
    #[serde(with = "time::serde::rfc3339")]
    pub at: time::OffsetDateTime,
    pub gpu_index: Option<u32>,
    pub gpu_uuid: Option<String>,
    pub code: u64,
    pub class: XidClass,
    pub action: XidAction,
    /// The catalog's description, e.g. "GPU has fallen off the bus".
    pub meaning: &'static str,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum GpuError {
    /// No NVIDIA driver on this host (no `libnvidia-ml.so.1`, or its kernel
    /// module is not loaded): not an error on a host without GPUs.
    #[error("no NVIDIA driver: {detail}")]
    NoDriver { detail: String },
    /// An NVML call failed; `call` is the NVML function.
    #[error("NVML {call}: {message}")]
    Nvml { call: &'static str, message: String },
}

impl GpuError {
    pub fn is_no_driver(&self) -> bool {
        matches!(self, GpuError::NoDriver { .. })
    }
}

/// The GPUs of this host, as the rest of the agent sees them.
pub trait GpuProbe: Send + Sync + 'static {
    /// Reads every GPU now. Blocking (NVML calls): callers use spawn_blocking.
    fn snapshot(&self) -> Result<Snapshot, GpuError>;
    /// XIDs the watcher saw with seq > after (it keeps the last 1024), oldest first.
    fn xids_since(&self, after: u64) -> Vec<Xid>;
    /// The seq of the newest XID seen (0: none yet).
    fn last_xid_seq(&self) -> u64;
}

/// How long a snapshot of every GPU may take. NVML calls on a GPU that fell
/// off the bus can block for good; past this the reading is an error (the
/// update waits) instead of a hung loop.
pub const SNAPSHOT_DEADLINE: Duration = Duration::from_secs(30);
/// Snapshots that ran past their deadline and still block their thread; at
/// this many no new one is started (each would hold a thread for good).
const MAX_STUCK_READS: usize = 4;
static STUCK_READS: AtomicUsize = AtomicUsize::new(0);

/// Reads every GPU now on a blocking thread (NVML calls block), for async
/// callers, within [`SNAPSHOT_DEADLINE`].
pub async fn read(probe: std::sync::Arc<dyn GpuProbe>) -> Result<Snapshot, GpuError> {
    read_within(probe, SNAPSHOT_DEADLINE).await
}

/// [`read`] with another deadline. A read past `deadline` is an error that
/// says the GPUs do not answer; its thread is left to finish on its own.
pub async fn read_within(
    probe: std::sync::Arc<dyn GpuProbe>,
    deadline: Duration,
) -> Result<Snapshot, GpuError> {
    let hung = |what: String| GpuError::Nvml {
        call: "snapshot",
        message: what,
    };
    let stuck = STUCK_READS.load(Ordering::SeqCst);
    if stuck >= MAX_STUCK_READS {
        return Err(hung(format!(
            "{stuck} earlier readings of the GPUs never returned: a GPU may have fallen off the bus \
             (look for XID 79 in the kernel log); reset the GPU or reboot the host"
        )));
    }
    // Set when the caller gave up: the thread then counts itself stuck until it returns.
    let gave_up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = gave_up.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    // The reading runs on a thread of its own, which may never end; a
    // blocking task of the runtime waits for it up to `deadline` (so that
    // tokio knows work is under way, and a stopping runtime waits at most that).
    std::thread::Builder::new()
        .name("nvml-snapshot".into())
        .spawn(move || {
            let r = probe.snapshot();
            if flag.swap(true, Ordering::SeqCst) {
                STUCK_READS.fetch_sub(1, Ordering::SeqCst);
            }
            let _ = tx.send(r);
        })
        .map_err(|e| hung(format!("starting a thread to read the GPUs: {e}")))?;
    let waited = tokio::task::spawn_blocking(move || rx.recv_timeout(deadline)).await;
    match waited {
        Ok(Ok(r)) => r,
        Ok(Err(std::sync::mpsc::RecvTimeoutError::Timeout)) => {
            if !gave_up.swap(true, Ordering::SeqCst) {
                STUCK_READS.fetch_add(1, Ordering::SeqCst);
            }
            tracing::error!(deadline = ?deadline, "reading the GPUs through NVML did not return in time");
            Err(hung(format!(
                "no answer within {}s: a GPU may have fallen off the bus (look for XID 79 in the kernel log); \
                 reset the GPU or reboot the host",
                deadline.as_secs_f64()
            )))
        }
        Ok(Err(std::sync::mpsc::RecvTimeoutError::Disconnected)) => Err(hung(
            "the thread reading the GPUs ended without an answer".into(),
        )),
        Err(e) => Err(hung(e.to_string())),
    }
}

/// "GPU 1 (GPU-…)": how every message names a GPU.
pub fn gpu_label(index: u32, uuid: &str) -> String {
    format!("GPU {index} ({uuid})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_version_parses_major_minor_and_major_alone() {
        let v = |major, minor| CudaVersion { major, minor };
        assert_eq!("12.4".parse::<CudaVersion>().unwrap(), v(12, 4));
        assert_eq!("12".parse::<CudaVersion>().unwrap(), v(12, 0));
        assert_eq!(" 11.8 ".parse::<CudaVersion>().unwrap(), v(11, 8));
        assert_eq!("12.10".parse::<CudaVersion>().unwrap(), v(12, 10));
        for bad in [
            "", "12.", ".4", "12.4.1", "cuda12", "12.x", "-1", "+12", "1 2",
        ] {
            let err = bad.parse::<CudaVersion>().unwrap_err();
            assert_eq!(err, CudaVersionError(bad.to_string()), "{bad:?}");
        }
        assert!("99999999999".parse::<CudaVersion>().is_err());
    }

    #[test]
    fn cuda_version_displays_and_orders() {
        let v: CudaVersion = "12.4".parse().unwrap();
        assert_eq!(v.to_string(), "12.4");
        assert_eq!("12".parse::<CudaVersion>().unwrap().to_string(), "12.0");
        let lo: CudaVersion = "12.4".parse().unwrap();
        let hi: CudaVersion = "12.10".parse().unwrap();
        assert!(lo < hi);
        assert!(hi < "13".parse().unwrap());
    }

    #[test]
    fn cuda_version_from_nvml_integer() {
        let v = |major, minor| Some(CudaVersion { major, minor });
        assert_eq!(CudaVersion::from_nvml(12040), v(12, 4));
        assert_eq!(CudaVersion::from_nvml(11080), v(11, 8));
        assert_eq!(CudaVersion::from_nvml(12000), v(12, 0));
        assert_eq!(CudaVersion::from_nvml(0), None);
        assert_eq!(CudaVersion::from_nvml(-1), None);
    }

    #[test]
    fn errors_say_what_failed() {
        let e = GpuError::NoDriver {
            detail: "libnvidia-ml.so.1: cannot open shared object file".into(),
        };
        assert!(e.is_no_driver());
        assert_eq!(
            e.to_string(),
            "no NVIDIA driver: libnvidia-ml.so.1: cannot open shared object file"
        );
        let e = GpuError::Nvml {
            call: "nvmlDeviceGetCount_v2",
            message: "GPU is lost".into(),
        };
        assert!(!e.is_no_driver());
        assert_eq!(e.to_string(), "NVML nvmlDeviceGetCount_v2: GPU is lost");
    }
}
