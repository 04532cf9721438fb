//! What a [`Snapshot`] and recent XIDs mean against the configured limits:
//! the problems an operator should know of, and which of them block an
//! update. Pure: no NVML, no clock.
//!
//! Blocking (a new worker on this GPU would likely fail for reasons not its
//! own): fewer GPUs than expected, a temperature above the limit, volatile
//! double-bit ECC errors, a pending or failed row remapping, pages pending
//! retirement, and hardware-class XIDs. Reported only: a PCIe link narrower
//! than it can be, thermal throttling, persistence mode off, and application,
//! ambiguous or other XIDs (the caller decides blame for those).

use std::collections::HashMap;

use time::format_description::well_known::Rfc3339;

use super::{gpu_label, GpuReading, Snapshot, Xid, XidAction, XidClass};

/// The configured expectations a snapshot is held against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// How many GPUs the host must show (None: any number).
    pub expected_count: Option<u32>,
    /// A GPU above this temperature blocks updates.
    pub max_temperature_c: u32,
}

/// One thing wrong, in words an operator understands at 3 a.m.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Problem {
    /// The GPU it concerns (None: the host, or an XID of an unknown GPU).
    pub gpu_index: Option<u32>,
    /// A sentence naming the GPU (index and UUID), the reading and what to do.
    pub what: String,
    pub blocks_update: bool,
    pub action: XidAction,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Assessment {
    /// No problem blocks an update.
    pub healthy: bool,
    /// The GPU count first, then each GPU in index order, then the XIDs.
    pub problems: Vec<Problem>,
}

/// Judges `s` (and the XIDs the caller chose, e.g. those since the last
/// check) against `limits`.
pub fn assess(s: &Snapshot, limits: &Limits, xids: &[Xid]) -> Assessment {
    let mut problems = Vec::new();
    if let Some(expected) = limits.expected_count {
        if s.gpus.len() < expected as usize {
            problems.push(count_problem(s, expected));
        }
    }
    for gpu in &s.gpus {
        gpu_problems(gpu, limits, &mut problems);
    }
    xid_problems(s, xids, &mut problems);
    Assessment {
        healthy: !problems.iter().any(|p| p.blocks_update),
        problems,
    }
}

fn count_problem(s: &Snapshot, expected: u32) -> Problem {
    let seen = if s.gpus.is_empty() {
        "none".to_string()
    } else {
        let labels: Vec<String> = s.gpus.iter().map(|g| gpu_label(g.index, &g.uuid)).collect();
        format!("{} ({})", s.gpus.len(), labels.join(", "))
    };
    Problem {
        gpu_index: None,
        what: format!(
            "expected {expected} GPU{}, NVML sees {seen}: a missing GPU has usually fallen off \
             the bus or failed to initialize; reboot the host",
            plural(u64::from(expected))
        ),
        blocks_update: true,
        action: XidAction::RebootHost,
    }
}

fn gpu_problems(g: &GpuReading, limits: &Limits, out: &mut Vec<Problem>) {
    let label = gpu_label(g.index, &g.uuid);
    let mut push = |blocks_update: bool, action: XidAction, what: String| {
        out.push(Problem {
            gpu_index: Some(g.index),
            what: format!("{label}: {what}"),
            blocks_update,
            action,
        });
    };
    if let Some(t) = g.temperature_c.filter(|t| *t > limits.max_temperature_c) {
        push(
            true,
            XidAction::Investigate,
            format!(
                "temperature {t} °C is above the limit of {} °C; check its cooling and airflow",
                limits.max_temperature_c
            ),
        );
    }
    if let Some(n) = g.ecc_dbe_volatile.filter(|n| *n > 0) {
        push(
            true,
            XidAction::ResetGpu,
            format!(
                "{n} volatile double-bit ECC error{} (uncorrectable memory errors since the last \
                 reset); reset the GPU, and replace it if they come back",
                plural(n)
            ),
        );
    }
    if g.remapped_rows_pending == Some(true) {
        push(
            true,
            XidAction::ResetGpu,
            "a memory row remapping is pending; reset the GPU to apply it".to_string(),
        );
    }
    if g.remapped_rows_failed == Some(true) {
        push(
            true,
            XidAction::ResetGpu,
            "a memory row remapping failed, so its memory can no longer repair itself; reset the \
             GPU, and replace it if this persists"
                .to_string(),
        );
    }
    if g.retired_pages_pending == Some(true) {
        push(
            true,
            XidAction::ResetGpu,
            "memory pages are pending retirement; reset the GPU (or reload the driver) to \
             retire them"
                .to_string(),
        );
    }
    if let (Some(width), Some(max)) = (g.pcie_width, g.pcie_max_width) {
        if width < max {
            push(
                false,
                XidAction::Investigate,
                format!(
                    "PCIe link runs at x{width} of x{max}; check the GPU's seating, riser and \
                     slot"
                ),
            );
        }
    }
    if g.thermal_throttled == Some(true) {
        let at = g
            .temperature_c
            .map(|t| format!(" at {t} °C"))
            .unwrap_or_default();
        push(
            false,
            XidAction::Investigate,
            format!("clocks are slowed down for heat (thermal throttling){at}; check its cooling"),
        );
    }
    if g.persistence_mode == Some(false) {
        push(
            false,
            XidAction::Investigate,
            "persistence mode is off; enable it (nvidia-persistenced, or nvidia-smi -pm 1) so \
             that the driver stays initialized between workers"
                .to_string(),
        );
    }
}

/// One problem per GPU and XID code, in the order first seen.
fn xid_problems(s: &Snapshot, xids: &[Xid], out: &mut Vec<Problem>) {
    type Key<'a> = (Option<u32>, Option<&'a str>, u64);
    let mut groups: Vec<(Key<'_>, Vec<&Xid>)> = Vec::new();
    let mut at: HashMap<Key<'_>, usize> = HashMap::new();
    for x in xids {
        let key = (x.gpu_index, x.gpu_uuid.as_deref(), x.code);
        match at.get(&key) {
            Some(&i) => groups[i].1.push(x),
            None => {
                at.insert(key, groups.len());
                groups.push((key, vec![x]));
            }
        }
    }
    for ((index, uuid, code), seen) in groups {
        let last = seen[seen.len() - 1];
        let who = xid_gpu(s, index, uuid);
        let when = last
            .at
            .replace_nanosecond(0)
            .unwrap_or(last.at)
            .format(&Rfc3339)
            .unwrap_or_else(|_| last.at.to_string());
        let (blocks_update, advice) = match last.class {
            XidClass::Hardware => (true, advice(last.action)),
            XidClass::Application => (false, "the application's fault: restart it"),
            XidClass::Ambiguous => (false, "find out whether the application or the GPU failed"),
            XidClass::Other => (false, advice(last.action)),
        };
        let seen_at = match seen.len() {
            1 => format!(" at {when}"),
            n => format!(", {n} times, last at {when}"),
        };
        out.push(Problem {
            gpu_index: index,
            what: format!("{who}: XID {code} ({}){seen_at}; {advice}", last.meaning),
            blocks_update,
            action: last.action,
        });
    }
}

/// The GPU an XID names, completed from the snapshot where it lacks the UUID.
fn xid_gpu(s: &Snapshot, index: Option<u32>, uuid: Option<&str>) -> String {
    let uuid = uuid.or_else(|| {
        let i = index?;
        s.gpus
            .iter()
            .find(|g| g.index == i)
            .map(|g| g.uuid.as_str())
    });
    match (index, uuid) {
        (Some(i), Some(u)) => gpu_label(i, u),
        (Some(i), None) => format!("GPU {i}"),
        (None, Some(u)) => format!("GPU {u}"),
        (None, None) => "an unknown GPU".to_string(),
    }
}

fn advice(action: XidAction) -> &'static str {
    match action {
        XidAction::RestartApp => "restart the application",
        XidAction::ResetGpu => "reset the GPU (nvidia-smi -r, or reboot the host)",
        XidAction::RebootHost => "reboot the host",
        XidAction::Investigate => "look it up in NVIDIA's XID catalog",
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::fake::{healthy_gpu, healthy_snapshot};
    use crate::gpu::XidLog;
    use time::macros::datetime;

    const LIMITS: Limits = Limits {
        expected_count: Some(2),
        max_temperature_c: 85,
    };

    /// Assesses two healthy GPUs with GPU 1 changed by `f`; returns the problems.
    fn with_gpu1(f: impl FnOnce(&mut GpuReading)) -> Assessment {
        let mut s = healthy_snapshot(2);
        f(&mut s.gpus[1]);
        assess(&s, &LIMITS, &[])
    }

    /// The one problem of `a`, as (blocks, action, what).
    fn only(a: &Assessment) -> (bool, XidAction, &str) {
        assert_eq!(a.problems.len(), 1, "{:#?}", a.problems);
        let p = &a.problems[0];
        (p.blocks_update, p.action, p.what.as_str())
    }

    #[test]
    fn healthy_gpus_have_no_problems() {
        let a = assess(&healthy_snapshot(2), &LIMITS, &[]);
        assert_eq!(
            a,
            Assessment {
                healthy: true,
                problems: vec![]
            }
        );
        // Readings a device does not support are not problems.
        let mut s = healthy_snapshot(2);
        s.gpus[0] = GpuReading {
            temperature_c: None,
            ecc_dbe_volatile: None,
            remapped_rows_pending: None,
            remapped_rows_failed: None,
            retired_pages_pending: None,
            pcie_width: None,
            pcie_max_width: None,
            thermal_throttled: None,
            persistence_mode: None,
            ..healthy_gpu(0)
        };
        assert!(assess(&s, &LIMITS, &[]).problems.is_empty());
    }

    #[test]
    fn fewer_gpus_than_expected_blocks() {
        let a = assess(&healthy_snapshot(1), &LIMITS, &[]);
        assert!(!a.healthy);
        let (blocks, action, what) = only(&a);
        assert!(blocks);
        assert_eq!(action, XidAction::RebootHost);
        assert_eq!(a.problems[0].gpu_index, None);
        assert_eq!(
            what,
            "expected 2 GPUs, NVML sees 1 (GPU 0 (GPU-fake-0000-0)): a missing GPU has usually \
             fallen off the bus or failed to initialize; reboot the host"
        );
        let none = assess(&healthy_snapshot(0), &LIMITS, &[]);
        assert!(only(&none)
            .2
            .starts_with("expected 2 GPUs, NVML sees none:"));
        // More than expected, or no expectation, is fine.
        assert!(assess(&healthy_snapshot(3), &LIMITS, &[]).healthy);
        let any = Limits {
            expected_count: None,
            ..LIMITS
        };
        assert!(assess(&healthy_snapshot(0), &any, &[]).healthy);
    }

    #[test]
    fn temperature_above_the_limit_blocks() {
        let a = with_gpu1(|g| g.temperature_c = Some(86));
        assert!(!a.healthy);
        assert_eq!(a.problems[0].gpu_index, Some(1));
        assert_eq!(
            only(&a),
            (
                true,
                XidAction::Investigate,
                "GPU 1 (GPU-fake-0000-1): temperature 86 °C is above the limit of 85 °C; check \
                 its cooling and airflow"
            )
        );
        assert!(with_gpu1(|g| g.temperature_c = Some(85)).healthy);
    }

    #[test]
    fn double_bit_ecc_errors_block() {
        let a = with_gpu1(|g| g.ecc_dbe_volatile = Some(2));
        assert!(!a.healthy);
        let (blocks, action, what) = only(&a);
        assert!(blocks);
        assert_eq!(action, XidAction::ResetGpu);
        assert!(
            what.starts_with("GPU 1 (GPU-fake-0000-1): 2 volatile double-bit ECC errors "),
            "{what}"
        );
        let one = with_gpu1(|g| g.ecc_dbe_volatile = Some(1));
        assert!(only(&one).2.contains(": 1 volatile double-bit ECC error ("));
        assert!(with_gpu1(|g| g.ecc_dbe_volatile = Some(0)).healthy);
    }

    #[test]
    fn pending_or_failed_row_remapping_blocks() {
        let a = with_gpu1(|g| g.remapped_rows_pending = Some(true));
        assert_eq!(
            only(&a),
            (
                true,
                XidAction::ResetGpu,
                "GPU 1 (GPU-fake-0000-1): a memory row remapping is pending; reset the GPU to \
                 apply it"
            )
        );
        let a = with_gpu1(|g| g.remapped_rows_failed = Some(true));
        let (blocks, action, what) = only(&a);
        assert!(blocks && !a.healthy);
        assert_eq!(action, XidAction::ResetGpu);
        assert!(
            what.starts_with("GPU 1 (GPU-fake-0000-1): a memory row remapping failed"),
            "{what}"
        );
    }

    #[test]
    fn pages_pending_retirement_block() {
        let a = with_gpu1(|g| g.retired_pages_pending = Some(true));
        let (blocks, action, what) = only(&a);
        assert!(blocks && !a.healthy);
        assert_eq!(action, XidAction::ResetGpu);
        assert!(
            what.starts_with("GPU 1 (GPU-fake-0000-1): memory pages are pending retirement"),
            "{what}"
        );
    }

    #[test]
    fn narrow_pcie_link_throttling_and_persistence_off_are_reported_only() {
        let a = with_gpu1(|g| g.pcie_width = Some(8));
        assert!(a.healthy);
        assert_eq!(
            only(&a),
            (
                false,
                XidAction::Investigate,
                "GPU 1 (GPU-fake-0000-1): PCIe link runs at x8 of x16; check the GPU's seating, \
                 riser and slot"
            )
        );
        let a = with_gpu1(|g| {
            g.thermal_throttled = Some(true);
            g.temperature_c = Some(83);
        });
        assert!(a.healthy);
        let (blocks, _, what) = only(&a);
        assert!(!blocks);
        assert_eq!(
            what,
            "GPU 1 (GPU-fake-0000-1): clocks are slowed down for heat (thermal throttling) at \
             83 °C; check its cooling"
        );
        let a = with_gpu1(|g| g.persistence_mode = Some(false));
        assert!(a.healthy);
        let (blocks, _, what) = only(&a);
        assert!(!blocks);
        assert!(
            what.starts_with("GPU 1 (GPU-fake-0000-1): persistence mode is off"),
            "{what}"
        );
    }

    #[test]
    fn problems_come_in_order_count_gpus_xids() {
        let mut s = healthy_snapshot(2);
        s.gpus[0].persistence_mode = Some(false);
        s.gpus[1].ecc_dbe_volatile = Some(1);
        s.gpus[1].temperature_c = Some(90);
        let log = XidLog::new();
        let x = log.push(datetime!(2024-05-01 03:12:45.5 UTC), Some(0), None, 79);
        let limits = Limits {
            expected_count: Some(3),
            ..LIMITS
        };
        let a = assess(&s, &limits, &[x]);
        let order: Vec<(Option<u32>, bool)> = a
            .problems
            .iter()
            .map(|p| (p.gpu_index, p.blocks_update))
            .collect();
        assert_eq!(
            order,
            [
                (None, true),
                (Some(0), false),
                (Some(1), true),
                (Some(1), true),
                (Some(0), true)
            ]
        );
    }

    #[test]
    fn hardware_xids_block_with_the_catalog_action() {
        let log = XidLog::new();
        let at = datetime!(2024-05-01 03:12:45.5 UTC);
        let xids = [
            log.push(at, Some(1), Some("GPU-fake-0000-1".into()), 79),
            log.push(at, Some(0), None, 48),
        ];
        let a = assess(&healthy_snapshot(2), &LIMITS, &xids);
        assert!(!a.healthy);
        assert_eq!(a.problems.len(), 2);
        assert_eq!(
            a.problems[0],
            Problem {
                gpu_index: Some(1),
                what: "GPU 1 (GPU-fake-0000-1): XID 79 (GPU has fallen off the bus) at \
                       2024-05-01T03:12:45Z; reboot the host"
                    .into(),
                blocks_update: true,
                action: XidAction::RebootHost,
            }
        );
        // The UUID is taken from the snapshot when the event lacked it.
        assert_eq!(
            a.problems[1].what,
            "GPU 0 (GPU-fake-0000-0): XID 48 (double-bit (uncorrectable) ECC error) at \
             2024-05-01T03:12:45Z; reset the GPU (nvidia-smi -r, or reboot the host)"
        );
        assert_eq!(a.problems[1].action, XidAction::ResetGpu);
        assert!(a.problems[1].blocks_update);
    }

    #[test]
    fn application_ambiguous_and_other_xids_are_reported_only() {
        let log = XidLog::new();
        let at = datetime!(2024-05-01 03:12:45 UTC);
        let xids = [
            log.push(at, Some(0), None, 13),
            log.push(at, Some(1), None, 109),
            log.push(at, Some(1), None, 154),
        ];
        let a = assess(&healthy_snapshot(2), &LIMITS, &xids);
        assert!(a.healthy);
        let got: Vec<(bool, XidAction)> = a
            .problems
            .iter()
            .map(|p| (p.blocks_update, p.action))
            .collect();
        assert_eq!(
            got,
            [
                (false, XidAction::RestartApp),
                (false, XidAction::Investigate),
                (false, XidAction::Investigate)
            ]
        );
        assert!(
            a.problems[0]
                .what
                .starts_with("GPU 0 (GPU-fake-0000-0): XID 13 (graphics engine exception"),
            "{}",
            a.problems[0].what
        );
        assert!(a.problems[0]
            .what
            .ends_with("the application's fault: restart it"));
        assert!(
            a.problems[1]
                .what
                .contains("XID 109 (context switch timeout: may be the application or the GPU)"),
            "{}",
            a.problems[1].what
        );
    }

    #[test]
    fn repeated_xids_are_one_problem_per_gpu_and_code() {
        let log = XidLog::new();
        let xids = [
            log.push(datetime!(2024-05-01 03:00 UTC), Some(0), None, 79),
            log.push(datetime!(2024-05-01 03:05 UTC), Some(1), None, 79),
            log.push(datetime!(2024-05-01 03:10 UTC), Some(0), None, 79),
            log.push(datetime!(2024-05-01 03:20 UTC), None, None, 31),
        ];
        let a = assess(&healthy_snapshot(2), &LIMITS, &xids);
        let what: Vec<&str> = a.problems.iter().map(|p| p.what.as_str()).collect();
        assert_eq!(
            what,
            [
                "GPU 0 (GPU-fake-0000-0): XID 79 (GPU has fallen off the bus), 2 times, last at \
                 2024-05-01T03:10:00Z; reboot the host",
                "GPU 1 (GPU-fake-0000-1): XID 79 (GPU has fallen off the bus) at \
                 2024-05-01T03:05:00Z; reboot the host",
                "an unknown GPU: XID 31 (GPU memory page fault: usually an illegal address \
                 access by the application) at 2024-05-01T03:20:00Z; the application's fault: \
                 restart it",
            ]
        );
    }
}
