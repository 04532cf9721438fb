//! gpu-agent: keeps the GPU worker container of one host on the right image.
//!
//! The library holds every subsystem; the binaries in `src/bin/` only parse
//! arguments and call into it. See `ARCHITECTURE.md` at the repository root for
//! the code map and the update sequence.

pub mod config;
pub mod daemon;
pub mod docker;
pub mod registry;
pub mod update;
pub mod worker;

/// Installs the process-wide rustls crypto provider (ring). Idempotent.
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
