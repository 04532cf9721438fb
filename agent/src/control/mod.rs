//! The local control socket that `agentctl` speaks: HTTP/JSON over a Unix
//! socket (`api.rs` holds the wire types and the list of calls).
//!
//! Status and history are answered from the updater's published view and the
//! history file, so they never wait on an update. Actions (check, update) go
//! to the daemon loop as [`Job`]s; one asked for while an update runs is
//! refused (409) with the reason. Dry runs go to the loop too ([`DryRunJob`],
//! answered between its turns, changing nothing), refused the same way.

pub mod api;
mod dry_run;
pub mod peer;
pub(crate) mod server;

pub use crate::update::status_of;
pub use dry_run::DryRunJob;
pub use peer::Peer;
pub use server::{bind, serve, Action, ControlError, ControlState, HealthSource, Job};
