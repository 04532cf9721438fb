//! gpu-agent: keeps the GPU worker container of one host on the right image.
//!
//! The library holds every subsystem; the binaries in `src/bin/` only parse
//! arguments and call into it. See `ARCHITECTURE.md` at the repository root for
//! the code map and the update sequence.

/// The git commit the binaries were built from (agent/build.rs), or `unknown`.
pub const COMMIT: &str = env!("GPU_AGENT_COMMIT");
/// The crate's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod docker;
pub mod fleet;
#[doc(hidden)]
pub mod fuzzing;
pub mod gpu;
pub mod health;
pub mod hub;
pub mod metrics;
pub mod notify;
pub mod registry;
pub mod trust;
pub mod update;
pub mod worker;

/// The sanitizer of untrusted text (control characters escaped, length capped):
/// `text::sanitize` before a hub, registry, worker or operator text reaches a
/// terminal, the log, the state, the history or a report.
pub use hub_client::text;

/// Installs the process-wide rustls crypto provider (ring). Idempotent.
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An error and its causes on one line, for logs, status and history: many
/// errors here keep the cause (e.g. "connection refused") in `source()` only.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
