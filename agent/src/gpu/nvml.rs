//! [`NvmlProbe`]: [`GpuProbe`] over nvml-wrapper.
//!
//! `libnvidia-ml.so.1` is loaded on first use, not at start, so the agent runs
//! on hosts without a driver: there every call answers [`GpuError::NoDriver`]
//! and loading is tried again at most once a [`NvmlProbe::retry_interval`]
//! (60 s), so a driver installed later is picked up without a restart.
//!
//! Once NVML is up, a thread named `gpu-xid` registers every GPU for critical
//! XID events in one event set and waits on it (1 s at a time, so that it
//! notices [`NvmlProbe::stop`] or a drop), classifying each XID into the
//! probe's [`XidLog`]. Errors there are logged and retried after a pause
//! (2 s, doubling while they go on, up to a minute).

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::{nvml_sym, nvml_try, NvmlError};
use nvml_wrapper::struct_wrappers::event::EventData;
use nvml_wrapper::{Device, EventSet, Nvml};
use tracing::{debug, info, warn};

use super::{gpu_label, CudaVersion, GpuError, GpuProbe, GpuReading, Snapshot, Xid, XidLog};

/// The library nvml-wrapper loads when no path is given.
const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";
/// How long one wait for XID events lasts, so that a stop is seen within it.
const WAIT_MS: u32 = 1000;
/// The pause after an error in the XID watcher before it tries again; it
/// doubles with each error in a row, up to [`WATCH_ERROR_PAUSE_MAX`].
const WATCH_ERROR_PAUSE: Duration = Duration::from_secs(2);
const WATCH_ERROR_PAUSE_MAX: Duration = Duration::from_secs(60);
/// How often the watcher looks again when no GPU reports XID events.
const WATCH_RESCAN: Duration = Duration::from_secs(60);
const MIB: u64 = 1024 * 1024;

/// The GPUs of this host through NVML; see the module documentation.
pub struct NvmlProbe {
    library: Option<PathBuf>,
    retry_interval: Duration,
    load: Mutex<Load>,
    log: Arc<XidLog>,
    stop: Arc<AtomicBool>,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

enum Load {
    NotTried,
    Up(Arc<Nvml>),
    Failed { at: Instant, error: GpuError },
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl NvmlProbe {
    /// A probe of `libnvidia-ml.so.1` as the dynamic loader finds it. Loads
    /// nothing yet, so it never fails.
    pub fn new() -> NvmlProbe {
        NvmlProbe::load_from(None)
    }

    /// A probe of the NVML library at `path`.
    pub fn with_library(path: impl Into<PathBuf>) -> NvmlProbe {
        NvmlProbe::load_from(Some(path.into()))
    }

    fn load_from(library: Option<PathBuf>) -> NvmlProbe {
        NvmlProbe {
            library,
            retry_interval: Duration::from_secs(60),
            load: Mutex::new(Load::NotTried),
            log: Arc::new(XidLog::new()),
            stop: Arc::new(AtomicBool::new(false)),
            watcher: Mutex::new(None),
        }
    }

    /// How long after a failed load the next call tries again (default 60 s;
    /// in between, calls answer the last error at once).
    pub fn retry_interval(mut self, interval: Duration) -> NvmlProbe {
        self.retry_interval = interval;
        self
    }

    /// The library this probe loads, as given.
    pub fn library(&self) -> String {
        match &self.library {
            Some(p) => p.display().to_string(),
            None => DEFAULT_LIBRARY.to_string(),
        }
    }

    /// Loads NVML now if it is not up (subject to the retry interval) and
    /// starts the XID watcher. Blocking. `snapshot` does the same; call this
    /// at start so that XIDs are watched before the first snapshot.
    pub fn start(&self) -> Result<(), GpuError> {
        self.nvml().map(drop)
    }

    /// Ends the XID watcher and waits for it (at most about a second).
    /// Snapshots still work; the watcher does not start again.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let handle = lock(&self.watcher).take();
        if let Some(handle) = handle {
            handle.thread().unpark();
            if handle.join().is_err() {
                warn!("the XID watcher thread panicked");
            }
        }
    }

    /// NVML, loaded on first use and after a failure once the retry interval
    /// has passed.
    fn nvml(&self) -> Result<Arc<Nvml>, GpuError> {
        let mut load = lock(&self.load);
        let first = match &*load {
            Load::Up(nvml) => return Ok(nvml.clone()),
            Load::Failed { at, error } if at.elapsed() < self.retry_interval => {
                return Err(error.clone())
            }
            Load::Failed { .. } => false,
            Load::NotTried => true,
        };
        match self.init() {
            Ok(nvml) => {
                let nvml = Arc::new(nvml);
                info!(library = %self.library(), "NVML loaded");
                self.start_watcher(nvml.clone());
                *load = Load::Up(nvml.clone());
                Ok(nvml)
            }
            Err(error) => {
                let retry_s = self.retry_interval.as_secs();
                if first {
                    info!(library = %self.library(), error = %error, retry_s, "GPU checks are off until NVML loads");
                } else {
                    debug!(library = %self.library(), error = %error, "NVML still does not load");
                }
                *load = Load::Failed {
                    at: Instant::now(),
                    error: error.clone(),
                };
                Err(error)
            }
        }
    }

    fn init(&self) -> Result<Nvml, GpuError> {
        let mut builder = Nvml::builder();
        if let Some(path) = &self.library {
            builder.lib_path(path.as_os_str());
        }
        builder.init().map_err(|e| match e {
            // dlopen's message names the library and why it did not load.
            NvmlError::LibloadingError(e) => GpuError::NoDriver {
                detail: e.to_string(),
            },
            NvmlError::DriverNotLoaded => GpuError::NoDriver {
                detail: format!(
                    "{} loaded, but the NVIDIA kernel driver is not loaded",
                    self.library()
                ),
            },
            NvmlError::LibraryNotFound => GpuError::NoDriver {
                detail: format!("{}: NVML found no library it needs", self.library()),
            },
            e => GpuError::Nvml {
                call: "nvmlInit_v2",
                message: e.to_string(),
            },
        })
    }

    fn start_watcher(&self, nvml: Arc<Nvml>) {
        if self.stop.load(Ordering::SeqCst) {
            return;
        }
        let log = self.log.clone();
        let stop = self.stop.clone();
        let spawned = std::thread::Builder::new()
            .name("gpu-xid".to_string())
            .spawn(move || watch_xids(&nvml, &log, &stop));
        match spawned {
            Ok(handle) => *lock(&self.watcher) = Some(handle),
            Err(e) => {
                warn!(error = %e, "cannot start the XID watcher thread; XIDs will not be seen")
            }
        }
    }
}

impl Default for NvmlProbe {
    fn default() -> Self {
        NvmlProbe::new()
    }
}

impl fmt::Debug for NvmlProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let load = match &*lock(&self.load) {
            Load::NotTried => "not tried".to_string(),
            Load::Up(_) => "up".to_string(),
            Load::Failed { error, .. } => format!("failed: {error}"),
        };
        f.debug_struct("NvmlProbe")
            .field("library", &self.library())
            .field("load", &load)
            .field("last_xid_seq", &self.log.last_seq())
            .finish()
    }
}

impl Drop for NvmlProbe {
    /// Tells the watcher to end (within a second) without waiting for it; it
    /// holds its own reference to NVML, which shuts down when both are gone.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = lock(&self.watcher).take() {
            handle.thread().unpark();
        }
    }
}

impl GpuProbe for NvmlProbe {
    fn snapshot(&self) -> Result<Snapshot, GpuError> {
        let nvml = self.nvml()?;
        read_snapshot(&nvml)
    }

    fn xids_since(&self, after: u64) -> Vec<Xid> {
        self.log.since(after)
    }

    fn last_xid_seq(&self) -> u64 {
        self.log.last_seq()
    }
}

// ---- readings -------------------------------------------------------------

/// A failed NVML call about `what` ("GPU 1 (GPU-…)", or "" for the system).
fn call_error(call: &'static str, what: &str, e: NvmlError) -> GpuError {
    let message = if what.is_empty() {
        e.to_string()
    } else {
        format!("{what}: {e}")
    };
    GpuError::Nvml { call, message }
}

fn required<T>(r: Result<T, NvmlError>, call: &'static str, what: &str) -> Result<T, GpuError> {
    r.map_err(|e| call_error(call, what, e))
}

/// A reading the device (or this driver version) may not have: None then.
fn optional<T>(
    r: Result<T, NvmlError>,
    call: &'static str,
    what: &str,
) -> Result<Option<T>, GpuError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(NvmlError::NotSupported | NvmlError::FailedToLoadSymbol(_)) => Ok(None),
        Err(e) => Err(call_error(call, what, e)),
    }
}

fn read_snapshot(nvml: &Nvml) -> Result<Snapshot, GpuError> {
    let driver_version = required(nvml.sys_driver_version(), "nvmlSystemGetDriverVersion", "")?;
    let cuda_version = optional(
        nvml.sys_cuda_driver_version(),
        "nvmlSystemGetCudaDriverVersion_v2",
        "",
    )?
    .and_then(CudaVersion::from_nvml);
    let count = required(nvml.device_count(), "nvmlDeviceGetCount_v2", "")?;
    let mut gpus = Vec::with_capacity(count as usize);
    for index in 0..count {
        let device = required(
            nvml.device_by_index(index),
            "nvmlDeviceGetHandleByIndex_v2",
            &format!("GPU {index}"),
        )?;
        gpus.push(read_gpu(nvml, &device, index)?);
    }
    Ok(Snapshot {
        driver_version,
        cuda_version,
        gpus,
    })
}

fn read_gpu(nvml: &Nvml, d: &Device<'_>, index: u32) -> Result<GpuReading, GpuError> {
    let uuid = required(d.uuid(), "nvmlDeviceGetUUID", &format!("GPU {index}"))?;
    let gpu = gpu_label(index, &uuid);
    let gpu = gpu.as_str();
    let name = required(d.name(), "nvmlDeviceGetName", gpu)?;
    let memory = required(d.memory_info(), "nvmlDeviceGetMemoryInfo_v2", gpu)?;
    let remapped = optional(remapped_rows(nvml, d), "nvmlDeviceGetRemappedRows", gpu)?;
    let throttle = optional(
        d.current_throttle_reasons(),
        "nvmlDeviceGetCurrentClocksThrottleReasons",
        gpu,
    )?;
    let thermal = ThrottleReasons::SW_THERMAL_SLOWDOWN | ThrottleReasons::HW_THERMAL_SLOWDOWN;
    Ok(GpuReading {
        index,
        name,
        memory_total_mib: memory.total / MIB,
        memory_used_mib: memory.used / MIB,
        temperature_c: optional(
            d.temperature(TemperatureSensor::Gpu),
            "nvmlDeviceGetTemperature",
            gpu,
        )?,
        ecc_dbe_volatile: optional(
            d.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile),
            "nvmlDeviceGetTotalEccErrors",
            gpu,
        )?,
        remapped_rows_pending: remapped.map(|r| r.pending),
        remapped_rows_failed: remapped.map(|r| r.failed),
        retired_pages_pending: optional(
            d.are_pages_pending_retired(),
            "nvmlDeviceGetRetiredPagesPendingStatus",
            gpu,
        )?,
        pcie_width: optional(
            d.current_pcie_link_width(),
            "nvmlDeviceGetCurrPcieLinkWidth",
            gpu,
        )?,
        pcie_max_width: optional(
            d.max_pcie_link_width(),
            "nvmlDeviceGetMaxPcieLinkWidth",
            gpu,
        )?,
        thermal_throttled: throttle.map(|t| t.intersects(thermal)),
        persistence_mode: optional(
            d.is_in_persistent_mode(),
            "nvmlDeviceGetPersistenceMode",
            gpu,
        )?,
        uuid,
    })
}

#[derive(Debug, Clone, Copy)]
struct RemappedRows {
    pending: bool,
    failed: bool,
}

/// `nvmlDeviceGetRemappedRows`, which nvml-wrapper has no safe call for.
#[allow(unsafe_code)]
fn remapped_rows(nvml: &Nvml, d: &Device<'_>) -> Result<RemappedRows, NvmlError> {
    let sym = nvml_sym(nvml.lib().nvmlDeviceGetRemappedRows.as_ref())?;
    let (mut corrected, mut uncorrected, mut pending, mut failed) = (0u32, 0u32, 0u32, 0u32);
    // SAFETY: `d` borrows `nvml`, so its handle is a live device handle of the
    // library `sym` comes from; the four out-pointers are to locals that
    // outlive the call, of the C type (unsigned int) nvml.h declares.
    unsafe {
        nvml_try(sym(
            d.handle(),
            &mut corrected,
            &mut uncorrected,
            &mut pending,
            &mut failed,
        ))?;
    }
    Ok(RemappedRows {
        pending: pending != 0,
        failed: failed != 0,
    })
}

// ---- the XID watcher --------------------------------------------------------

/// Sleeps `d`, or less if the probe is stopped (stop and drop unpark us).
fn pause(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::SeqCst) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::park_timeout(left);
    }
}

/// The pause after `errors` errors in a row (from 1).
fn error_pause(errors: u32) -> Duration {
    WATCH_ERROR_PAUSE
        .saturating_mul(1 << errors.saturating_sub(1).min(16))
        .min(WATCH_ERROR_PAUSE_MAX)
}

fn watch_xids(nvml: &Nvml, log: &XidLog, stop: &AtomicBool) {
    debug!("XID watcher started");
    let mut errors = 0;
    while !stop.load(Ordering::SeqCst) {
        let set = match xid_event_set(nvml) {
            Ok(Some(set)) => set,
            Ok(None) => {
                info!(
                    rescan_s = WATCH_RESCAN.as_secs(),
                    "no GPU reports XID events; looking again later"
                );
                pause(stop, WATCH_RESCAN);
                continue;
            }
            Err((call, e)) => {
                errors += 1;
                let pause_s = error_pause(errors).as_secs();
                warn!(call, error = %e, errors, pause_s, "cannot register for XID events; retrying");
                pause(stop, error_pause(errors));
                continue;
            }
        };
        while !stop.load(Ordering::SeqCst) {
            match set.wait(WAIT_MS) {
                Ok(event) => {
                    errors = 0;
                    record(log, event);
                }
                Err(NvmlError::Timeout) => errors = 0,
                Err(e) => {
                    errors += 1;
                    let pause_s = error_pause(errors).as_secs();
                    warn!(call = "nvmlEventSetWait_v2", error = %e, errors, pause_s, "waiting for XID events failed; registering again");
                    pause(stop, error_pause(errors));
                    break;
                }
            }
        }
        // Dropping the set frees it (nvmlEventSetFree).
    }
    debug!("XID watcher stopped");
}

/// One event set with every GPU that reports XID events registered for them
/// (None: no GPU does). A GPU that cannot be registered is left out.
fn xid_event_set(nvml: &Nvml) -> Result<Option<EventSet<'_>>, (&'static str, NvmlError)> {
    let count = nvml
        .device_count()
        .map_err(|e| ("nvmlDeviceGetCount_v2", e))?;
    let mut left_out: Vec<u32> = Vec::new();
    'attempt: loop {
        let mut set = nvml
            .create_event_set()
            .map_err(|e| ("nvmlEventSetCreate", e))?;
        let mut registered = 0;
        for index in 0..count {
            if left_out.contains(&index) {
                continue;
            }
            let device = match nvml.device_by_index(index) {
                Ok(d) => d,
                Err(e) => {
                    warn!(gpu = index, call = "nvmlDeviceGetHandleByIndex_v2", error = %e, "GPU left out of XID watching");
                    left_out.push(index);
                    continue;
                }
            };
            match device.supported_event_types() {
                Ok(t) if t.contains(EventTypes::CRITICAL_XID_ERROR) => {}
                Ok(_) | Err(NvmlError::NotSupported) => {
                    info!(gpu = index, "GPU does not report XID events");
                    left_out.push(index);
                    continue;
                }
                Err(e) => {
                    warn!(gpu = index, call = "nvmlDeviceGetSupportedEventTypes", error = %e, "GPU left out of XID watching");
                    left_out.push(index);
                    continue;
                }
            }
            match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
                Ok(s) => {
                    set = s;
                    registered += 1;
                }
                Err(e) => {
                    // nvml-wrapper frees the set on failure: start a new one
                    // without this GPU.
                    warn!(gpu = index, call = "nvmlDeviceRegisterEvents", error = %e, "GPU left out of XID watching");
                    left_out.push(index);
                    continue 'attempt;
                }
            }
        }
        return Ok((registered > 0).then_some(set));
    }
}

fn record(log: &XidLog, event: EventData<'_>) {
    if !event.event_type.contains(EventTypes::CRITICAL_XID_ERROR) {
        return;
    }
    let code = match event.event_data {
        Some(XidError::Value(code)) => code,
        // NVML's 999: an XID it could not identify.
        Some(XidError::Unknown) => 999,
        None => return,
    };
    let index = event.device.index().ok();
    let uuid = event.device.uuid().ok();
    let xid = log.push(time::OffsetDateTime::now_utc(), index, uuid, code);
    warn!(
        seq = xid.seq,
        gpu = ?xid.gpu_index,
        uuid = xid.gpu_uuid.as_deref().unwrap_or("?"),
        xid = code,
        class = ?xid.class,
        action = ?xid.action,
        meaning = xid.meaning,
        "XID error"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watcher_error_pause_doubles_up_to_a_minute() {
        let secs: Vec<u64> = (1..=8).map(|n| error_pause(n).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(error_pause(u32::MAX), WATCH_ERROR_PAUSE_MAX);
    }

    #[test]
    fn a_probe_without_a_library_loads_nothing_until_used() {
        let probe = NvmlProbe::with_library("/nonexistent/libnvidia-ml.so.1");
        assert_eq!(probe.library(), "/nonexistent/libnvidia-ml.so.1");
        assert_eq!(NvmlProbe::new().library(), "libnvidia-ml.so.1");
        assert!(format!("{probe:?}").contains("not tried"));
        let err = probe.snapshot().unwrap_err();
        assert!(err.is_no_driver(), "{err}");
        assert!(format!("{probe:?}").contains("failed: no NVIDIA driver"));
        assert!(probe.xids_since(0).is_empty());
    }
}
