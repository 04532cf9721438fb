//! [`HubError`]: what went wrong talking to the hub, with a machine-friendly [`ErrorKind`].

use std::path::PathBuf;

/// The broad class of a hub error, for callers that decide by it (retry or
/// not, what to show in `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// 401 or 403: the token is missing, wrong or expired.
    Unauthorized,
    /// 404: the hub does not know this agent or worker (or the URL is wrong).
    NotFound,
    /// The hub answered, but not in the protocol's shape.
    Garbage,
    /// The call took longer than its timeout.
    Timeout,
    /// The hub cannot be reached or answered 5xx / 429: try again later.
    Unavailable,
    /// The client's own set-up: the token file cannot be read, a bad URL.
    Config,
}

impl ErrorKind {
    /// Worth retrying with backoff.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorKind::Timeout | ErrorKind::Unavailable)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Garbage => "garbage",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Config => "config",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "hub {call}: {status} unauthorized (check hub.token_file){}",
        detail_suffix(detail)
    )]
    Unauthorized {
        call: String,
        status: u16,
        detail: String,
    },
    #[error("hub {call}: 404 not found{}", detail_suffix(detail))]
    NotFound { call: String, detail: String },
    #[error("hub {call}: unexpected answer: {what}")]
    Garbage { call: String, what: String },
    #[error("hub {call}: no answer within {secs:.1}s")]
    Timeout { call: String, secs: f64 },
    #[error("hub {call}: {status}{}", detail_suffix(detail))]
    Status {
        call: String,
        status: u16,
        detail: String,
    },
    #[error("hub {call}: cannot reach the hub")]
    Connect {
        call: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("hub {call}: the answer broke off")]
    Body {
        call: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("reading the hub token file {}", path.display())]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the hub token file {} is empty", path.display())]
    EmptyToken { path: PathBuf },
    #[error("hub client set-up: {what}")]
    Setup { what: String },
}

fn detail_suffix(d: &str) -> String {
    if d.is_empty() {
        String::new()
    } else {
        format!(": {d}")
    }
}

impl HubError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            HubError::Unauthorized { .. } => ErrorKind::Unauthorized,
            HubError::NotFound { .. } => ErrorKind::NotFound,
            HubError::Garbage { .. } => ErrorKind::Garbage,
            HubError::Timeout { .. } => ErrorKind::Timeout,
            HubError::Status { status, .. } if *status == 429 || *status >= 500 => {
                ErrorKind::Unavailable
            }
            // Another 4xx: the hub refused what we sent; not the protocol we know.
            HubError::Status { .. } => ErrorKind::Garbage,
            HubError::Connect { .. } | HubError::Body { .. } => ErrorKind::Unavailable,
            HubError::Token { .. } | HubError::EmptyToken { .. } | HubError::Setup { .. } => {
                ErrorKind::Config
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let s = |status| HubError::Status {
            call: "GET /x".into(),
            status,
            detail: String::new(),
        };
        assert_eq!(s(503).kind(), ErrorKind::Unavailable);
        assert_eq!(s(429).kind(), ErrorKind::Unavailable);
        assert_eq!(s(400).kind(), ErrorKind::Garbage);
        assert!(ErrorKind::Timeout.is_transient());
        assert!(!ErrorKind::Unauthorized.is_transient());
        let e = HubError::Unauthorized {
            call: "GET /v1/agents/h/desired".into(),
            status: 401,
            detail: "bad token".into(),
        };
        assert_eq!(
            e.to_string(),
            "hub GET /v1/agents/h/desired: 401 unauthorized (check hub.token_file): bad token"
        );
    }
}
