//! The GPU gates of an update: the pre-flight before anything is pulled or
//! drained, the fault watch of each check, the hold after a hardware fault,
//! the CUDA check of a pulled image, and what an XID during the verification
//! means for the new worker.

use std::sync::Arc;

use tracing::{error, info, warn};

use super::events::Event;
use super::journal::{Kind, Trigger};
use super::outcome::{Blame, Failure, UpdateError};
use super::Updater;
use crate::config::GpuSettings;
use crate::docker::Engine;
use crate::gpu::{self, GpuProbe, Snapshot, Xid, XidClass};

/// The problems of an assessment that block an update, in words.
pub(super) fn blocking(a: &gpu::Assessment) -> String {
    let why: Vec<&str> = a
        .problems
        .iter()
        .filter(|p| p.blocks_update)
        .map(|p| p.what.as_str())
        .collect();
    why.join("; ")
}

/// The limits `gpu.*` sets for [`gpu::assess`].
pub fn limits(gpu: &GpuSettings) -> gpu::Limits {
    gpu::Limits {
        expected_count: gpu.expected_count,
        max_temperature_c: gpu.max_temperature_c,
    }
}

impl<E: Engine> Updater<E> {
    /// The GPUs to gate updates on (`gpu.check`).
    pub fn set_gpu(&mut self, gpu: Arc<dyn GpuProbe>) {
        self.good_xid_seq = gpu.last_xid_seq();
        self.seen_xid_seq = self.good_xid_seq;
        self.gpu = Some(gpu);
    }

    /// Reads the GPUs on a blocking thread.
    async fn gpu_snapshot(&self) -> Option<Result<Snapshot, gpu::GpuError>> {
        Some(gpu::read(self.gpu.clone()?).await)
    }

    /// Whether an XID concerns the GPUs the worker is given.
    pub(super) fn on_worker_gpus(&self, x: &Xid) -> bool {
        use crate::config::Gpus;
        match &self.worker.gpus {
            Gpus::None => false,
            Gpus::All => true,
            Gpus::Count(n) => x.gpu_index.is_none_or(|i| i < *n),
            Gpus::Uuids(ids) => ids.iter().any(|id| {
                x.gpu_uuid.as_deref() == Some(id.as_str())
                    || x.gpu_index.is_some_and(|i| i.to_string() == *id)
            }),
        }
    }

    /// The GPU gate before an update pulls or drains anything: the GPUs are
    /// all there and sound, and no hardware-class XID came since the last good
    /// check. `Err` says why the update waits. An operator's action
    /// (`trigger` cli) acknowledges the XIDs seen so far.
    pub(super) async fn gpu_preflight(
        &mut self,
        trigger: Trigger,
    ) -> Result<Option<Snapshot>, String> {
        let Some(probe) = self.gpu.clone() else {
            return Ok(None);
        };
        if trigger == Trigger::Cli {
            if probe.last_xid_seq() > self.good_xid_seq {
                info!("an operator's action acknowledges the XIDs seen so far");
                self.good_xid_seq = probe.last_xid_seq();
            }
            if let Some(hold) = self.state.gpu_hold.take() {
                warn!(hold = %hold, "an operator's action lifts the hold after a GPU fault");
                self.save().map_err(|e| crate::error_chain(&e))?;
            }
        }
        if let Some(hold) = &self.state.gpu_hold {
            return Err(format!(
                "updates are held after a GPU fault: {hold}; once the GPU is reset or the host rebooted, agentctl check goes on"
            ));
        }
        let upto = probe.last_xid_seq();
        let snap = match self.gpu_snapshot().await {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                self.emit(Event::GpusUnreadable);
                return Err(format!(
                    "GPU pre-flight: {e}; the update waits (install or repair the NVIDIA driver, or set gpu.check = false to update without the GPU gate)"
                ));
            }
            None => return Ok(None),
        };
        let xids: Vec<Xid> = probe
            .xids_since(self.good_xid_seq)
            .into_iter()
            .filter(|x| x.seq <= upto && self.on_worker_gpus(x))
            .collect();
        let a = gpu::assess(&snap, &limits(&self.settings.gpu), &xids);
        self.emit(Event::GpusRead {
            snapshot: &snap,
            assessment: &a,
        });
        if !a.healthy {
            return Err(format!(
                "GPU pre-flight: {}; the worker is left as it is",
                blocking(&a)
            ));
        }
        self.good_xid_seq = upto;
        Ok(Some(snap))
    }

    /// The GPU gate of an update: [`Updater::gpu_preflight`], with one
    /// history line per distinct reason it blocks for. `Err` says why the
    /// update waits (also kept as `last_error`).
    pub(super) async fn gpu_gate(
        &mut self,
        target: &str,
        trigger: Trigger,
        kind: Kind,
    ) -> Result<Option<Snapshot>, String> {
        let why = match self.gpu_preflight(trigger).await {
            Ok(snap) => {
                self.gate_blocked = None;
                return Ok(snap);
            }
            Err(why) => why,
        };
        warn!(digest = %target, reason = %why, "update blocked by the GPU pre-flight");
        // One line per reason: readings and times change, the reason not.
        let key: String = why.chars().filter(|c| !c.is_ascii_digit()).collect();
        if self.gate_blocked.as_deref() != Some(key.as_str()) {
            self.record_refused(kind, trigger, target, &why);
            self.gate_blocked = Some(key);
        }
        self.last_error = Some(why.clone());
        Err(why)
    }

    /// A hardware-class XID on the worker's GPUs since the last good check
    /// (one that came during a pull or a drain), in words.
    pub(super) fn hardware_fault_since_good(&self) -> Option<String> {
        let probe = self.gpu.as_ref()?;
        probe
            .xids_since(self.good_xid_seq)
            .into_iter()
            .find(|x| x.class == XidClass::Hardware && self.on_worker_gpus(x))
            .map(|x| format!("GPU fault: {}", xid_text(&x)))
    }

    /// The SPEC's post-swap GPU check, before the commit: the GPUs are all
    /// there and sound with the new worker on them (count, temperature,
    /// ECC, row remaps, retired pages), not only free of XIDs. A GPU that
    /// is not is the host's problem, not the image's: the update is rolled
    /// back without a mark and updates are held (`Blame::GpuFault`).
    pub(super) async fn gpu_after_swap(&self) -> Result<(), Failure> {
        let Some(read) = self.gpu_snapshot().await else {
            return Ok(());
        };
        let snap = read.map_err(|e| {
            Failure::new(
                format!("GPU health after the swap: the GPUs cannot be read: {e}"),
                Blame::GpuFault,
            )
        })?;
        let a = gpu::assess(&snap, &limits(&self.settings.gpu), &[]);
        self.emit(Event::GpusRead {
            snapshot: &snap,
            assessment: &a,
        });
        if a.healthy {
            return Ok(());
        }
        Err(Failure::new(
            format!(
                "GPU health after the swap (not the image's fault): {}",
                blocking(&a)
            ),
            Blame::GpuFault,
        ))
    }

    /// Hardware-class XIDs on the worker's GPUs since the last look: reported,
    /// and with `gpu.drain_on_fault` the worker is drained (updates are held
    /// by the pre-flight until an operator acts).
    pub(super) async fn gpu_fault_watch(&mut self, trigger: Trigger) -> Result<(), UpdateError> {
        let Some(probe) = self.gpu.clone() else {
            return Ok(());
        };
        let all = probe.xids_since(self.seen_xid_seq);
        for x in &all {
            self.emit(Event::Xid(x));
        }
        self.seen_xid_seq = all.iter().map(|x| x.seq).fold(self.seen_xid_seq, u64::max);
        let Some(x) = all
            .iter()
            .find(|x| x.class == XidClass::Hardware && self.on_worker_gpus(x))
        else {
            return Ok(());
        };
        let what = format!("GPU fault: {}", xid_text(x));
        self.hold_for_gpu_fault(&what, trigger).await
    }

    /// A hardware fault: updates are held (saved, so a restart keeps the
    /// hold) until an operator acts, and with `gpu.drain_on_fault` the worker
    /// is drained.
    pub(super) async fn hold_for_gpu_fault(
        &mut self,
        what: &str,
        trigger: Trigger,
    ) -> Result<(), UpdateError> {
        error!("{what}; updates are held until an operator runs agentctl check");
        self.state.gpu_hold = Some(what.to_string());
        self.save()?;
        self.last_error = Some(what.to_string());
        if self.settings.gpu.drain_on_fault && !self.state.drained {
            warn!("gpu.drain_on_fault: draining the worker");
            self.drain_for_maintenance_by(Some(what.to_string()), None, trigger)
                .await?;
        }
        Ok(())
    }

    /// An image that asks for a newer CUDA than the driver supports
    /// (`NVIDIA_REQUIRE_CUDA`) cannot run here. `Err` says both versions.
    pub(super) async fn cuda_check(&self, target: &str, snap: &Snapshot) -> Result<(), String> {
        let Some(have) = &snap.cuda_version else {
            return Ok(());
        };
        let env = match self
            .engine
            .image_env(&self.settings.image.name.pull_ref(target))
            .await
        {
            Ok(env) => env,
            Err(e) => {
                warn!(error = %e, "could not read the image's environment; CUDA compatibility not checked");
                return Ok(());
            }
        };
        // Images with forward-compatibility libraries turn the check off, as
        // the NVIDIA toolkit honours it.
        let disabled = |v: &str| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false");
        if env
            .iter()
            .filter_map(|e| e.strip_prefix("NVIDIA_DISABLE_REQUIRE="))
            .chain(
                self.worker
                    .env
                    .get("NVIDIA_DISABLE_REQUIRE")
                    .map(String::as_str),
            )
            .any(disabled)
        {
            return Ok(());
        }
        let Some(require) = env
            .iter()
            .find_map(|e| e.strip_prefix("NVIDIA_REQUIRE_CUDA="))
        else {
            return Ok(());
        };
        let Some(need) = required_cuda(require) else {
            return Ok(());
        };
        if &need > have {
            return Err(format!(
                "the image needs CUDA {need} (NVIDIA_REQUIRE_CUDA={require}) but the driver {} supports CUDA {have}: upgrade the driver, then deploy it with agentctl update --digest",
                snap.driver_version
            ));
        }
        Ok(())
    }
}

/// One XID in words: the GPU, the code, what it means and what to do.
pub(super) fn xid_text(x: &Xid) -> String {
    let gpu = match (x.gpu_index, &x.gpu_uuid) {
        (Some(i), Some(u)) => gpu::gpu_label(i, u),
        (Some(i), None) => format!("GPU {i}"),
        _ => "a GPU".into(),
    };
    let action = match x.action {
        gpu::XidAction::RestartApp => "restart the application",
        gpu::XidAction::ResetGpu => "reset the GPU",
        gpu::XidAction::RebootHost => "reboot the host",
        gpu::XidAction::Investigate => "investigate",
    };
    format!(
        "{gpu}: XID {} ({}); recommended: {action}",
        x.code, x.meaning
    )
}

/// What an XID during the new worker's verification means for the update.
pub(super) fn xid_failure(x: &Xid) -> Failure {
    let text = xid_text(x);
    match x.class {
        XidClass::Application => Failure::image(format!(
            "the new worker made a GPU report an application error: {text}"
        )),
        XidClass::Hardware => Failure {
            error: format!(
                "GPU hardware fault during the verification (not the image's fault): {text}"
            ),
            blame: Blame::GpuFault,
        },
        XidClass::Ambiguous => Failure {
            error: format!(
                "ambiguous GPU error during the verification (the application or the GPU): {text}"
            ),
            blame: Blame::Strike,
        },
        XidClass::Other => Failure {
            error: format!("GPU error during the verification: {text}"),
            blame: Blame::Strike,
        },
    }
}

/// The CUDA version an `NVIDIA_REQUIRE_CUDA` value asks for (`cuda>=12.4 brand=…`).
pub(super) fn required_cuda(require: &str) -> Option<gpu::CudaVersion> {
    require
        .split_whitespace()
        .find_map(|t| t.strip_prefix("cuda>="))
        .and_then(|v| v.parse().ok())
}
