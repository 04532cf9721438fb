//! gpu-agent: keeps the GPU worker container of one host on the right image.
//!
//! The library holds every subsystem; the binaries in `src/bin/` only parse
//! arguments and call into it. See `ARCHITECTURE.md` at the repository root for
//! the code map and the update sequence.

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
pub mod registry;
pub mod update;
pub mod worker;

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
