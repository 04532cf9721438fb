//! Updates: the state machine ([`machine`]), the [`Updater`] that drives it
//! (its plumbing in [`updater`], one file per job beside it), the ports to
//! the outside world ([`ports`]), the events it publishes ([`events`]), what
//! it shows of itself ([`status`]) and the journal on disk ([`journal`]).
//!
//! Where things happen:
//! - a new digest comes in through [`Updater::check`] (the registry's tag or
//!   range, or the hub's desired digest) or [`Updater::nudged`] (a hub
//!   nudge), both in `target.rs`, or through an operator's action
//!   (`operator.rs`); new worker settings through the check's first step or
//!   [`Updater::apply_config`] after a reload (`spec_change.rs`); all go to
//!   `sequence.rs`'s `deploy`;
//! - the container changes only in `sequence.rs` (`swap`), `rollback.rs`,
//!   `converge.rs` (recovery: one managed worker on the current digest) and
//!   `operator.rs` (a maintenance drain stops the worker);
//! - a failure turns into a rollback in `sequence.rs`'s `swap_and_verify`:
//!   `verify.rs` returns a [`Failure`] with its [`Blame`], and `rollback.rs`
//!   settles the blame, then puts the old worker back;
//! - a dry run ([`Updater::dry_run`], `dry_run.rs`) walks the same gates
//!   with `&self`: it changes nothing.
//!
//! Architecture invariant: only this module changes which container runs.

pub mod dry_run;
pub mod events;
pub mod failpoint;
pub mod journal;
pub mod machine;
pub mod outcome;
pub mod phase;
pub mod ports;
pub mod status;
mod updater;

mod admit;
mod converge;
mod drain;
mod fleet_slot;
mod gpu_gate;
mod operator;
mod rollback;
mod sequence;
mod spec_change;
mod target;
mod verify;

pub use dry_run::{DryRun, DryRunOf};
pub use events::{Event, Subscriber};
pub use gpu_gate::limits as gpu_limits;
pub use journal::{ConfigHeld, HistoryEntry, Journal, Kind, Outcome, State, Trigger};
pub use machine::{allows, allows_dry_run, held, Action, Machine, Phase};
pub use outcome::{Blame, CheckOutcome, Failure, UpdateError};
pub use ports::{ImageTrust, Ports, SystemClock};
pub use status::{status_of, HubStatus, Status, View};
pub use updater::Updater;

#[cfg(test)]
mod tests;
