//! hub-client: the client side of the gpu-agent hub protocol (v1).
//!
//! The hub is a fleet's own control service: it says which image digest each
//! host should run, nudges agents to check now, hears their reports and drain
//! notices, and knows which workers have registered. This crate holds the
//! wire types ([`wire`]), an async client for every call ([`HubClient`]), the
//! event-stream parser ([`sse`]), the sanitizer of untrusted text ([`text`]), the token file reader ([`TokenSource`]),
//! and, with the `mock` feature, a mock hub for tests and demos ([`mock`]).
//! The protocol is documented in `docs/hub-api.md` and `docs/hub-api.yaml`.

pub mod client;
pub mod error;
#[cfg(feature = "mock")]
pub mod mock;
pub mod sse;
pub mod text;
pub mod token;
pub mod wire;

pub use client::{EventStream, HubClient, HubOptions};
pub use error::{ErrorKind, HubError};
pub use token::TokenSource;
pub use wire::{Desired, DrainNotice, Nudge, Report, WorkerView};
