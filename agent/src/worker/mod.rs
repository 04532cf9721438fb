//! Talking to the worker itself over HTTP: its health endpoint and its drain
//! endpoint (`POST` starts draining, `GET` answers `{"in_flight": N}`,
//! `DELETE` cancels a drain, where the worker supports it).

use std::time::Duration;

use serde::Deserialize;
use url::Url;

/// Timeout for one probe of the worker.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a probe's answer that is read (`{"in_flight": N}` is a few bytes).
pub const MAX_PROBE_BODY: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{method} {url}: {message}")]
    Request {
        method: &'static str,
        url: String,
        message: String,
    },
    #[error("{method} {url}: answered {status}{}", redirect_note(*status))]
    Status {
        method: &'static str,
        url: String,
        status: u16,
    },
    #[error("GET {url}: expected {{\"in_flight\": N}}, got {body:?}")]
    Garbage { url: String, body: String },
    #[error("{method} {url}: the answer is larger than {max} bytes")]
    TooLarge {
        method: &'static str,
        url: String,
        max: usize,
    },
}

fn redirect_note(status: u16) -> &'static str {
    if (300..400).contains(&status) {
        " (a redirect: the agent does not follow them; point the URL at the endpoint itself)"
    } else {
        ""
    }
}

/// An HTTP client for worker probes (plain http on loopback, or https).
#[derive(Clone)]
pub struct WorkerClient {
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct InFlight {
    in_flight: u64,
}

impl WorkerClient {
    pub fn new() -> Self {
        crate::init_tls();
        let http = reqwest::Client::builder()
            .timeout(PROBE_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(1)
            .no_proxy()
            // A worker's answer must not send the agent (root) elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("building the worker http client");
        WorkerClient { http }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        name: &'static str,
        url: &Url,
    ) -> Result<Option<String>, ProbeError> {
        let r = self
            .http
            .request(method, url.clone())
            .send()
            .await
            .map_err(|e| ProbeError::Request {
                method: name,
                url: url.to_string(),
                message: crate::error_chain(&e),
            })?;
        let status = r.status();
        if !status.is_success() {
            return Err(ProbeError::Status {
                method: name,
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        // Only the first MAX_PROBE_BODY bytes are read; past that, `None`.
        Ok(read_capped(r, MAX_PROBE_BODY).await)
    }

    /// One health probe: any 2xx is healthy.
    pub async fn health(&self, url: &Url) -> Result<(), ProbeError> {
        self.send(reqwest::Method::GET, "GET", url)
            .await
            .map(|_| ())
    }

    /// Tells the worker to stop taking new jobs.
    pub async fn drain_start(&self, url: &Url) -> Result<(), ProbeError> {
        self.send(reqwest::Method::POST, "POST", url)
            .await
            .map(|_| ())
    }

    /// Asks the worker to take jobs again (best effort: not every worker has it).
    pub async fn drain_cancel(&self, url: &Url) -> Result<(), ProbeError> {
        self.send(reqwest::Method::DELETE, "DELETE", url)
            .await
            .map(|_| ())
    }

    /// How many jobs the worker still runs.
    pub async fn in_flight(&self, url: &Url) -> Result<u64, ProbeError> {
        let body =
            self.send(reqwest::Method::GET, "GET", url)
                .await?
                .ok_or(ProbeError::TooLarge {
                    method: "GET",
                    url: url.to_string(),
                    max: MAX_PROBE_BODY,
                })?;
        serde_json::from_str::<InFlight>(&body)
            .map(|f| f.in_flight)
            .map_err(|_| ProbeError::Garbage {
                url: url.to_string(),
                body: crate::text::sanitize(&body, 200),
            })
    }
}

/// The body as text, read up to `max` bytes; `None` past that (the rest is
/// never read). A body that breaks off counts as what arrived.
async fn read_capped(mut r: reqwest::Response, max: usize) -> Option<String> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = r.chunk().await {
        if body.len() + chunk.len() > max {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    Some(String::from_utf8_lossy(&body).into_owned())
}

impl Default for WorkerClient {
    fn default() -> Self {
        Self::new()
    }
}
