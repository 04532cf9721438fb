//! [`HubClient`]: one async method per call of the hub protocol (v1).
//!
//! Every call has a timeout; the idempotent ones are retried on transient
//! errors (timeouts, connection failures, 429, 5xx) with exponential backoff
//! and jitter. The event stream has a connect timeout and an idle timeout,
//! so a hub that silently stops sending is noticed.

use std::time::Duration;

use futures_util::StreamExt;
use rand::Rng;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, Response, StatusCode};
use serde::de::DeserializeOwned;
use url::Url;

use crate::error::HubError;
use crate::sse;
use crate::token::TokenSource;
use crate::wire::{shorten, shorten_to, Desired, DrainNotice, Report, WorkerView};

/// Error bodies are quoted in errors, shortened to this.
const MAX_DETAIL: usize = 200;
/// Bodies larger than this are garbage (the protocol's are a few hundred bytes).
const MAX_BODY: usize = 1 << 20;
/// An event (or a line) longer than this ends the stream as garbage.
pub const MAX_EVENT: usize = 64 * 1024;

/// How the client talks to the hub.
#[derive(Debug)]
pub struct HubOptions {
    /// The hub's base URL, e.g. `https://hub.example.com` (a path prefix is kept).
    pub url: Url,
    /// This host's agent id, the `{agent_id}` of every path.
    pub agent_id: String,
    pub token: TokenSource,
    /// Per request, connect to last byte.
    pub timeout: Duration,
    /// Extra attempts for transient errors of idempotent calls.
    pub retries: u32,
    /// First backoff delay; doubled per attempt, plus up to 50 % jitter.
    pub retry_base: Duration,
    /// The event stream is given up (and reopened by the caller) when nothing,
    /// not even a comment, arrives for this long.
    pub stream_idle_timeout: Duration,
    /// Extra CA certificates trusted beside the system's roots.
    pub extra_roots: Vec<reqwest::Certificate>,
}

impl HubOptions {
    /// Defaults: 10 s per call, 2 retries from 250 ms, 90 s stream idle timeout.
    pub fn new(url: Url, agent_id: impl Into<String>, token: TokenSource) -> HubOptions {
        HubOptions {
            url,
            agent_id: agent_id.into(),
            token,
            timeout: Duration::from_secs(10),
            retries: 2,
            retry_base: Duration::from_millis(250),
            stream_idle_timeout: Duration::from_secs(90),
            extra_roots: Vec::new(),
        }
    }
}

/// Talks to one hub for one agent.
#[derive(Debug)]
pub struct HubClient {
    http: reqwest::Client,
    /// For the event stream: no overall timeout (it stays open).
    stream_http: reqwest::Client,
    opts: HubOptions,
}

impl HubClient {
    pub fn new(opts: HubOptions) -> Result<HubClient, HubError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        if !matches!(opts.url.scheme(), "http" | "https") || opts.url.cannot_be_a_base() {
            return Err(HubError::Setup {
                what: format!(
                    "the hub URL must be http(s)://host[:port][/path]: {}",
                    opts.url
                ),
            });
        }
        if opts.agent_id.is_empty() {
            return Err(HubError::Setup {
                what: "the agent id is empty".into(),
            });
        }
        let ua = concat!("gpu-agent-hub-client/", env!("CARGO_PKG_VERSION"));
        let connect = opts.timeout.min(Duration::from_secs(10));
        let setup = |e: reqwest::Error| HubError::Setup {
            what: e.to_string(),
        };
        let http = reqwest::Client::builder()
            .user_agent(ua)
            .timeout(opts.timeout)
            .connect_timeout(connect)
            .tls_certs_merge(opts.extra_roots.iter().cloned())
            .build()
            .map_err(setup)?;
        let stream_http = reqwest::Client::builder()
            .user_agent(ua)
            .connect_timeout(connect)
            .tls_certs_merge(opts.extra_roots.iter().cloned())
            .build()
            .map_err(setup)?;
        Ok(HubClient {
            http,
            stream_http,
            opts,
        })
    }

    pub fn options(&self) -> &HubOptions {
        &self.opts
    }

    /// `GET /v1/agents/{id}/desired`: `Some` digest to run, or `None` (204): follow the registry.
    pub async fn desired(&self) -> Result<Option<Desired>, HubError> {
        let url = self.url(&["v1", "agents", &self.opts.agent_id, "desired"]);
        let call = self.call_name(Method::GET, &url);
        let resp = self.send_retried(Method::GET, &url, None).await?;
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let d: Desired = read_json(&call, resp).await?;
        d.validate().map_err(|what| HubError::Garbage {
            call: call.clone(),
            what,
        })?;
        Ok(Some(d))
    }

    /// `POST /v1/agents/{id}/report`: the status, and the event when one happened.
    pub async fn report(&self, report: &Report) -> Result<(), HubError> {
        let url = self.url(&["v1", "agents", &self.opts.agent_id, "report"]);
        let body = serde_json::to_vec(report).map_err(|e| HubError::Setup {
            what: format!("encoding the report: {e}"),
        })?;
        self.send_retried(Method::POST, &url, Some(body)).await?;
        Ok(())
    }

    /// `POST /v1/agents/{id}/drain`: stop (`true`) or resume (`false`) sending jobs.
    pub async fn drain(&self, notice: &DrainNotice) -> Result<(), HubError> {
        let url = self.url(&["v1", "agents", &self.opts.agent_id, "drain"]);
        let body = serde_json::to_vec(notice).map_err(|e| HubError::Setup {
            what: format!("encoding the drain notice: {e}"),
        })?;
        self.send_retried(Method::POST, &url, Some(body)).await?;
        Ok(())
    }

    /// `GET /v1/workers/{id}`: what the hub sees of this host's worker.
    pub async fn worker(&self) -> Result<WorkerView, HubError> {
        let url = self.url(&["v1", "workers", &self.opts.agent_id]);
        let call = self.call_name(Method::GET, &url);
        let resp = self.send_retried(Method::GET, &url, None).await?;
        let w: WorkerView = read_json(&call, resp).await?;
        if let Some(d) = w.digest.as_deref() {
            if !crate::wire::is_sha256_digest(d) {
                return Err(HubError::Garbage {
                    call,
                    what: format!("'digest' is not a sha256 digest: {:?}", shorten(d)),
                });
            }
        }
        Ok(w)
    }

    /// `GET /v1/agents/{id}/events`: opens the event stream (once, no retry:
    /// the caller reconnects with its own backoff). `last_event_id` resumes
    /// after the last event seen.
    pub async fn events(&self, last_event_id: Option<&str>) -> Result<EventStream, HubError> {
        let url = self.url(&["v1", "agents", &self.opts.agent_id, "events"]);
        let call = self.call_name(Method::GET, &url);
        let mut req = self
            .stream_http
            .get(url.clone())
            .header(ACCEPT, "text/event-stream")
            .header("Cache-Control", "no-cache");
        if let Some(id) = last_event_id.filter(|id| !id.is_empty()) {
            if let Ok(v) = HeaderValue::from_str(id) {
                req = req.header("Last-Event-ID", v);
            }
        }
        if let Some(t) = self.opts.token.get()? {
            req = req.header(AUTHORIZATION, bearer(&t)?);
        }
        // The connection and the headers within the call timeout; the body may stay open.
        let resp = tokio::time::timeout(self.opts.timeout, req.send())
            .await
            .map_err(|_| HubError::Timeout {
                call: call.clone(),
                secs: self.opts.timeout.as_secs_f64(),
            })?
            .map_err(|e| transport(&call, e, self.opts.timeout))?;
        let resp = check_status(&call, resp).await?;
        let ctype = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ctype
            .trim()
            .to_ascii_lowercase()
            .starts_with("text/event-stream")
        {
            return Err(HubError::Garbage {
                call,
                what: format!("Content-Type is {ctype:?}, not text/event-stream"),
            });
        }
        Ok(EventStream {
            call,
            body: Box::pin(resp.bytes_stream()),
            parser: sse::Parser::new(MAX_EVENT).with_last_id(last_event_id.map(str::to_string)),
            ready: std::collections::VecDeque::new(),
            idle: self.opts.stream_idle_timeout,
        })
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut u = self.opts.url.clone();
        if let Ok(mut p) = u.path_segments_mut() {
            p.pop_if_empty().extend(segments);
        }
        u
    }

    fn call_name(&self, m: Method, u: &Url) -> String {
        format!("{m} {}", u.path())
    }

    /// One call with the retry policy; the answer has a 2xx status.
    async fn send_retried(
        &self,
        method: Method,
        url: &Url,
        body: Option<Vec<u8>>,
    ) -> Result<Response, HubError> {
        let call = self.call_name(method.clone(), url);
        let mut attempt = 0;
        loop {
            let r = self
                .send_once(&call, method.clone(), url, body.clone())
                .await;
            match r {
                Err(e) if e.kind().is_transient() && attempt < self.opts.retries => {
                    let delay = backoff(self.opts.retry_base, attempt);
                    tracing::debug!(call = %call, error = %e, ?delay, "hub call failed; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn send_once(
        &self,
        call: &str,
        method: Method,
        url: &Url,
        body: Option<Vec<u8>>,
    ) -> Result<Response, HubError> {
        let mut req = self
            .http
            .request(method, url.clone())
            .header(ACCEPT, "application/json");
        if let Some(t) = self.opts.token.get()? {
            req = req.header(AUTHORIZATION, bearer(&t)?);
        }
        if let Some(b) = body {
            req = req.header(CONTENT_TYPE, "application/json").body(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| transport(call, e, self.opts.timeout))?;
        check_status(call, resp).await
    }
}

/// The open event stream. [`EventStream::next`] gives the next event, `None`
/// when the hub closed the stream.
pub struct EventStream {
    call: String,
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    parser: sse::Parser,
    ready: std::collections::VecDeque<sse::Event>,
    idle: Duration,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("call", &self.call)
            .field("last_id", &self.parser.last_id())
            .finish_non_exhaustive()
    }
}

impl EventStream {
    /// The next event; `Ok(None)` when the hub ended the stream. An error
    /// (idle timeout, a broken connection, an over-long event) ends it too.
    pub async fn next(&mut self) -> Result<Option<sse::Event>, HubError> {
        loop {
            if let Some(ev) = self.ready.pop_front() {
                return Ok(Some(ev));
            }
            let chunk = match tokio::time::timeout(self.idle, self.body.next()).await {
                Err(_) => {
                    return Err(HubError::Timeout {
                        call: self.call.clone(),
                        secs: self.idle.as_secs_f64(),
                    })
                }
                Ok(None) => return Ok(None),
                Ok(Some(Err(source))) => {
                    return Err(HubError::Body {
                        call: self.call.clone(),
                        source,
                    })
                }
                Ok(Some(Ok(b))) => b,
            };
            let events = self.parser.push(&chunk).map_err(|e| HubError::Garbage {
                call: self.call.clone(),
                what: e.to_string(),
            })?;
            self.ready.extend(events);
        }
    }

    /// The last event ID seen, for `Last-Event-ID` on the next connection.
    pub fn last_event_id(&self) -> Option<&str> {
        self.parser.last_id()
    }

    /// The reconnection delay the hub asked for (`retry:`), if any.
    pub fn retry_hint(&self) -> Option<Duration> {
        self.parser.retry_ms().map(Duration::from_millis)
    }
}

/// `base · 2^attempt`, capped at 30 s, plus up to 50 % jitter.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let d = base
        .saturating_mul(1u32 << attempt.min(16))
        .min(Duration::from_secs(30));
    let jitter = rand::rng().random_range(0.0..0.5);
    d + d.mul_f64(jitter)
}

fn bearer(token: &str) -> Result<HeaderValue, HubError> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| HubError::Setup {
        what: "the hub token holds characters an HTTP header cannot carry".into(),
    })?;
    v.set_sensitive(true);
    Ok(v)
}

fn transport(call: &str, e: reqwest::Error, timeout: Duration) -> HubError {
    if e.is_timeout() {
        HubError::Timeout {
            call: call.to_string(),
            secs: timeout.as_secs_f64(),
        }
    } else {
        HubError::Connect {
            call: call.to_string(),
            source: e,
        }
    }
}

/// Maps a non-2xx answer to its error, with the start of its body.
async fn check_status(call: &str, resp: Response) -> Result<Response, HubError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    // The start of the body is enough to say what went wrong; never more,
    // and never wait long for it.
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    let read = async {
        while let Some(Ok(chunk)) = stream.next().await {
            body.extend_from_slice(&chunk);
            if body.len() > 4 * MAX_DETAIL {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    let text = String::from_utf8_lossy(&body);
    let detail = shorten_to(text.trim(), MAX_DETAIL);
    let call = call.to_string();
    Err(match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => HubError::Unauthorized {
            call,
            status: status.as_u16(),
            detail,
        },
        StatusCode::NOT_FOUND => HubError::NotFound { call, detail },
        s => HubError::Status {
            call,
            status: s.as_u16(),
            detail,
        },
    })
}

async fn read_json<T: DeserializeOwned>(call: &str, resp: Response) -> Result<T, HubError> {
    let status = resp.status();
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            if e.is_timeout() {
                HubError::Timeout {
                    call: call.to_string(),
                    secs: 0.0,
                }
            } else {
                HubError::Body {
                    call: call.to_string(),
                    source: e,
                }
            }
        })?;
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY {
            return Err(HubError::Garbage {
                call: call.to_string(),
                what: format!("the answer is larger than {MAX_BODY} bytes"),
            });
        }
    }
    serde_json::from_slice(&body).map_err(|e| HubError::Garbage {
        call: call.to_string(),
        what: format!(
            "{status} with a body that is not the expected JSON ({e}): {:?}",
            shorten_to(&String::from_utf8_lossy(&body), MAX_DETAIL)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_bounded_jitter() {
        let b = Duration::from_millis(100);
        for attempt in 0..5 {
            let d = backoff(b, attempt);
            let floor = b * (1 << attempt);
            assert!(d >= floor && d <= floor.mul_f64(1.5), "{attempt}: {d:?}");
        }
        assert!(backoff(b, 40) <= Duration::from_secs(45));
    }

    #[test]
    fn paths_keep_a_prefix_and_escape_the_id() {
        let c = HubClient::new(HubOptions::new(
            Url::parse("http://127.0.0.1:1/hub/").unwrap(),
            "host 17/a",
            TokenSource::none(),
        ))
        .unwrap();
        let u = c.url(&["v1", "agents", &c.opts.agent_id, "desired"]);
        assert_eq!(u.path(), "/hub/v1/agents/host%2017%2Fa/desired");
        assert!(HubClient::new(HubOptions::new(
            Url::parse("ftp://x/").unwrap(),
            "a",
            TokenSource::none()
        ))
        .is_err());
    }
}
