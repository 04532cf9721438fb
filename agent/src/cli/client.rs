//! The control API client: HTTP/1.1 over the agent's Unix socket (reqwest's
//! `unix_socket`). Every call gives back the answer both as the server wrote
//! it (for `--json`) and typed (for text output); transport failures and
//! error answers become [`CliError`]s that carry the SPEC's exit codes.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;

use super::output::{short_digest, Output};
use super::CliError;
use crate::control::api::{ActionResult, CheckRequest, ErrorBody, Status, UpdateRequest};
use crate::update::journal::HistoryEntry;

/// How long connecting to the socket may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The whole of a quick call (status, history, a check that does not wait).
pub const QUICK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the phase is polled while a long call runs.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// The host part of every URL; the socket decides where requests go.
const BASE: &str = "http://gpu-agent";

/// An answer: the body as the server wrote it, and read into `T`.
#[derive(Debug, Clone)]
pub struct Reply<T> {
    pub raw: String,
    pub value: T,
}

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Result<Client, CliError> {
        crate::init_tls();
        let http = reqwest::Client::builder()
            .unix_socket(socket)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| {
                CliError::Failed(format!(
                    "building the HTTP client: {}",
                    crate::error_chain(&e)
                ))
            })?;
        Ok(Client {
            http,
            socket: socket.to_path_buf(),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Reply<Status>, CliError> {
        let req = self.http.get(format!("{BASE}/v1/status"));
        self.send(req, Some(QUICK_TIMEOUT)).await
    }

    /// `GET /v1/history[?n=N]`: oldest first, the last `n` (all without).
    pub async fn history(&self, n: Option<u32>) -> Result<Reply<Vec<HistoryEntry>>, CliError> {
        let url = match n {
            Some(n) => format!("{BASE}/v1/history?n={n}"),
            None => format!("{BASE}/v1/history"),
        };
        self.send(self.http.get(url), Some(QUICK_TIMEOUT)).await
    }

    /// `POST /v1/check`; with `wait`, answered when the update it starts ends
    /// (no time limit: that can take as long as the drain timeout).
    pub async fn check(&self, wait: bool) -> Result<Reply<ActionResult>, CliError> {
        let req = self
            .http
            .post(format!("{BASE}/v1/check"))
            .json(&CheckRequest { wait });
        self.send(req, (!wait).then_some(QUICK_TIMEOUT)).await
    }

    /// `POST /v1/update`: answered when the update ends (no time limit).
    pub async fn update(&self, digest: &str) -> Result<Reply<ActionResult>, CliError> {
        let req = self
            .http
            .post(format!("{BASE}/v1/update"))
            .json(&UpdateRequest {
                digest: digest.to_string(),
            });
        self.send(req, None).await
    }

    /// Runs `call` (a request that lasts as long as an update) while a
    /// separate task shows the update's phase on stderr each time it changes
    /// (text output only).
    pub async fn showing_progress<T>(&self, out: Output, call: impl Future<Output = T>) -> T {
        if out.json() {
            return call.await;
        }
        let watcher = tokio::spawn(watch_phase(self.clone(), out));
        let result = call.await;
        watcher.abort();
        result
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: RequestBuilder,
        timeout: Option<Duration>,
    ) -> Result<Reply<T>, CliError> {
        let req = match timeout {
            Some(t) => req.timeout(t),
            None => req,
        };
        let resp = req.send().await.map_err(|e| self.transport(e, timeout))?;
        let status = resp.status();
        let raw = resp.text().await.map_err(|e| self.transport(e, timeout))?;
        if !status.is_success() {
            return Err(answer_error(status, &raw));
        }
        let value = serde_json::from_str(&raw).map_err(|e| {
            CliError::Failed(format!(
                "gpu-agent gave an answer agentctl cannot read ({e}): {}",
                excerpt(&raw)
            ))
        })?;
        Ok(Reply { raw, value })
    }

    fn transport(&self, e: reqwest::Error, timeout: Option<Duration>) -> CliError {
        if e.is_connect() {
            CliError::Unreachable {
                socket: self.socket.clone(),
                cause: root_cause(&e),
            }
        } else if e.is_timeout() {
            CliError::NoAnswer {
                socket: self.socket.clone(),
                secs: timeout.unwrap_or(QUICK_TIMEOUT).as_secs(),
            }
        } else {
            CliError::Failed(format!(
                "the connection to gpu-agent at {} broke before it answered: {} (the agent may \
                 have restarted; agentctl status and agentctl history show what happened)",
                self.socket.display(),
                root_cause(&e)
            ))
        }
    }
}

/// Prints "waiting for the update to end (phase: …)" whenever the phase changes.
async fn watch_phase(client: Client, out: Output) {
    let mut last: Option<String> = None;
    loop {
        tokio::time::sleep(PROGRESS_EVERY).await;
        let Ok(s) = client.status().await else {
            continue;
        };
        let s = s.value;
        if last.as_deref() == Some(s.phase.as_str()) {
            continue;
        }
        if s.phase != "idle" {
            let to = s
                .pending
                .as_ref()
                .and_then(|p| p.get("to"))
                .and_then(|t| t.as_str())
                .map(|t| format!(", to {}", short_digest(Some(t))))
                .unwrap_or_default();
            out.progress(&format!(
                "waiting for the update to end (phase: {}{to})",
                s.phase
            ));
        }
        last = Some(s.phase);
    }
}

/// An error answer (`{"error": "..."}`) as the error of its status.
fn answer_error(status: StatusCode, raw: &str) -> CliError {
    let text = serde_json::from_str::<ErrorBody>(raw)
        .map(|b| b.error)
        .unwrap_or_else(|_| {
            let t = excerpt(raw);
            if t.is_empty() {
                status.to_string()
            } else {
                format!("{status}: {t}")
            }
        });
    match status {
        StatusCode::CONFLICT => CliError::Refused(text),
        StatusCode::BAD_REQUEST => CliError::BadRequest(text),
        StatusCode::NOT_FOUND => CliError::Failed(format!(
            "gpu-agent does not know this call (is it older than agentctl?): {text}"
        )),
        _ => CliError::Failed(format!("gpu-agent failed: {text}")),
    }
}

/// The innermost cause ("No such file or directory (os error 2)"): reqwest's
/// outer layers only repeat the URL.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// At most 300 characters of a body, on one line.
fn excerpt(raw: &str) -> String {
    let one_line = raw.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Exit;

    #[test]
    fn error_answers_carry_the_server_text_and_exit_code() {
        let e = answer_error(
            StatusCode::CONFLICT,
            r#"{"error":"an update is in progress"}"#,
        );
        assert_eq!(e.exit(), Exit::Refused);
        assert_eq!(e.to_string(), "an update is in progress");
        let e = answer_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"error":"disk full"}"#,
        );
        assert_eq!(e.exit(), Exit::Failed);
        assert_eq!(e.to_string(), "gpu-agent failed: disk full");
        let e = answer_error(StatusCode::BAD_REQUEST, r#"{"error":"bad digest"}"#);
        assert_eq!(e.exit(), Exit::Usage);
        let e = answer_error(StatusCode::BAD_GATEWAY, "<html>\n oops </html>");
        assert_eq!(e.exit(), Exit::Failed);
        assert!(
            e.to_string()
                .contains("502 Bad Gateway: <html> oops </html>"),
            "{e}"
        );
    }

    #[test]
    fn long_bodies_are_cut() {
        let e = excerpt(&"x".repeat(1000));
        assert_eq!(e.chars().count(), 301);
    }

    #[tokio::test]
    async fn a_missing_socket_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("none.sock");
        let c = Client::new(&sock).unwrap();
        let e = c.status().await.unwrap_err();
        assert_eq!(e.exit(), Exit::Unreachable, "{e}");
        let text = e.to_string();
        assert!(text.contains("No such file or directory"), "{text}");
        assert!(text.contains(&sock.display().to_string()), "{text}");
    }

    #[tokio::test]
    async fn a_socket_nobody_listens_on_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("dead.sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let e = Client::new(&sock)
            .unwrap()
            .update("sha256:00")
            .await
            .unwrap_err();
        assert_eq!(e.exit(), Exit::Unreachable, "{e}");
        assert!(e.to_string().contains("Connection refused"), "{e}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("slow.sock");
        let l = tokio::net::UnixListener::bind(&sock).unwrap();
        // Accept and keep the connection open without answering.
        let _keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let c = Client::new(&sock).unwrap();
        let req = c.http.get(format!("{BASE}/v1/status"));
        let e = c
            .send::<Status>(req, Some(Duration::from_secs(1)))
            .await
            .unwrap_err();
        assert_eq!(e.exit(), Exit::Unreachable, "{e}");
        assert!(e.to_string().contains("did not answer within 1 s"), "{e}");
    }
}
