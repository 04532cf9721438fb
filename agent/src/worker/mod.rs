//! Talking to the worker itself over HTTP: its health endpoint and its drain
//! endpoint (`POST` starts draining, `GET` answers `{"in_flight": N}`,
//! `DELETE` cancels a drain, where the worker supports it).

use std::time::Duration;

use serde::Deserialize;
use url::Url;

/// Timeout for one probe of the worker.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{method} {url}: {message}")]
    Request {
        method: &'static str,
        url: String,
        message: String,
    },
    #[error("{method} {url}: answered {status}")]
    Status {
        method: &'static str,
        url: String,
        status: u16,
    },
    #[error("GET {url}: expected {{\"in_flight\": N}}, got {body:?}")]
    Garbage { url: String, body: String },
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
            .build()
            .expect("building the worker http client");
        WorkerClient { http }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        name: &'static str,
        url: &Url,
    ) -> Result<String, ProbeError> {
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
        let body = r.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(ProbeError::Status {
                method: name,
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        Ok(body)
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
        let body = self.send(reqwest::Method::GET, "GET", url).await?;
        serde_json::from_str::<InFlight>(&body)
            .map(|f| f.in_flight)
            .map_err(|_| ProbeError::Garbage {
                url: url.to_string(),
                body: body.chars().take(200).collect(),
            })
    }
}

impl Default for WorkerClient {
    fn default() -> Self {
        Self::new()
    }
}
