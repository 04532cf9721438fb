//! Entry points for the fuzz targets in `fuzz/` into parsers that are not
//! public otherwise. Not an API: each is a thin wrapper over the real
//! function, so the fuzzers test the code the agent runs.

pub use crate::registry::fuzzing as registry;

use crate::control::api::CheckRequest;
use crate::control::server;
use crate::control::Action;
use crate::update::View;

/// The control calls that take a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlCall {
    Check,
    Update,
    Drain,
    Undrain,
    Rollback,
    Pin,
    Unpin,
}

/// A control-socket `POST /v1/<call>` body, parsed and checked as the server
/// does before it asks the loop: the action, and whether the caller waits.
pub fn control_request(call: ControlCall, body: &[u8]) -> Result<(Action, bool), String> {
    match call {
        ControlCall::Check => server::body::<CheckRequest>(body).map(|r| (Action::Check, r.wait)),
        ControlCall::Update => server::update_action(body).map(|a| (a, true)),
        ControlCall::Drain => server::drain_action(body),
        ControlCall::Pin => server::pin_action(body).map(|a| (a, true)),
        ControlCall::Undrain => {
            server::body::<server::Empty>(body).map(|_| (Action::Undrain, true))
        }
        ControlCall::Rollback => {
            server::body::<server::Empty>(body).map(|_| (Action::Rollback, true))
        }
        ControlCall::Unpin => server::body::<server::Empty>(body).map(|_| (Action::Unpin, true)),
    }
}

/// Why the server refuses `action` in the state `view` shows, if it does.
pub fn control_refusal(action: &Action, view: &View) -> Option<String> {
    server::refusal(action, view)
}

/// Whether a pin reference passes the server's check.
pub fn pin_reference_ok(reference: &str) -> bool {
    server::check_reference(reference).is_ok()
}
