//! OCI distribution client: learns which digest a tag or a semver range points at.
//!
//! The agent never pulls through this module (the Docker engine does that, by
//! digest); it only asks the registry "what is the digest of X now?" and hands
//! the engine the credentials it needs for the pull.
//!
//! - [`RegistryClient::resolve`] turns a [`Policy`] into a [`Resolved`] tag and digest:
//!   a tag costs one `HEAD /v2/<repo>/manifests/<tag>`; a semver range first reads
//!   the (paginated) tag list, picks the highest matching version, then HEADs it.
//! - Auth is the usual 401 → `WWW-Authenticate` dance (Bearer token or Basic), with
//!   tokens cached per registry and scope; credentials come from a docker
//!   `config.json` (inline `auths`, `credHelpers`, `credsStore`), read on every use.
//! - Every request has a timeout; 429, 5xx and network errors are retried with
//!   exponential backoff and jitter, honouring `Retry-After`.
//!
//! Files: `name.rs` (image names), `client.rs` (the client, requests, the auth
//! dance), `http.rs` (bounded body reads, status errors, the scheme check:
//! shared by the others, importing none of them), `auth.rs` (challenges, tokens, token cache), `credentials.rs`
//! (config.json and credential helpers), `tags.rs` (tag pagination, semver
//! selection), `retry.rs` (backoff, `Retry-After`), `error.rs` (errors).

mod auth;
mod client;
mod credentials;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod name;
mod retry;
mod tags;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use client::{Manifest, RegistryClient};
pub use error::RegistryError;
pub use name::ImageName;
pub use tags::{select_version, MAX_TAG_LIST_BYTES};

/// The manifest media types the agent accepts, in the order sent in `Accept`.
///
/// All four must be offered: distribution answers 404 to a request that does not
/// accept the OCI type of an OCI manifest, and silently answers with the amd64
/// child when a manifest list is not accepted.
pub const MANIFEST_MEDIA_TYPES: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// What to follow in the repository: a moving tag, or the highest tag in a semver range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    Tag(String),
    Version(semver::VersionReq),
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Tag(tag) => write!(f, "tag {tag}"),
            Policy::Version(req) => write!(f, "version {req}"),
        }
    }
}

/// The answer of [`RegistryClient::resolve`]: the tag chosen and the digest it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub tag: String,
    /// `sha256:<64 lowercase hex>`, checked.
    pub digest: String,
}

/// How the client talks to registries.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Allow plain http (for a loopback registry). Otherwise https only.
    pub insecure: bool,
    /// A docker `config.json`; read on every use, so edits apply without a restart.
    pub auth_file: Option<PathBuf>,
    /// Timeout of every single request (connect, headers and body).
    pub request_timeout: Duration,
    /// Retries after the first attempt on 429, 5xx, connect errors and timeouts.
    pub retries: u32,
    /// Time a credential helper may take before it is killed.
    pub helper_timeout: Duration,
    /// First backoff delay; it doubles per retry (with jitter), up to 10s.
    pub retry_base_delay: Duration,
    /// Where to find `docker-credential-<name>` helpers; `None` searches `PATH`.
    pub helper_dir: Option<PathBuf>,
    /// Extra CA certificates trusted beside the system's roots (`agent.ca_file`).
    pub extra_roots: Vec<reqwest::Certificate>,
    /// Told the status of every answer (`None`: no answer), for metrics: the
    /// registry client counts nothing itself.
    pub on_answer: Option<AnswerObserver>,
}

/// A function told the status of each registry answer (see [`ClientOptions::on_answer`]).
#[derive(Clone)]
pub struct AnswerObserver(pub std::sync::Arc<dyn Fn(Option<u16>) + Send + Sync>);

impl std::fmt::Debug for AnswerObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AnswerObserver")
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure: false,
            auth_file: None,
            request_timeout: Duration::from_secs(30),
            retries: 3,
            helper_timeout: Duration::from_secs(10),
            retry_base_delay: Duration::from_millis(500),
            helper_dir: None,
            extra_roots: Vec::new(),
            on_answer: None,
        }
    }
}

/// What the engine needs in `X-Registry-Auth` to pull from a registry.
#[derive(Clone, PartialEq, Eq, serde::Serialize)]
pub struct EngineCredentials {
    pub username: Option<String>,
    pub password: Option<String>,
    pub identitytoken: Option<String>,
    /// `https://index.docker.io/v1/` for docker.io, else the registry host.
    pub serveraddress: String,
}

impl fmt::Debug for EngineCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineCredentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field(
                "identitytoken",
                &self.identitytoken.as_ref().map(|_| "<redacted>"),
            )
            .field("serveraddress", &self.serveraddress)
            .finish()
    }
}

/// Whether `s` is a `sha256:` digest with 64 lowercase hex digits.
pub fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_shape_is_checked() {
        let good = format!("sha256:{}", "ab12".repeat(16));
        assert!(is_sha256_digest(&good));
        assert!(!is_sha256_digest(&format!("sha256:{}", "AB12".repeat(16))));
        assert!(!is_sha256_digest(&good[..good.len() - 1]));
        assert!(!is_sha256_digest(&format!("sha512:{}", "ab12".repeat(16))));
        assert!(!is_sha256_digest(&format!("{good}0")));
        assert!(!is_sha256_digest(""));
    }

    #[test]
    fn engine_credentials_debug_redacts_secrets() {
        let creds = EngineCredentials {
            username: Some("bob".into()),
            password: Some("hunter2".into()),
            identitytoken: Some("idtok".into()),
            serveraddress: "ghcr.io".into(),
        };
        let shown = format!("{creds:?}");
        assert!(shown.contains("bob") && shown.contains("ghcr.io"));
        assert!(!shown.contains("hunter2") && !shown.contains("idtok"));
    }
}
