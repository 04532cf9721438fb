//! [`RegistryClient`]: the requests, and the 401 → challenge → credentials dance around them.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Method, Response};
use tracing::debug;
use url::Url;

use super::auth::{self, Challenge, TokenCache, TokenClient};
use super::credentials::{self, Credentials};
use super::http::{self, read_body, status_error};
use super::retry::RetryPolicy;
use super::{
    is_sha256_digest, ClientOptions, EngineCredentials, ImageName, Policy, RegistryError, Resolved,
    MANIFEST_MEDIA_TYPES,
};

/// Asks registries for digests. Cheap to clone; clones share the token cache.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    opts: ClientOptions,
    retry: RetryPolicy,
    tokens: Mutex<TokenCache>,
    /// The last challenge of each registry: later requests answer it up front.
    challenges: Mutex<HashMap<String, Challenge>>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("opts", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    pub fn new(opts: ClientOptions) -> Result<Self, RegistryError> {
        crate::init_tls();
        let http = reqwest::Client::builder()
            .user_agent(concat!("gpu-agent/", env!("CARGO_PKG_VERSION")))
            .timeout(opts.request_timeout)
            .connect_timeout(opts.request_timeout.min(Duration::from_secs(10)))
            .https_only(!opts.insecure)
            .tls_certs_merge(opts.extra_roots.iter().cloned())
            .build()
            .map_err(|source| RegistryError::Client { source })?;
        let retry = RetryPolicy {
            retries: opts.retries,
            base_delay: opts.retry_base_delay,
            on_answer: opts.on_answer.clone(),
        };
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                http,
                opts,
                retry,
                tokens: Mutex::default(),
                challenges: Mutex::default(),
            }),
        })
    }

    /// The tag the policy picks and the digest it points at now.
    pub async fn resolve(
        &self,
        image: &ImageName,
        policy: &Policy,
    ) -> Result<Resolved, RegistryError> {
        let mut session = Session::new(&self.inner, image);
        let tag = match policy {
            Policy::Tag(tag) => tag.clone(),
            Policy::Version(req) => session.pick_version(req).await?,
        };
        let digest = session.head_digest(&tag).await?;
        debug!(image = %image, tag, digest, "resolved");
        Ok(Resolved { tag, digest })
    }

    /// The digest `tag` points at: one `HEAD` of the manifest (plus the auth dance when needed).
    pub async fn head_digest(&self, image: &ImageName, tag: &str) -> Result<String, RegistryError> {
        Session::new(&self.inner, image).head_digest(tag).await
    }

    /// Every tag of the repository, following pagination; sorted, without duplicates.
    pub async fn list_tags(&self, image: &ImageName) -> Result<Vec<String>, RegistryError> {
        Session::new(&self.inner, image).list_tags().await
    }

    /// The manifest `reference` (a tag or a digest) names, as sent: `GET` with
    /// `accept` as the media types, at most `limit` bytes; when `reference` is a
    /// digest, the body is checked against it.
    pub async fn manifest(
        &self,
        image: &ImageName,
        reference: &str,
        accept: &[&str],
        limit: usize,
    ) -> Result<Manifest, RegistryError> {
        Session::new(&self.inner, image)
            .manifest(reference, accept, limit)
            .await
    }

    /// The blob `digest` of the repository, at most `limit` bytes, checked against its digest.
    pub async fn blob(
        &self,
        image: &ImageName,
        digest: &str,
        limit: usize,
    ) -> Result<Vec<u8>, RegistryError> {
        Session::new(&self.inner, image).blob(digest, limit).await
    }

    /// The credentials the engine needs in `X-Registry-Auth` to pull `image`; `None`: anonymous.
    pub async fn engine_credentials(
        &self,
        image: &ImageName,
    ) -> Result<Option<EngineCredentials>, RegistryError> {
        let creds = self.inner.credentials(&image.registry).await?;
        Ok(creds.map(|c| c.into_engine(&image.registry)))
    }
}

impl Inner {
    async fn credentials(&self, registry: &str) -> Result<Option<Credentials>, RegistryError> {
        credentials::lookup(
            self.opts.auth_file.as_deref(),
            self.opts.helper_dir.as_deref(),
            self.opts.helper_timeout,
            registry,
        )
        .await
    }

    /// Refuses plain http unless `insecure` (reqwest would too, less clearly).
    fn check_scheme(&self, url: &Url) -> Result<(), RegistryError> {
        http::check_scheme(url, self.opts.insecure)
    }
}

/// One operation on one repository. Reads the credentials at most once, and
/// only when the registry asks for them.
pub(super) struct Session<'a> {
    inner: &'a Inner,
    pub(super) image: &'a ImageName,
    scope: String,
    creds: Option<Option<Credentials>>,
}

impl<'a> Session<'a> {
    fn new(inner: &'a Inner, image: &'a ImageName) -> Self {
        Session {
            inner,
            image,
            scope: format!("repository:{}:pull", image.repository),
            creds: None,
        }
    }

    /// `<api base>/v2/<repository>/<rest>`.
    pub(super) fn url(&self, rest: &str) -> Result<Url, RegistryError> {
        let base = self.image.api_base(self.inner.opts.insecure);
        let raw = format!("{base}/v2/{}/{rest}", self.image.repository);
        Url::parse(&raw).map_err(|e| RegistryError::InvalidName {
            name: self.image.to_string(),
            reason: format!("{raw} is not a URL: {e}"),
        })
    }

    async fn credentials(&mut self) -> Result<Option<Credentials>, RegistryError> {
        if self.creds.is_none() {
            self.creds = Some(self.inner.credentials(&self.image.registry).await?);
        }
        Ok(self.creds.clone().flatten())
    }

    /// What to send before being asked, from what the registry asked for before:
    /// a cached token, a new token from the remembered realm when that one
    /// expired (saving a 401 round trip per poll), or Basic.
    async fn preemptive_auth(&mut self, url: &str) -> Result<Option<HeaderValue>, RegistryError> {
        let registry = &self.image.registry;
        let token = lock(&self.inner.tokens).get(registry, &self.scope, Instant::now());
        if let Some(token) = token {
            return Ok(Some(auth::bearer_header(&token)));
        }
        let known = lock(&self.inner.challenges).get(registry).cloned();
        match known {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(match self.credentials().await? {
                Some(Credentials::Password { username, password }) => {
                    Some(auth::basic_header(&username, &password))
                }
                _ => None,
            }),
            Some(Challenge::Bearer { realm, service, .. }) => {
                let token = self.bearer_token(&realm, service.as_deref(), url).await?;
                Ok(Some(auth::bearer_header(&token)))
            }
        }
    }

    /// Sends one request (with retries), answering one 401 challenge if it gets one.
    /// A second 401 is an auth error. Other statuses are for the caller to judge.
    pub(super) async fn send(
        &mut self,
        method: Method,
        url: &Url,
        accept: &str,
    ) -> Result<Response, RegistryError> {
        self.inner.check_scheme(url)?;
        let url_text = url.to_string();
        let accept = HeaderValue::from_str(accept).map_err(|_| RegistryError::Garbage {
            url: url_text.clone(),
            reason: "bad Accept header".into(),
        })?;
        let mut challenged = false;
        loop {
            let auth = self.preemptive_auth(&url_text).await?;
            debug!(method = %method, url = %url, authenticated = auth.is_some(), "registry request");
            let http = &self.inner.http;
            let resp = self
                .inner
                .retry
                .send(&url_text, || {
                    let req = http
                        .request(method.clone(), url.clone())
                        .header(ACCEPT, accept.clone());
                    match &auth {
                        Some(auth) => req.header(AUTHORIZATION, auth.clone()),
                        None => req,
                    }
                })
                .await?;
            if resp.status().as_u16() != 401 {
                return Ok(resp);
            }
            if challenged {
                return Err(self.rejected(&url_text, 401).await);
            }
            challenged = true;
            let challenge = auth::pick_challenge(
                resp.headers()
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
            )
            .map_err(|reason| RegistryError::UnsupportedChallenge {
                url: url_text.clone(),
                reason,
            })?;
            self.answer_challenge(challenge, &url_text).await?;
        }
    }

    /// Gets the credentials the challenge asks for, and remembers the challenge
    /// so that later requests can send them up front.
    async fn answer_challenge(
        &mut self,
        challenge: Challenge,
        url: &str,
    ) -> Result<(), RegistryError> {
        let registry = self.image.registry.clone();
        lock(&self.inner.tokens).remove(&registry, &self.scope);
        match &challenge {
            Challenge::Bearer { realm, service, .. } => {
                self.bearer_token(realm, service.as_deref(), url).await?;
            }
            Challenge::Basic => match self.credentials().await? {
                Some(Credentials::Password { .. }) => {}
                Some(Credentials::IdentityToken { .. }) => {
                    return Err(RegistryError::UnsupportedChallenge {
                        url: url.to_string(),
                        reason: "Basic auth, but the credentials for this registry are an identity token"
                            .into(),
                    })
                }
                None => {
                    return Err(RegistryError::AuthRequired {
                        registry,
                        url: url.to_string(),
                    })
                }
            },
        }
        lock(&self.inner.challenges).insert(registry, challenge);
        Ok(())
    }

    /// A new token for this session's scope from `realm`, cached.
    async fn bearer_token(
        &mut self,
        realm: &str,
        service: Option<&str>,
        url: &str,
    ) -> Result<String, RegistryError> {
        let creds = self.credentials().await?;
        let registry = &self.image.registry;
        let client = TokenClient {
            http: &self.inner.http,
            retry: &self.inner.retry,
            insecure: self.inner.opts.insecure,
        };
        let token = auth::fetch_token(
            &client,
            registry,
            url,
            realm,
            service,
            &self.scope,
            creds.as_ref(),
        )
        .await?;
        debug!(
            registry,
            scope = self.scope,
            lifetime_s = token.lifetime.as_secs(),
            "got registry token"
        );
        lock(&self.inner.tokens).insert(registry, &self.scope, &token, Instant::now());
        Ok(token.value)
    }

    /// The error for a 401/403 that survived the auth dance.
    async fn rejected(&mut self, url: &str, status: u16) -> RegistryError {
        let registry = self.image.registry.clone();
        let url = url.to_string();
        match (status, self.credentials().await) {
            (_, Err(e)) => e,
            (403, Ok(_)) => RegistryError::Denied { registry, url },
            (_, Ok(None)) => RegistryError::AuthRequired { registry, url },
            (_, Ok(Some(_))) => RegistryError::Unauthorized {
                registry,
                url,
                status,
            },
        }
    }

    /// The error for an answer that is not the success the caller wanted.
    pub(super) async fn unexpected(
        &mut self,
        what: &str,
        url: &Url,
        resp: Response,
    ) -> RegistryError {
        let url_text = url.to_string();
        match resp.status().as_u16() {
            404 => RegistryError::NotFound {
                what: what.to_string(),
                url: url_text,
            },
            status @ (401 | 403) => self.rejected(&url_text, status).await,
            _ => status_error(&url_text, resp).await,
        }
    }

    /// One HEAD of the manifest; the digest comes from `Docker-Content-Digest` and
    /// nowhere else (no GET fallback: a GET of a manifest counts against pull limits).
    pub(super) async fn head_digest(&mut self, tag: &str) -> Result<String, RegistryError> {
        check_tag(tag)?;
        let url = self.url(&format!("manifests/{tag}"))?;
        let resp = self
            .send(Method::HEAD, &url, &MANIFEST_MEDIA_TYPES.join(", "))
            .await?;
        if resp.status().as_u16() != 200 {
            let what = format!("tag {tag:?} of {}", self.image);
            return Err(self.unexpected(&what, &url, resp).await);
        }
        digest_from_head(
            resp.headers().get(CONTENT_TYPE),
            resp.headers().get("docker-content-digest"),
        )
        .map_err(|reason| RegistryError::Garbage {
            url: url.to_string(),
            reason,
        })
    }
}

/// A manifest as the registry sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The `Content-Type` of the answer, without parameters.
    pub media_type: String,
    pub body: Vec<u8>,
}

impl Session<'_> {
    async fn manifest(
        &mut self,
        reference: &str,
        accept: &[&str],
        limit: usize,
    ) -> Result<Manifest, RegistryError> {
        if !is_sha256_digest(reference) {
            check_tag(reference)?;
        }
        let url = self.url(&format!("manifests/{reference}"))?;
        let resp = self.send(Method::GET, &url, &accept.join(", ")).await?;
        if resp.status().as_u16() != 200 {
            let what = format!("manifest {reference} of {}", self.image);
            return Err(self.unexpected(&what, &url, resp).await);
        }
        let media_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .unwrap_or("")
            .trim()
            .to_string();
        let body = read_body(resp, url.as_str(), limit).await?;
        if is_sha256_digest(reference) {
            check_digest(&body, reference, &url)?;
        }
        Ok(Manifest { media_type, body })
    }

    async fn blob(&mut self, digest: &str, limit: usize) -> Result<Vec<u8>, RegistryError> {
        if !is_sha256_digest(digest) {
            return Err(RegistryError::InvalidTag {
                tag: digest.to_string(),
            });
        }
        let url = self.url(&format!("blobs/{digest}"))?;
        let resp = self.send(Method::GET, &url, "*/*").await?;
        if resp.status().as_u16() != 200 {
            let what = format!("blob {digest} of {}", self.image);
            return Err(self.unexpected(&what, &url, resp).await);
        }
        let body = read_body(resp, url.as_str(), limit).await?;
        check_digest(&body, digest, &url)?;
        Ok(body)
    }
}

/// Refuses a body whose sha256 is not `digest`.
fn check_digest(body: &[u8], digest: &str, url: &Url) -> Result<(), RegistryError> {
    use sha2::Digest as _;
    let got = format!("sha256:{:x}", sha2::Sha256::digest(body));
    if got == digest {
        Ok(())
    } else {
        Err(RegistryError::Garbage {
            url: url.to_string(),
            reason: format!("the content's digest is {got}, not the {digest} asked for"),
        })
    }
}

/// The digest of a manifest HEAD answer, from its `Content-Type` and
/// `Docker-Content-Digest` headers (the agent reads no manifest body); an
/// `Err` says what is wrong with them.
pub(super) fn digest_from_head(
    content_type: Option<&HeaderValue>,
    digest: Option<&HeaderValue>,
) -> Result<String, String> {
    if let Some(content_type) = content_type {
        let content_type = content_type.to_str().unwrap_or("");
        let media_type = content_type.split(';').next().unwrap_or("").trim();
        if !MANIFEST_MEDIA_TYPES.contains(&media_type) {
            return Err(format!(
                "manifest of media type {content_type:?}, not one of the four asked for"
            ));
        }
    }
    let digest = digest
        .ok_or("HEAD answer without a Docker-Content-Digest header")?
        .to_str()
        .map_err(|_| "Docker-Content-Digest is not text")?
        .trim()
        .to_string();
    if !is_sha256_digest(&digest) {
        return Err(format!(
            "Docker-Content-Digest {:?} is not sha256:<64 hex digits>",
            digest.chars().take(100).collect::<String>()
        ));
    }
    Ok(digest)
}

/// Tags are `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`; anything else never reaches a URL.
pub(super) fn check_tag(tag: &str) -> Result<(), RegistryError> {
    let ok = (1..=128).contains(&tag.len())
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !tag.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(RegistryError::InvalidTag {
            tag: tag.to_string(),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_client_and_its_futures_can_move_between_threads() {
        fn shareable<T: Clone + Send + Sync + 'static>(_: &T) {}
        fn send<T: Send>(_: T) {}
        let client = RegistryClient::new(ClientOptions::default()).unwrap();
        shareable(&client);
        let image = ImageName::parse("ghcr.io/acme/worker").unwrap();
        let policy = Policy::Tag("stable".into());
        // Built, never polled: only the types are checked.
        send(client.resolve(&image, &policy));
        send(client.engine_credentials(&image));
    }

    /// A registry without TLS asked over https: the error says what to do.
    #[tokio::test]
    async fn a_plain_http_registry_asked_over_https_says_to_set_insecure() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        crate::init_tls();
        let client = RegistryClient::new(ClientOptions {
            retries: 0,
            ..ClientOptions::default()
        })
        .unwrap();
        let image = ImageName::parse(&format!("127.0.0.1:{port}/acme/worker")).unwrap();
        let err = client
            .resolve(&image, &Policy::Tag("stable".into()))
            .await
            .unwrap_err();
        let text = crate::error_chain(&err);
        assert!(text.contains("image.insecure = true"), "{text}");
        // The repository stays a name: check-config refuses a URL there.
        assert!(text.contains("host:port/path"), "{text}");
    }

    #[test]
    fn tags_are_checked_before_they_reach_a_url() {
        for good in ["latest", "v1.2.3", "2.4", "a_b-c.d", "_x", &"a".repeat(128)] {
            assert!(check_tag(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".x",
            "-x",
            "a/b",
            "a:b",
            "a b",
            "a?b",
            "é",
            &"a".repeat(129),
        ] {
            assert!(check_tag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn head_answers_give_a_checked_digest() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            digest_from_head(None, Some(&h(&format!(" {d} ")))),
            Ok(d.clone())
        );
        let oci = h("application/vnd.oci.image.index.v1+json; charset=utf-8");
        assert_eq!(digest_from_head(Some(&oci), Some(&h(&d))), Ok(d.clone()));
        let html = digest_from_head(Some(&h("text/html")), Some(&h(&d))).unwrap_err();
        assert!(html.contains("text/html"), "{html}");
        let none = digest_from_head(None, None).unwrap_err();
        assert!(none.contains("without a Docker-Content-Digest"), "{none}");
        let sha512 = digest_from_head(None, Some(&h("sha512:00"))).unwrap_err();
        assert!(sha512.contains("not sha256"), "{sha512}");
    }
}
