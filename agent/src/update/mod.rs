//! Updates: the state machine ([`machine`]), its driver ([`driver`]) and the
//! journal on disk ([`journal`]).
//!
//! Architecture invariant: only this module changes which container runs.

pub mod driver;
pub mod failpoint;
pub mod journal;
pub mod machine;

pub use driver::{CheckOutcome, UpdateError, Updater, View};
pub use journal::{HistoryEntry, Journal, Kind, Outcome, State, Step, Trigger};
pub use machine::Phase;
