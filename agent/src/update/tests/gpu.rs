//! The GPU gates: the pre-flight, XIDs during the verification and while
//! idle, the hold after a hardware fault, the CUDA check.

use super::*;
use crate::update::gpu_gate::required_cuda;

/// A harness serving V1 with GPUs ("all") and a fake NVML of two healthy GPUs.
fn with_gpus() -> (Harness, String, Arc<crate::gpu::fake::FakeGpu>) {
    let (mut h, old) = Harness::serving(V1, &[V2], "[worker]\ngpus = \"all\"\n");
    let gpu = Arc::new(crate::gpu::fake::FakeGpu::healthy(2));
    h.up.set_gpu(gpu.clone());
    (h, old, gpu)
}

/// The driver reports `xids` (code, GPU index) just before the next `op` on the engine.
fn xids_before(
    h: &Harness,
    gpu: &Arc<crate::gpu::fake::FakeGpu>,
    op: &'static str,
    xids: &[(u64, u32)],
) {
    let (g, xids) = (gpu.clone(), xids.to_vec());
    h.fake.before_next(op, move |_| {
        for (code, index) in xids {
            g.push_xid(code, Some(index));
        }
    });
}

#[tokio::test(start_paused = true)]
async fn the_gpu_preflight_blocks_an_update_before_pull_or_drain_and_says_why() {
    let (mut h, _, gpu) = with_gpus();
    gpu.update_gpu(1, |g| g.ecc_dbe_volatile = Some(2));
    for _ in 0..3 {
        let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
        let CheckOutcome::Failed(why) = out else {
            panic!("{out:?}")
        };
        assert!(
            why.contains("GPU pre-flight") && why.contains("GPU 1") && why.contains("double-bit"),
            "{why}"
        );
    }
    h.never(&["pull".into(), "create".into(), "stop".into()]);
    h.only_worker(V1);
    let blocked: Vec<_> = h
        .history()
        .into_iter()
        .filter(|e| e.to.as_deref() == Some(V2))
        .collect();
    assert_eq!(blocked.len(), 1, "one history line per reason: {blocked:?}");
    assert_eq!(blocked[0].outcome, Outcome::Failed);
    assert!(
        !h.saved().is_bad(V2),
        "sick GPUs say nothing about the image"
    );
    gpu.update_gpu(1, |g| g.ecc_dbe_volatile = Some(0));
    assert_eq!(
        h.up.update_to(V2, Trigger::Poll).await.unwrap(),
        CheckOutcome::Updated(V2.into())
    );
}

#[tokio::test(start_paused = true)]
async fn no_driver_with_gpu_checks_on_is_a_clear_wait() {
    let (mut h, _, gpu) = with_gpus();
    gpu.set_no_driver(true);
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    assert!(
        matches!(&out, CheckOutcome::Failed(m) if m.contains("no NVIDIA driver") && m.contains("gpu.check = false")),
        "{out:?}"
    );
    h.only_worker(V1);
}

#[tokio::test(start_paused = true)]
async fn a_hardware_xid_since_the_last_good_check_holds_updates_until_an_operator_acts() {
    let (mut h, _, gpu) = with_gpus();
    gpu.push_xid(79, Some(0));
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    assert!(
        matches!(&out, CheckOutcome::Failed(m) if m.contains("79")),
        "{out:?}"
    );
    h.only_worker(V1);
    // An operator's explicit update acknowledges it.
    assert_eq!(
        h.up.update_to(V2, Trigger::Cli).await.unwrap(),
        CheckOutcome::Updated(V2.into())
    );
}

#[tokio::test(start_paused = true)]
async fn an_application_xid_from_the_new_worker_rolls_back_and_marks_it_bad() {
    let (mut h, old, gpu) = with_gpus();
    xids_before(&h, &gpu, "start", &[(13, 1)]);
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    let error = assert_rolled_back(&h, out, &old, true);
    assert!(
        error.contains("XID 13") && error.contains("GPU 1"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hardware_xid_during_verification_is_not_blamed_and_drains_the_worker() {
    let (mut h, old, gpu) = with_gpus();
    xids_before(&h, &gpu, "start", &[(79, 0)]);
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    let CheckOutcome::RolledBack { error, .. } = &out else {
        panic!("{out:?}")
    };
    assert!(
        error.contains("not the image's fault") && error.contains("reboot"),
        "{error}"
    );
    let s = h.saved();
    assert!(!s.is_bad(V2), "a hardware fault is not the image's");
    assert!(
        s.drained && s.drain_complete,
        "gpu.drain_on_fault drains the worker"
    );
    assert!(s.drain_reason.unwrap().contains("XID 79"));
    assert!(h.fake.running().is_empty());
    assert_eq!(
        h.fake.container(&old).map(|c| c.digest),
        Some(Some(V1.to_string()))
    );
}

#[tokio::test(start_paused = true)]
async fn a_hardware_xid_while_idle_drains_the_worker_at_the_next_poll() {
    let (mut h, _, gpu) = with_gpus();
    gpu.push_xid(48, Some(1));
    // The registry is not reachable in these tests: the check fails after the watch.
    let _ = h.up.check(Trigger::Poll).await;
    let s = h.saved();
    assert!(s.drained && s.drain_complete, "{s:?}");
    assert!(h.fake.running().is_empty());
    assert!(h.up.last_error().unwrap_or("").contains("GPU fault"));
}

#[tokio::test(start_paused = true)]
async fn an_image_that_needs_a_newer_cuda_is_refused_before_the_drain() {
    let (mut h, _, _gpu) = with_gpus();
    h.fake.set_image_env(
        &image(V2),
        &[
            "PATH=/bin",
            "NVIDIA_REQUIRE_CUDA=cuda>=12.9 brand=tesla,driver>=470",
        ],
    );
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    let CheckOutcome::Failed(msg) = out else {
        panic!("{out:?}")
    };
    assert!(
        msg.contains("CUDA 12.9") && msg.contains("CUDA 12.4"),
        "{msg}"
    );
    h.never(&["stop".into()]);
    h.only_worker(V1);
    assert!(h.saved().is_bad(V2));
    assert_eq!(
        required_cuda("cuda>=11.8 brand=tesla"),
        Some("11.8".parse().unwrap())
    );
    assert_eq!(required_cuda("brand=tesla"), None);
}

#[tokio::test(start_paused = true)]
async fn a_gpu_fault_hold_is_saved_and_only_an_operator_lifts_it() {
    let (mut h, _, gpu) = with_gpus();
    gpu.push_xid(48, Some(0));
    let _ = h.up.check(Trigger::Poll).await;
    let s = h.saved();
    assert!(
        s.gpu_hold.as_deref().unwrap_or("").contains("XID 48"),
        "{s:?}"
    );
    // A restart (a new probe with an empty XID log) keeps the hold.
    let settings = h.up.settings.clone();
    let mut again = Updater::new(
        h.fake.clone(),
        Harness::ports(),
        settings,
        CancellationToken::new(),
    )
    .unwrap();
    again.set_gpu(Arc::new(crate::gpu::fake::FakeGpu::healthy(2)));
    again.undrain().await.unwrap();
    let out = again.update_to(V2, Trigger::Poll).await.unwrap();
    assert!(
        matches!(&out, CheckOutcome::Failed(m) if m.contains("held after a GPU fault") && m.contains("agentctl check")),
        "{out:?}"
    );
    assert_eq!(
        again.update_to(V2, Trigger::Cli).await.unwrap(),
        CheckOutcome::Updated(V2.into())
    );
    assert_eq!(again.state().gpu_hold, None);
}

#[tokio::test(start_paused = true)]
async fn the_old_workers_dying_xids_are_not_held_against_the_new_image() {
    let (mut h, _, gpu) = with_gpus();
    // The old worker is killed mid-job: the driver reports 43 and 45 as it stops.
    xids_before(&h, &gpu, "stop", &[(43, 0), (45, 0)]);
    assert_eq!(
        h.up.update_to(V2, Trigger::Poll).await.unwrap(),
        CheckOutcome::Updated(V2.into())
    );
}

#[tokio::test(start_paused = true)]
async fn with_an_application_and_a_hardware_xid_the_hardware_fault_decides() {
    let (mut h, _, gpu) = with_gpus();
    xids_before(&h, &gpu, "start", &[(13, 0), (79, 0)]);
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    assert!(matches!(out, CheckOutcome::RolledBack { .. }), "{out:?}");
    assert!(!h.saved().is_bad(V2), "a hardware fault is not the image's");
    // XID 45 alone (a cleanup after a kill) blames nothing either.
    let (mut h, _, gpu) = with_gpus();
    xids_before(&h, &gpu, "start", &[(45, 0)]);
    assert_eq!(
        h.up.update_to(V2, Trigger::Poll).await.unwrap(),
        CheckOutcome::Updated(V2.into())
    );
}

#[tokio::test(start_paused = true)]
async fn a_hardware_xid_during_the_drain_keeps_the_old_worker() {
    let (mut h, _, gpu) = with_gpus();
    xids_before(&h, &gpu, "create", &[(79, 1)]);
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    assert!(
        matches!(&out, CheckOutcome::Aborted(m) if m.contains("XID 79")),
        "{out:?}"
    );
    // No swap: the old container stays (drained for the fault, as
    // gpu.drain_on_fault says), the new one is gone.
    let old = h.fake.container(W).expect("the old worker's container");
    assert_eq!(old.digest.as_deref(), Some(V1));
    assert!(h.fake.container(NEXT).is_none());
    let s = h.saved();
    assert!(s.gpu_hold.is_some() && !s.is_bad(V2) && s.drained);
}

#[tokio::test(start_paused = true)]
async fn images_that_turn_the_cuda_check_off_are_not_refused() {
    let (mut h, _, _gpu) = with_gpus();
    h.fake.set_image_env(
        &image(V2),
        &[
            "NVIDIA_REQUIRE_CUDA=cuda>=12.9",
            "NVIDIA_DISABLE_REQUIRE=true",
        ],
    );
    assert_eq!(
        h.up.update_to(V2, Trigger::Poll).await.unwrap(),
        CheckOutcome::Updated(V2.into())
    );
}

#[tokio::test(start_paused = true)]
async fn a_gpu_that_fails_after_the_swap_rolls_back_without_blaming_the_image() {
    let (mut h, old, gpu) = with_gpus();
    // The pre-flight sees two sound GPUs; once the new worker starts, one
    // reports uncorrectable ECC errors.
    let g = gpu.clone();
    h.fake.before_next("start", move |_| {
        g.update_gpu(1, |r| r.ecc_dbe_volatile = Some(3));
    });
    let out = h.up.update_to(V2, Trigger::Poll).await.unwrap();
    let CheckOutcome::RolledBack { error, .. } = out else {
        panic!("expected a rollback, got {out:?}");
    };
    assert!(
        error.contains("GPU health after the swap") && error.contains("GPU 1"),
        "{error}"
    );
    let s = h.saved();
    assert_eq!(s.current_digest.as_deref(), Some(V1));
    assert!(!s.is_bad(V2), "the image is not blamed: {s:?}");
    assert!(s.gpu_hold.is_some(), "updates are held: {s:?}");
    // The old container is back (drained for the fault: gpu.drain_on_fault).
    assert_eq!(h.fake.container(W).unwrap().id, old);
}
