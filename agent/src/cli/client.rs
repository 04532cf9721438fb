//! The control API client: HTTP/1.1 over the agent's Unix socket, one
//! connection per call (hyper's client connection over a tokio `UnixStream`,
//! no TLS, no connection pool: agentctl makes a call or two and exits). Every
//! call gives back the answer both as the server wrote it (for `--json`) and
//! typed (for text output); transport failures and error answers become
//! [`CliError`]s that carry the SPEC's exit codes.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

use super::output::{short_digest, Output};
use super::CliError;
use crate::control::api::{
    ActionResult, CheckRequest, DrainRequest, ErrorBody, Health, PinRequest, Status, UpdateRequest,
};
use crate::update::journal::HistoryEntry;

/// How long connecting to the socket may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The whole of a quick call (status, history, health, a check or a drain
/// that does not wait, unpin).
pub const QUICK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the phase is polled while a long call runs.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// The `Host` of every request; the socket decides where requests go.
const HOST_NAME: &str = "gpu-agent";

/// An answer: the body as the server wrote it, and read into `T`.
#[derive(Debug, Clone)]
pub struct Reply<T> {
    pub raw: String,
    pub value: T,
}

/// A request to send: method, path (with query) and JSON body.
type Call = Request<Full<Bytes>>;

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client for the agent at `socket`; nothing is opened until a call.
    pub fn new(socket: &Path) -> Client {
        Client {
            socket: socket.to_path_buf(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Reply<Status>, CliError> {
        self.send(get("/v1/status")?, Some(QUICK_TIMEOUT)).await
    }

    /// `GET /v1/history[?n=N]`: oldest first, the last `n` (all without).
    pub async fn history(&self, n: Option<u32>) -> Result<Reply<Vec<HistoryEntry>>, CliError> {
        let path = match n {
            Some(n) => format!("/v1/history?n={n}"),
            None => "/v1/history".into(),
        };
        self.send(get(&path)?, Some(QUICK_TIMEOUT)).await
    }

    /// `GET /v1/health`: the worker, the GPUs and the hub, probed now.
    pub async fn health(&self) -> Result<Reply<Health>, CliError> {
        self.send(get("/v1/health")?, Some(QUICK_TIMEOUT)).await
    }

    /// `POST /v1/check`; with `wait`, answered when the update it starts ends
    /// (no time limit: that can take as long as the drain timeout).
    pub async fn check(&self, wait: bool) -> Result<Reply<ActionResult>, CliError> {
        let req = post("/v1/check", &CheckRequest { wait })?;
        self.send(req, (!wait).then_some(QUICK_TIMEOUT)).await
    }

    /// `POST /v1/update`: answered when the update ends (no time limit).
    pub async fn update(&self, digest: &str) -> Result<Reply<ActionResult>, CliError> {
        let req = post(
            "/v1/update",
            &UpdateRequest {
                digest: digest.to_string(),
            },
        )?;
        self.send(req, None).await
    }

    /// `POST /v1/drain`; with `wait`, answered once the worker is stopped or
    /// the drain was aborted (no time limit: as long as the drain timeout),
    /// else at once.
    pub async fn drain(&self, req: &DrainRequest) -> Result<Reply<ActionResult>, CliError> {
        let timeout = (!req.wait).then_some(QUICK_TIMEOUT);
        self.send(post("/v1/drain", req)?, timeout).await
    }

    /// `POST /v1/undrain`: answered once the worker passed its health gate
    /// (no time limit).
    pub async fn undrain(&self) -> Result<Reply<ActionResult>, CliError> {
        self.send(post("/v1/undrain", &Empty {})?, None).await
    }

    /// `POST /v1/rollback`: answered once the earlier good digest is
    /// verified, or the rollback failed (no time limit).
    pub async fn rollback(&self) -> Result<Reply<ActionResult>, CliError> {
        self.send(post("/v1/rollback", &Empty {})?, None).await
    }

    /// `POST /v1/pin`: answered once the pinned digest runs (no time limit).
    pub async fn pin(&self, reference: &str) -> Result<Reply<ActionResult>, CliError> {
        let req = post(
            "/v1/pin",
            &PinRequest {
                reference: reference.to_string(),
            },
        )?;
        self.send(req, None).await
    }

    /// `POST /v1/unpin`: answered at once.
    pub async fn unpin(&self) -> Result<Reply<ActionResult>, CliError> {
        self.send(post("/v1/unpin", &Empty {})?, Some(QUICK_TIMEOUT))
            .await
    }

    /// Runs `call` (a request that lasts as long as an update or a drain)
    /// while a separate task shows the agent's phase on stderr each time it
    /// changes (text output only): "waiting for {what} to end (phase: …)".
    pub async fn showing_progress<T>(
        &self,
        out: Output,
        what: &'static str,
        call: impl Future<Output = T>,
    ) -> T {
        if out.json() {
            return call.await;
        }
        let watcher = tokio::spawn(watch_phase(self.clone(), out, what));
        let result = call.await;
        watcher.abort();
        result
    }

    /// Sends one request on a new connection and reads the answer into `T`;
    /// `timeout` bounds the whole call, connecting included.
    async fn send<T: DeserializeOwned>(
        &self,
        req: Call,
        timeout: Option<Duration>,
    ) -> Result<Reply<T>, CliError> {
        let (status, body) = match timeout {
            Some(t) => tokio::time::timeout(t, self.exchange(req))
                .await
                .map_err(|_| CliError::NoAnswer {
                    socket: self.socket.clone(),
                    secs: t.as_secs(),
                })??,
            None => self.exchange(req).await?,
        };
        let raw = String::from_utf8_lossy(&body).into_owned();
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

    /// Connects, sends `req` and reads the whole answer.
    async fn exchange(&self, req: Call) -> Result<(StatusCode, Bytes), CliError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(&self.socket))
            .await
            .map_err(|_| CliError::Unreachable {
                socket: self.socket.clone(),
                cause: format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
            })?
            .map_err(|e| CliError::Unreachable {
                socket: self.socket.clone(),
                cause: root_cause(&e),
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.broken(&e))?;
        // The connection's I/O runs beside the request; it ends when the
        // answer is read and `sender` dropped, or with this call.
        let _conn = AbortOnDrop(tokio::spawn(conn));
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.broken(&e))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.broken(&e))?
            .to_bytes();
        Ok((status, body))
    }

    /// The connection broke before the whole answer came.
    fn broken(&self, e: &hyper::Error) -> CliError {
        CliError::Failed(format!(
            "the connection to gpu-agent at {} broke before it answered: {} (the agent may \
             have restarted; agentctl status and agentctl history show what happened)",
            self.socket.display(),
            root_cause(e)
        ))
    }
}

/// The body of the calls that take no arguments: `{}`.
#[derive(Serialize)]
struct Empty {}

/// `GET path`.
fn get(path: &str) -> Result<Call, CliError> {
    request(Method::GET, path, None)
}

/// `POST path` with `body` as JSON.
fn post(path: &str, body: &impl Serialize) -> Result<Call, CliError> {
    let json = serde_json::to_vec(body)
        .map_err(|e| CliError::Failed(format!("writing the request to {path}: {e}")))?;
    request(Method::POST, path, Some(json))
}

fn request(method: Method, path: &str, json: Option<Vec<u8>>) -> Result<Call, CliError> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, HOST_NAME);
    if json.is_some() {
        b = b.header(CONTENT_TYPE, "application/json");
    }
    b.body(Full::new(Bytes::from(json.unwrap_or_default())))
        .map_err(|e| CliError::Failed(format!("building the request to {path}: {e}")))
}

/// Aborts the task when dropped (a call that timed out leaves no I/O behind).
struct AbortOnDrop(JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Prints "waiting for {what} to end (phase: …)" whenever the phase changes.
async fn watch_phase(client: Client, out: Output, what: &str) {
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
                "waiting for {what} to end (phase: {}{to})",
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

/// The innermost cause ("No such file or directory (os error 2)"): hyper's
/// outer layers only say which step failed.
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
        let c = Client::new(&sock);
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
        let e = Client::new(&sock).update("sha256:00").await.unwrap_err();
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
        let c = Client::new(&sock);
        let e = c
            .send::<Status>(get("/v1/status").unwrap(), Some(Duration::from_secs(1)))
            .await
            .unwrap_err();
        assert_eq!(e.exit(), Exit::Unreachable, "{e}");
        assert!(e.to_string().contains("did not answer within 1 s"), "{e}");
    }

    #[tokio::test]
    async fn a_connection_that_breaks_is_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("broken.sock");
        let l = tokio::net::UnixListener::bind(&sock).unwrap();
        // Read the request, then hang up without answering.
        let _server = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
            }
        });
        let e = Client::new(&sock).status().await.unwrap_err();
        assert_eq!(e.exit(), Exit::Failed, "{e}");
        assert!(e.to_string().contains("broke before it answered"), "{e}");
    }
}
