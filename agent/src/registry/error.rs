//! The one error type of the registry client, and which of its kinds are worth retrying.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while asking a registry for a digest.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image repository {name:?}: {reason}")]
    InvalidName { name: String, reason: String },

    #[error(
        "invalid tag {tag:?}: a tag is 1 to 128 letters, digits, '_', '.' or '-', \
         not starting with '.' or '-'"
    )]
    InvalidTag { tag: String },

    #[error(
        "refusing plain http to {url}: set image.insecure = true to allow a registry without tls"
    )]
    InsecureUrl { url: String },

    #[error("building the registry http client")]
    Client {
        #[source]
        source: reqwest::Error,
    },

    #[error("request to {url} failed{}", plain_http_hint(.source))]
    Network {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("{url} answered HTTP {status}{}", detail_suffix(.detail))]
    Status {
        url: String,
        status: u16,
        detail: String,
    },

    #[error("{what} not found at {url}")]
    NotFound { what: String, url: String },

    #[error(
        "{url} requires authentication and no credentials for {registry} were found: \
         add them to image.auth_file"
    )]
    AuthRequired { registry: String, url: String },

    #[error(
        "{url} rejected the credentials for {registry} (HTTP {status}): check image.auth_file"
    )]
    Unauthorized {
        registry: String,
        url: String,
        status: u16,
    },

    #[error(
        "access to {url} denied (HTTP 403): the credentials for {registry} may not pull \
         this repository"
    )]
    Denied { registry: String, url: String },

    #[error("{url} asked for authentication the agent cannot do: {reason}")]
    UnsupportedChallenge { url: String, reason: String },

    #[error("garbage answer from {url}: {reason}")]
    Garbage { url: String, reason: String },

    #[error("no tag of {repository} matches version {range} ({tags_seen} tags seen)")]
    NoMatchingVersion {
        repository: String,
        range: String,
        tags_seen: usize,
    },

    #[error("tag list starting at {url} has more than {max} pages: giving up")]
    TooManyPages { url: String, max: usize },

    #[error("reading auth file {}", path.display())]
    ReadAuthFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("auth file {} is not a valid docker config.json: {reason}", path.display())]
    ParseAuthFile { path: PathBuf, reason: String },

    #[error("credential helper docker-credential-{helper} failed: {reason}")]
    CredentialHelper { helper: String, reason: String },

    #[error(
        "credential helper docker-credential-{helper} did not answer within {}: killed it",
        humantime::format_duration(*.timeout)
    )]
    CredentialHelperTimeout { helper: String, timeout: Duration },
}

impl RegistryError {
    /// Whether trying again later may succeed without anyone changing anything:
    /// network errors, timeouts, 429 and 5xx answers.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Network { source, .. } => !source.is_builder() && !source.is_redirect(),
            RegistryError::Status { status, .. } => is_retryable_status(*status),
            RegistryError::CredentialHelperTimeout { .. } => true,
            _ => false,
        }
    }
}

/// 429 Too Many Requests and every 5xx.
pub(super) fn is_retryable_status(status: u16) -> bool {
    status == 429 || (500..=599).contains(&status)
}

/// A TLS handshake answered in plain HTTP (rustls: "received corrupt message
/// of type InvalidContentType") is a registry without TLS: say what to do.
fn plain_http_hint(source: &reqwest::Error) -> &'static str {
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(source);
    while let Some(err) = e {
        let text = err.to_string();
        if text.contains("InvalidContentType") || text.contains("corrupt message") {
            return " (the registry answered the TLS handshake in plain http: if it has no TLS, \
                    set image.insecure = true and keep the repository as host:port/path, on a \
                    network you trust; Docker also needs the registry in its insecure-registries \
                    unless it is on loopback)";
        }
        e = err.source();
    }
    ""
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16) -> RegistryError {
        RegistryError::Status {
            url: "https://r.example/v2/".into(),
            status,
            detail: String::new(),
        }
    }

    #[test]
    fn transient_kinds() {
        assert!(status(429).is_transient());
        assert!(status(500).is_transient());
        assert!(status(503).is_transient());
        assert!(!status(400).is_transient());
        assert!(!status(404).is_transient());
        let not_found = RegistryError::NotFound {
            what: "tag x".into(),
            url: "u".into(),
        };
        assert!(!not_found.is_transient());
    }

    #[test]
    fn messages_are_lowercase_and_carry_context() {
        let e = RegistryError::Status {
            url: "https://r.example/v2/a/tags/list".into(),
            status: 400,
            detail: "TAG_INVALID: bad".into(),
        };
        assert_eq!(
            e.to_string(),
            "https://r.example/v2/a/tags/list answered HTTP 400: TAG_INVALID: bad"
        );
        assert_eq!(
            status(502).to_string(),
            "https://r.example/v2/ answered HTTP 502"
        );
        let e = RegistryError::CredentialHelperTimeout {
            helper: "ecr-login".into(),
            timeout: Duration::from_secs(10),
        };
        assert_eq!(
            e.to_string(),
            "credential helper docker-credential-ecr-login did not answer within 10s: killed it"
        );
    }
}
