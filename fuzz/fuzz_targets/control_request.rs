//! Control-socket requests (agent/src/control/server.rs): the bodies of the
//! POST calls as the server parses and checks them, and the refusal of the
//! action in a state the fuzzer picks.
//!
//! Input: `[call] [phase] [flags]` then the body.
#![no_main]

use gpu_agent::control::Action;
use gpu_agent::fuzzing::{control_refusal, control_request, pin_reference_ok, ControlCall};
use gpu_agent::registry::is_sha256_digest;
use gpu_agent::update::journal::Pending;
use gpu_agent::update::{Phase, Trigger, View};
use libfuzzer_sys::fuzz_target;

const CALLS: [ControlCall; 7] = [
    ControlCall::Check,
    ControlCall::Update,
    ControlCall::Drain,
    ControlCall::Undrain,
    ControlCall::Rollback,
    ControlCall::Pin,
    ControlCall::Unpin,
];

const PHASES: [Phase; 9] = [
    Phase::Idle,
    Phase::Checking,
    Phase::Pulling,
    Phase::Draining,
    Phase::Swapping,
    Phase::Verifying,
    Phase::RollingBack,
    Phase::Drained,
    Phase::Failed,
];

fuzz_target!(|data: &[u8]| {
    let [call, phase, flags, body @ ..] = data else {
        return;
    };
    let call = CALLS[*call as usize % CALLS.len()];
    let Ok((action, _wait)) = control_request(call, body) else {
        return;
    };
    match &action {
        Action::Update { digest } => assert!(is_sha256_digest(digest), "{digest:?}"),
        Action::Pin { reference } => {
            assert!(pin_reference_ok(reference));
            assert!(
                is_sha256_digest(reference)
                    || (!reference.is_empty()
                        && reference.len() <= 128
                        && !reference.starts_with(['.', '-'])
                        && reference
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))),
                "{reference:?}"
            );
        }
        Action::Drain { reason, .. } => {
            assert!(reason.as_ref().is_none_or(|r| !r.trim().is_empty()))
        }
        _ => {}
    }

    let view = view(*phase, *flags);
    let refused = control_refusal(&action, &view);
    let st = &view.state;
    let operator_action = matches!(
        action,
        Action::Check | Action::Update { .. } | Action::Rollback | Action::Pin { .. }
    );
    if st.drained && operator_action {
        assert!(refused.as_deref().is_some_and(|r| r.contains("undrain")));
    }
    if st.pending.is_some() && !matches!(action, Action::Undrain | Action::Unpin) {
        assert!(refused.is_some(), "{action:?} taken during an update");
    }
    if matches!(action, Action::Undrain) && !st.drained {
        assert!(refused.is_some());
    }
    if matches!(action, Action::Unpin) && st.pinned.is_none() {
        assert!(refused.is_some());
    }
});

/// A state for the refusal: a phase, and flags for drained, drain complete,
/// pinned, an update pending, and one or two committed digests.
fn view(phase: u8, flags: u8) -> View {
    let mut v = View {
        phase: PHASES[phase as usize % PHASES.len()],
        ..View::default()
    };
    let digest = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    for (bit, c) in [(5, 'a'), (6, 'b')] {
        if flags & (1 << bit) != 0 {
            v.state.commit(&digest(c));
        }
    }
    v.state.drained = flags & 1 != 0;
    v.state.drain_complete = flags & 2 != 0;
    if flags & 4 != 0 {
        v.state.pinned = Some("v2".into());
    }
    if flags & 8 != 0 {
        v.state.pending = Some(Pending {
            from: v.state.current_digest.clone(),
            to: digest('c'),
            trigger: Trigger::Cli,
            step: if flags & 16 != 0 {
                Phase::Draining
            } else {
                Phase::Pulling
            },
            started_at: time::OffsetDateTime::UNIX_EPOCH,
            error: None,
            kind: Default::default(),
            pin: None,
            to_spec: None,
            from_spec: None,
            changed: Vec::new(),
        });
    }
    v
}
