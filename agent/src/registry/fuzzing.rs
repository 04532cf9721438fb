//! Thin entry points into the registry's parsers of outside input, for the
//! fuzz targets in `fuzz/` (not an API: each calls the real function and
//! returns plain values).

use reqwest::header::HeaderValue;
use time::OffsetDateTime;

use super::{auth, client, credentials, http, tags};

/// The digest of a manifest HEAD answer from its `Content-Type` and
/// `Docker-Content-Digest` header bytes (`None`: header absent; bytes that are
/// not a valid header value are refused by the HTTP layer before this).
pub fn manifest_head(
    content_type: Option<&[u8]>,
    digest: Option<&[u8]>,
) -> Option<Result<String, String>> {
    let header = |b: Option<&[u8]>| match b {
        None => Some(None),
        Some(b) => HeaderValue::from_bytes(b).ok().map(Some),
    };
    let (content_type, digest) = (header(content_type)?, header(digest)?);
    Some(client::digest_from_head(
        content_type.as_ref(),
        digest.as_ref(),
    ))
}

/// The detail of a registry error body, as it appears in an error.
pub fn error_detail(body: &[u8]) -> String {
    http::error_detail(body)
}

/// `WWW-Authenticate` values: every challenge parsed, and the one picked
/// (`(scheme, realm, service, scope)`, scheme `bearer` or `basic`).
#[allow(clippy::type_complexity)]
pub fn challenges(
    values: &[&str],
) -> (
    Vec<Vec<(String, Vec<(String, String)>)>>,
    Result<(String, String, Option<String>, Option<String>), String>,
) {
    let parsed = values
        .iter()
        .map(|v| auth::parse_www_authenticate(v))
        .collect();
    let picked = auth::pick_challenge(values.iter().copied()).map(|c| match c {
        auth::Challenge::Bearer {
            realm,
            service,
            scope,
        } => ("bearer".to_string(), realm, service, scope),
        auth::Challenge::Basic => ("basic".to_string(), String::new(), None, None),
    });
    (parsed, picked)
}

/// A token endpoint's answer: the token and its lifetime in seconds.
pub fn token_answer(body: &[u8], now: OffsetDateTime) -> Result<(String, u64), String> {
    auth::parse_token_answer(body, now).map(|t| (t.value, t.lifetime.as_secs()))
}

/// The `Authorization` value the agent sends with a token.
pub fn bearer_header(token: &str) -> HeaderValue {
    auth::bearer_header(token)
}

/// The `rel="next"` target of one `Link` header value.
pub fn next_link(header: &str) -> Option<String> {
    tags::parse_next_link(header)
}

/// A `tags/list` page.
pub fn tag_list(body: &[u8]) -> Result<Vec<String>, String> {
    tags::parse_tag_list(body)
}

/// The version a tag names, if it names one.
pub fn version_tag(tag: &str) -> Option<semver::Version> {
    tags::parse_version_tag(tag)
}

/// Whether a tag may reach a URL (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`).
pub fn tag_is_valid(tag: &str) -> bool {
    client::check_tag(tag).is_ok()
}

/// A credential helper's answer: `(username or "<token>", secret)`.
pub fn helper_answer(stdout: &[u8]) -> Result<(String, String), String> {
    credentials::parse_helper_answer(stdout).map(plain)
}

/// A docker `config.json`: its helper for `registry` and its inline credentials.
#[allow(clippy::type_complexity)]
pub fn docker_config(
    bytes: &[u8],
    registry: &str,
) -> Result<(Option<String>, Result<Option<(String, String)>, String>), String> {
    let config = credentials::DockerConfig::parse(bytes)?;
    Ok((
        config.helper_for(registry).map(str::to_string),
        config.inline(registry).map(|c| c.map(plain)),
    ))
}

fn plain(c: credentials::Credentials) -> (String, String) {
    match c {
        credentials::Credentials::Password { username, password } => (username, password),
        credentials::Credentials::IdentityToken { token, .. } => ("<token>".to_string(), token),
    }
}
