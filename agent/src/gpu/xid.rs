//! XID errors: what each code means and who is at fault ([`classify`], after
//! NVIDIA's XID catalog), and the bounded log of the XIDs a probe saw
//! ([`XidLog`]).
//!
//! Source: "Analyzing Xid Errors with the Xid Catalog" (Ampere and newer),
//! <https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html>,
//! column "Resolution Bucket (Immediate Action)": RESTART_BM and RESTART_VM
//! are [`XidAction::RebootHost`]; RESET_GPU and the reset workflows
//! (WORKFLOW_XID_48, WORKFLOW_NVLINK_ERR, WORKFLOW_NVLINK5_ERR) are
//! [`XidAction::ResetGpu`]. Where this table departs from that column, on
//! purpose:
//!
//! - 43 and 45 (catalog: IGNORE, WORKFLOW_XID_45) are application faults
//!   whose fix is restarting the application;
//! - 63 (catalog: IGNORE: the driver handled the error) marks a row for
//!   remapping that takes effect only after a GPU reset, the same state as a
//!   pending remap reading, so it is hardware and wants a reset;
//! - 94 (catalog: RESTART_APP) is a contained uncorrectable memory error: the
//!   catalog asks for a GPU reset when convenient, so it is hardware;
//! - 109 (catalog: RESET_GPU) is a context switch timeout, which a hung
//!   application causes as often as the GPU: ambiguous, for the caller to
//!   blame.
//!
//! Codes the catalog lists as unused on current GPUs, informational, or
//! IGNORE/CONTACT_SUPPORT only (61, 92, 122–124, 154, …) are
//! [`XidClass::Other`].

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use super::{Xid, XidAction, XidClass};

use XidAction::{Investigate, RebootHost, ResetGpu, RestartApp};
use XidClass::{Ambiguous, Application, Hardware, Other};

/// (code, class, action, meaning), by code.
const CATALOG: &[(u64, XidClass, XidAction, &str)] = &[
    (8, Other, Investigate, "GPU stopped processing (channel idle timeout)"),
    (13, Application, RestartApp, "graphics engine exception: usually the application's fault (out-of-bounds access, illegal instruction)"),
    (31, Application, RestartApp, "GPU memory page fault: usually an illegal address access by the application"),
    (32, Other, Investigate, "invalid or corrupted push buffer stream (PBDMA error, often PCIe quality)"),
    (43, Application, RestartApp, "the application hit a software-induced fault and was stopped; the GPU remains healthy"),
    (45, Application, RestartApp, "preemptive cleanup of an application's GPU work (exit, kill, or after another error)"),
    (46, Hardware, ResetGpu, "GPU stopped processing (GPU timeout)"),
    (48, Hardware, ResetGpu, "double-bit (uncorrectable) ECC error"),
    (61, Other, Investigate, "internal micro-controller breakpoint or warning"),
    (62, Hardware, ResetGpu, "internal micro-controller halt"),
    (63, Hardware, ResetGpu, "memory row marked for remapping (or page for retirement): takes effect after a GPU reset"),
    (64, Hardware, ResetGpu, "memory row remapping (or page retirement) failed"),
    (68, Application, RestartApp, "video decoder (NVDEC0) exception in the application"),
    (74, Hardware, ResetGpu, "NVLink error"),
    (79, Hardware, RebootHost, "GPU has fallen off the bus"),
    (92, Other, Investigate, "high single-bit ECC error rate (corrected)"),
    (94, Hardware, ResetGpu, "contained uncorrectable memory error: one application was stopped; reset the GPU when convenient"),
    (95, Hardware, ResetGpu, "uncontained uncorrectable memory error: every application on the GPU is affected"),
    (109, Ambiguous, Investigate, "context switch timeout: may be the application or the GPU"),
    (110, Hardware, ResetGpu, "security fault error"),
    (119, Hardware, ResetGpu, "GSP firmware RPC timeout"),
    (120, Hardware, ResetGpu, "GSP firmware error"),
    (122, Other, Investigate, "SPI flash read failure (PMU RPC)"),
    (123, Other, Investigate, "SPI flash write failure (PMU RPC)"),
    (124, Other, Investigate, "SPI flash erase failure (PMU RPC)"),
    (136, Hardware, ResetGpu, "NVLink link training failed"),
    (140, Hardware, ResetGpu, "uncorrectable ECC error the driver could not offline or remap"),
    (143, Hardware, ResetGpu, "GPU initialization error"),
    (144, Hardware, ResetGpu, "NVLink SAW error"),
    (145, Hardware, ResetGpu, "NVLink RLW error"),
    (146, Hardware, ResetGpu, "NVLink TLW error"),
    (147, Hardware, ResetGpu, "NVLink TREX error"),
    (148, Hardware, ResetGpu, "NVLink NVLPW_CTRL error"),
    (149, Hardware, ResetGpu, "NVLink NETIR error"),
    (150, Hardware, ResetGpu, "NVLink MSE error"),
    (151, Hardware, RebootHost, "key rotation error (confidential computing): restart the VM"),
    (154, Other, Investigate, "GPU recovery action changed (summarizes another XID)"),
    (155, Hardware, ResetGpu, "NVLink link down (software-defined error)"),
    (156, Hardware, ResetGpu, "resource retirement event: a GPU reset completes it"),
    (158, Hardware, ResetGpu, "GPU fatal timeout"),
];

const UNCLASSIFIED: &str = "an XID gpu-agent does not classify (see NVIDIA's XID catalog)";

/// Who is at fault for XID `code`, what to do first, and what it means.
/// See the module documentation for the source and its deviations.
pub fn classify(code: u64) -> (XidClass, XidAction, &'static str) {
    match CATALOG.binary_search_by_key(&code, |e| e.0) {
        Ok(i) => (CATALOG[i].1, CATALOG[i].2, CATALOG[i].3),
        Err(_) => (Other, Investigate, UNCLASSIFIED),
    }
}

/// How many XIDs a probe keeps.
pub const XID_LOG_CAPACITY: usize = 1024;

/// The XIDs a probe saw, newest last, the last [`XID_LOG_CAPACITY`] of them,
/// numbered from 1. Shared between the watcher thread and readers.
#[derive(Debug, Default)]
pub(crate) struct XidLog {
    inner: Mutex<LogInner>,
}

#[derive(Debug, Default)]
struct LogInner {
    last_seq: u64,
    xids: VecDeque<Xid>,
}

impl XidLog {
    pub(crate) fn new() -> XidLog {
        XidLog::default()
    }

    /// Classifies and records an XID received `at`; returns it with its seq.
    pub(crate) fn push(
        &self,
        at: time::OffsetDateTime,
        gpu_index: Option<u32>,
        gpu_uuid: Option<String>,
        code: u64,
    ) -> Xid {
        let (class, action, meaning) = classify(code);
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.last_seq += 1;
        let xid = Xid {
            seq: inner.last_seq,
            at,
            gpu_index,
            gpu_uuid,
            code,
            class,
            action,
            meaning,
        };
        if inner.xids.len() == XID_LOG_CAPACITY {
            inner.xids.pop_front();
        }
        inner.xids.push_back(xid.clone());
        xid
    }

    /// The XIDs kept with seq > `after`, oldest first.
    pub(crate) fn since(&self, after: u64) -> Vec<Xid> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .xids
            .iter()
            .filter(|x| x.seq > after)
            .cloned()
            .collect()
    }

    /// The seq of the newest XID (0: none yet).
    pub(crate) fn last_seq(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_is_sorted_and_unique() {
        assert!(CATALOG.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn application_xids_restart_the_app() {
        for code in [13, 31, 43, 45, 68] {
            let (class, action, meaning) = classify(code);
            assert_eq!((class, action), (Application, RestartApp), "XID {code}");
            assert!(!meaning.is_empty());
        }
    }

    #[test]
    fn hardware_xids_reset_the_gpu_or_reboot_as_the_catalog_says() {
        let reset = [
            46, 48, 62, 63, 64, 74, 94, 95, 110, 119, 120, 136, 140, 143, 144, 145, 146, 147, 148,
            149, 150, 155, 156, 158,
        ];
        for code in reset {
            assert_eq!(classify(code).0, Hardware, "XID {code}");
            assert_eq!(classify(code).1, ResetGpu, "XID {code}");
        }
        for code in [79, 151] {
            assert_eq!(classify(code).0, Hardware, "XID {code}");
            assert_eq!(classify(code).1, RebootHost, "XID {code}");
        }
        assert_eq!(classify(79).2, "GPU has fallen off the bus");
        assert_eq!(classify(48).2, "double-bit (uncorrectable) ECC error");
    }

    #[test]
    fn xid_109_is_ambiguous() {
        let (class, action, meaning) = classify(109);
        assert_eq!((class, action), (Ambiguous, Investigate));
        assert!(meaning.contains("application or the GPU"), "{meaning}");
    }

    #[test]
    fn informational_unused_and_unknown_xids_are_other() {
        for code in [0, 1, 8, 32, 61, 92, 122, 123, 124, 154, 999, u64::MAX] {
            assert_eq!(classify(code).0, Other, "XID {code}");
            assert_eq!(classify(code).1, Investigate, "XID {code}");
        }
        assert_eq!(classify(999).2, UNCLASSIFIED);
        assert_eq!(classify(92).2, "high single-bit ECC error rate (corrected)");
    }

    #[test]
    fn log_numbers_from_one_and_answers_what_is_new() {
        let log = XidLog::new();
        let at = time::OffsetDateTime::UNIX_EPOCH;
        assert_eq!(log.last_seq(), 0);
        assert!(log.since(0).is_empty());
        let first = log.push(at, Some(0), Some("GPU-a".into()), 79);
        assert_eq!(
            (first.seq, first.class, first.action),
            (1, Hardware, RebootHost)
        );
        log.push(at, Some(1), None, 13);
        log.push(at, None, None, 109);
        assert_eq!(log.last_seq(), 3);
        let codes = |v: Vec<Xid>| v.iter().map(|x| (x.seq, x.code)).collect::<Vec<_>>();
        assert_eq!(codes(log.since(0)), [(1, 79), (2, 13), (3, 109)]);
        assert_eq!(codes(log.since(2)), [(3, 109)]);
        assert!(log.since(3).is_empty());
    }

    #[test]
    fn log_keeps_the_last_1024() {
        let log = XidLog::new();
        let at = time::OffsetDateTime::UNIX_EPOCH;
        for _ in 0..XID_LOG_CAPACITY + 10 {
            log.push(at, Some(0), None, 13);
        }
        let all = log.since(0);
        assert_eq!(all.len(), XID_LOG_CAPACITY);
        assert_eq!(all[0].seq, 11);
        assert_eq!(all.last().unwrap().seq, (XID_LOG_CAPACITY + 10) as u64);
        assert_eq!(log.last_seq(), (XID_LOG_CAPACITY + 10) as u64);
    }
}
