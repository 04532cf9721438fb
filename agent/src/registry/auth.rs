//! Registry auth: `WWW-Authenticate` challenges, the bearer token endpoint, and the
//! token cache (per registry and scope, until shortly before the token expires).

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Method;
use time::OffsetDateTime;
use tracing::debug;
use url::Url;

use super::credentials::Credentials;
use super::http::{check_scheme, read_body, status_error};
use super::retry::RetryPolicy;
use super::RegistryError;

/// The lifetime of a token whose answer gives none (the distribution spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Token answers are small; anything bigger is not a token answer.
const MAX_TOKEN_BODY: usize = 1 << 20;

/// What a registry asked for in its 401 answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

/// The first usable challenge among `WWW-Authenticate` header values: Bearer
/// (with a realm) before Basic.
pub(super) fn pick_challenge<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Challenge, String> {
    let mut seen = Vec::new();
    let mut basic = false;
    for value in values {
        for (scheme, params) in parse_www_authenticate(value) {
            let param = |name: &str| {
                params
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.clone())
            };
            if scheme.eq_ignore_ascii_case("bearer") {
                match param("realm").filter(|r| !r.is_empty()) {
                    Some(realm) => {
                        return Ok(Challenge::Bearer {
                            realm,
                            service: param("service"),
                            scope: param("scope"),
                        })
                    }
                    None => seen.push("Bearer without a realm".to_string()),
                }
            } else if scheme.eq_ignore_ascii_case("basic") {
                basic = true;
            } else {
                seen.push(scheme);
            }
        }
    }
    if basic {
        return Ok(Challenge::Basic);
    }
    if seen.is_empty() {
        Err("401 without a WWW-Authenticate challenge".into())
    } else {
        Err(format!("unsupported challenge {}", seen.join(", ")))
    }
}

/// Parses one `WWW-Authenticate` value into challenges: `(scheme, [(name, value)])`.
/// Values may be quoted (with `\` escapes, and commas inside); several challenges
/// may share one header, separated by commas.
pub(super) fn parse_www_authenticate(header: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut p = Parser {
        s: header.as_bytes(),
        i: 0,
    };
    let mut out = Vec::new();
    loop {
        p.skip(|b| b == b',' || b.is_ascii_whitespace());
        let scheme = p.token();
        if scheme.is_empty() {
            break;
        }
        let mut params = Vec::new();
        loop {
            p.skip(|b| b == b',' || b.is_ascii_whitespace());
            let start = p.i;
            let name = p.token();
            p.skip(|b| b == b' ' || b == b'\t');
            if name.is_empty() || p.peek() != Some(b'=') {
                // The start of the next challenge (or the end).
                p.i = start;
                break;
            }
            p.i += 1;
            p.skip(|b| b == b' ' || b == b'\t');
            let value = if p.peek() == Some(b'"') {
                p.quoted()
            } else {
                p.token()
            };
            params.push((name.to_ascii_lowercase(), value));
        }
        out.push((scheme, params));
        if p.peek().is_none() {
            break;
        }
    }
    out
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip(&mut self, f: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
    }

    /// Up to whitespace, `,`, `=` or `"`.
    fn token(&mut self) -> String {
        let start = self.i;
        self.skip(|b| !(b.is_ascii_whitespace() || matches!(b, b',' | b'=' | b'"')));
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    /// A quoted string, at the opening quote; an unterminated one runs to the end.
    fn quoted(&mut self) -> String {
        self.i += 1;
        let mut out = Vec::new();
        while let Some(b) = self.peek() {
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    if let Some(next) = self.peek() {
                        out.push(next);
                        self.i += 1;
                    }
                }
                _ => out.push(b),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// A bearer token and how long to use it.
pub(super) struct Token {
    pub value: String,
    pub lifetime: Duration,
}

/// `{"token" | "access_token", "expires_in"?, "issued_at"?}`; `token` wins when both are there.
pub(super) fn parse_token_answer(body: &[u8], now: OffsetDateTime) -> Result<Token, String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        access_token: Option<String>,
        #[serde(default)]
        expires_in: Option<i64>,
        #[serde(default)]
        issued_at: Option<String>,
    }
    // serde reads a struct from an array too, by position: `["tok", null,
    // 86400]` would be a token with a lifetime. A token answer is an object.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err("token answer is not a JSON object".into());
    }
    let answer: Answer =
        serde_json::from_slice(body).map_err(|e| format!("token answer is not valid JSON: {e}"))?;
    let value = answer
        .token
        .filter(|t| !t.is_empty())
        .or(answer.access_token.filter(|t| !t.is_empty()))
        .ok_or("token answer has neither \"token\" nor \"access_token\"")?;
    if HeaderValue::from_str(&format!("Bearer {value}")).is_err() {
        return Err("token holds characters not allowed in a header".into());
    }
    let expires_in = match answer.expires_in {
        Some(s) if s > 0 => Duration::from_secs(s as u64),
        _ => DEFAULT_TOKEN_LIFETIME,
    };
    let issued_at = answer.issued_at.and_then(|s| {
        OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339).ok()
    });
    Ok(Token {
        value,
        lifetime: remaining_lifetime(expires_in, issued_at, now),
    })
}

/// How much of `expires_in` is left now. `issued_at` only counts when it is
/// plausible (not in the future, not older than the lifetime): clocks differ.
fn remaining_lifetime(
    expires_in: Duration,
    issued_at: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Duration {
    match issued_at.map(|at| now - at) {
        Some(age) if !age.is_negative() && age.unsigned_abs() <= expires_in => {
            expires_in - age.unsigned_abs()
        }
        _ => expires_in,
    }
}

/// Bearer tokens per (registry, scope), each dropped a little before it expires.
#[derive(Default)]
pub(super) struct TokenCache {
    tokens: HashMap<(String, String), (String, Instant)>,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.tokens.len())
            .finish()
    }
}

impl TokenCache {
    pub(super) fn get(&self, registry: &str, scope: &str, now: Instant) -> Option<String> {
        let (token, valid_until) = self
            .tokens
            .get(&(registry.to_string(), scope.to_string()))?;
        (now < *valid_until).then(|| token.clone())
    }

    /// Keeps `token` for its lifetime less a margin (a fifth, at most 30s), so
    /// that a token is not used in the last moments before it expires.
    pub(super) fn insert(&mut self, registry: &str, scope: &str, token: &Token, now: Instant) {
        let margin = (token.lifetime / 5).min(Duration::from_secs(30));
        let valid_until = now + (token.lifetime - margin);
        self.tokens.retain(|_, (_, until)| *until > now);
        self.tokens.insert(
            (registry.to_string(), scope.to_string()),
            (token.value.clone(), valid_until),
        );
    }

    pub(super) fn remove(&mut self, registry: &str, scope: &str) {
        self.tokens
            .remove(&(registry.to_string(), scope.to_string()));
    }
}

/// `Authorization: Basic base64(user:password)`, marked sensitive.
pub(super) fn basic_header(username: &str, password: &str) -> HeaderValue {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    sensitive(&format!("Basic {encoded}"))
}

/// `Authorization: Bearer <token>`, marked sensitive.
pub(super) fn bearer_header(token: &str) -> HeaderValue {
    sensitive(&format!("Bearer {token}"))
}

fn sensitive(value: &str) -> HeaderValue {
    // Header-safe by construction: base64, or a token checked in parse_token_answer.
    let mut value = HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static(""));
    value.set_sensitive(true);
    value
}

/// `?service=..&scope=..&account=..` for the token GET.
fn token_query(url: &mut Url, service: Option<&str>, scope: &str, account: Option<&str>) {
    let mut query = url.query_pairs_mut();
    if let Some(service) = service {
        query.append_pair("service", service);
    }
    query.append_pair("scope", scope);
    if let Some(account) = account {
        query.append_pair("account", account);
    }
}

/// What [`fetch_token`] sends with: the client's HTTP client, retries and scheme rule.
pub(super) struct TokenClient<'a> {
    pub http: &'a reqwest::Client,
    pub retry: &'a RetryPolicy,
    pub insecure: bool,
}

/// Gets a token for `scope` at the challenge's realm: a GET with basic
/// credentials (or none), or, with an identity token, the OAuth2 refresh-token POST.
pub(super) async fn fetch_token(
    inner: &TokenClient<'_>,
    registry: &str,
    challenged_url: &str,
    realm: &str,
    service: Option<&str>,
    scope: &str,
    creds: Option<&Credentials>,
) -> Result<Token, RegistryError> {
    let mut url = Url::parse(realm).map_err(|e| RegistryError::Garbage {
        url: challenged_url.to_string(),
        reason: format!("token realm {realm:?} is not a URL: {e}"),
    })?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(RegistryError::Garbage {
            url: challenged_url.to_string(),
            reason: format!("token realm {realm:?} is not an http(s) URL"),
        });
    }
    check_scheme(&url, inner.insecure)?;
    let (method, form, auth) = match creds {
        Some(Credentials::IdentityToken { token, .. }) => {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "refresh_token");
            if let Some(service) = service {
                form.append_pair("service", service);
            }
            form.append_pair("scope", scope);
            form.append_pair("client_id", "gpu-agent");
            form.append_pair("refresh_token", token);
            (Method::POST, Some(form.finish()), None)
        }
        Some(Credentials::Password { username, password }) => {
            token_query(&mut url, service, scope, Some(username));
            (Method::GET, None, Some(basic_header(username, password)))
        }
        None => {
            token_query(&mut url, service, scope, None);
            (Method::GET, None, None)
        }
    };
    let request_url = url.to_string();
    let build = || {
        let mut req = inner.http.request(method.clone(), url.clone());
        if let Some(form) = &form {
            req = req
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(form.clone());
        }
        if let Some(auth) = &auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        req
    };
    debug!(
        realm,
        scope,
        with_credentials = creds.is_some(),
        "fetching registry token"
    );
    let resp = inner.retry.send(&request_url, build).await?;
    let status = resp.status().as_u16();
    match status {
        200 => {}
        401 | 403 if creds.is_none() => {
            return Err(RegistryError::AuthRequired {
                registry: registry.to_string(),
                url: request_url,
            })
        }
        401 | 403 => {
            return Err(RegistryError::Unauthorized {
                registry: registry.to_string(),
                url: request_url,
                status,
            })
        }
        _ => return Err(status_error(&request_url, resp).await),
    }
    let body = read_body(resp, &request_url, MAX_TOKEN_BODY).await?;
    parse_token_answer(&body, OffsetDateTime::now_utc()).map_err(|reason| RegistryError::Garbage {
        url: request_url,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn params(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn bearer_challenge_with_quoted_commas() {
        let parsed = parse_www_authenticate(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#,
        );
        assert_eq!(
            parsed,
            vec![(
                "Bearer".to_string(),
                params(&[
                    ("realm", "https://auth.docker.io/token"),
                    ("service", "registry.docker.io"),
                    ("scope", "repository:samalba/my-app:pull,push"),
                ])
            )]
        );
    }

    #[test]
    fn challenge_spacing_escapes_and_unquoted_values() {
        let parsed = parse_www_authenticate(
            r#"bearer  Realm = "https://a/t?x=\"1\"" , service=reg.example,error="invalid_token""#,
        );
        assert_eq!(parsed.len(), 1);
        assert_eq!(
            parsed[0].1,
            params(&[
                ("realm", r#"https://a/t?x="1""#),
                ("service", "reg.example"),
                ("error", "invalid_token"),
            ])
        );
    }

    #[test]
    fn several_challenges_in_one_header() {
        let parsed =
            parse_www_authenticate(r#"Basic realm="test", Bearer realm="https://t/x",service="s""#);
        assert_eq!(parsed.len(), 2);
        assert_eq!(
            parsed[0],
            ("Basic".to_string(), params(&[("realm", "test")]))
        );
        assert_eq!(parsed[1].0, "Bearer");
        assert_eq!(
            parsed[1].1,
            params(&[("realm", "https://t/x"), ("service", "s")])
        );
    }

    #[test]
    fn picking_a_challenge() {
        assert_eq!(
            pick_challenge([r#"Basic realm="Registry Realm""#]),
            Ok(Challenge::Basic)
        );
        assert_eq!(
            pick_challenge([
                r#"Basic realm="x""#,
                r#"Bearer realm="https://t/token",service="svc""#
            ]),
            Ok(Challenge::Bearer {
                realm: "https://t/token".into(),
                service: Some("svc".into()),
                scope: None
            })
        );
        assert!(pick_challenge(["Negotiate"])
            .unwrap_err()
            .contains("Negotiate"));
        assert!(pick_challenge(["Bearer service=\"x\""])
            .unwrap_err()
            .contains("without a realm"));
        assert!(pick_challenge([])
            .unwrap_err()
            .contains("without a WWW-Authenticate"));
        assert!(pick_challenge([""]).is_err());
    }

    #[test]
    fn token_answers() {
        let now = datetime!(2024-01-01 00:00:00 UTC);
        let t = parse_token_answer(
            br#"{"token": "abc", "access_token": "def", "expires_in": 300}"#,
            now,
        )
        .unwrap();
        assert_eq!(
            (t.value.as_str(), t.lifetime),
            ("abc", Duration::from_secs(300))
        );
        let t = parse_token_answer(br#"{"access_token": "def"}"#, now).unwrap();
        assert_eq!(
            (t.value.as_str(), t.lifetime),
            ("def", DEFAULT_TOKEN_LIFETIME)
        );
        let t = parse_token_answer(
            br#"{"token": "abc", "expires_in": 300, "issued_at": "2023-12-31T23:59:00Z"}"#,
            now,
        )
        .unwrap();
        assert_eq!(t.lifetime, Duration::from_secs(240));
        // issued_at in the future (clock skew) or long ago: trust expires_in alone.
        for issued in ["2024-01-01T00:10:00Z", "2023-01-01T00:00:00Z", "yesterday"] {
            let body = format!(r#"{{"token": "abc", "expires_in": 300, "issued_at": "{issued}"}}"#);
            let t = parse_token_answer(body.as_bytes(), now).unwrap();
            assert_eq!(t.lifetime, Duration::from_secs(300), "{issued}");
        }
        assert!(parse_token_answer(br#"{"token": ""}"#, now).is_err());
        assert!(parse_token_answer(br#"{"expires_in": 300}"#, now).is_err());
        assert!(parse_token_answer(b"<html>", now).is_err());
        assert!(parse_token_answer(br#"{"token": "a\nb"}"#, now).is_err());
        // An array is read by position by serde: refused (found by fuzzing).
        let Err(e) = parse_token_answer(br#" ["abc", null, 33333]"#, now) else {
            panic!("an array was taken for a token answer");
        };
        assert!(e.contains("not a JSON object"), "{e}");
    }

    #[test]
    fn token_cache_expires_early_and_is_per_scope() {
        let mut cache = TokenCache::default();
        let t0 = Instant::now();
        let token = Token {
            value: "tok".into(),
            lifetime: Duration::from_secs(60),
        };
        cache.insert("r.example", "repository:a:pull", &token, t0);
        assert_eq!(
            cache.get("r.example", "repository:a:pull", t0).as_deref(),
            Some("tok")
        );
        assert_eq!(cache.get("r.example", "repository:b:pull", t0), None);
        assert_eq!(cache.get("s.example", "repository:a:pull", t0), None);
        // 60s lifetime, 12s margin.
        let later = t0 + Duration::from_secs(47);
        assert!(cache.get("r.example", "repository:a:pull", later).is_some());
        let later = t0 + Duration::from_secs(48);
        assert!(cache.get("r.example", "repository:a:pull", later).is_none());
        cache.remove("r.example", "repository:a:pull");
        assert_eq!(cache.get("r.example", "repository:a:pull", t0), None);
        assert!(!format!("{cache:?}").contains("tok"));
    }

    #[test]
    fn auth_headers_are_sensitive() {
        let h = basic_header("user", "pass");
        assert_eq!(h.to_str().unwrap(), "Basic dXNlcjpwYXNz");
        assert!(h.is_sensitive());
        assert!(bearer_header("x").is_sensitive());
    }
}
