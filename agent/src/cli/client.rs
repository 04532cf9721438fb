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
    ActionResult, CheckRequest, DrainRequest, DryRun, DryRunRequest, ErrorBody, Health, PinRequest,
    Status, UpdateRequest,
};
use crate::update::journal::HistoryEntry;

/// How long connecting to the socket may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The whole of a quick call (status, history, health, a check or a drain
/// that does not wait, unpin).
pub const QUICK_TIMEOUT: Duration = Duration::from_secs(10);
/// A dry run: each of its questions to the registry, hub or engine has its
/// own limit on the agent's side (30 s); it may also wait behind a check.
pub const DRY_RUN_TIMEOUT: Duration = Duration::from_secs(600);
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

    /// `POST /v1/dry-run`: what `check` (no digest) or `update --digest`
    /// would do now; the agent changes nothing.
    pub async fn dry_run(&self, digest: Option<&str>) -> Result<Reply<DryRun>, CliError> {
        let req = post(
            "/v1/dry-run",
            &DryRunRequest {
                digest: digest.map(str::to_string),
            },
        )?;
        self.send(req, Some(DRY_RUN_TIMEOUT)).await
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

    /// What the fake agent was sent: method, path and query, content type, body.
    #[derive(Debug, Clone, PartialEq)]
    struct Seen {
        call: String,
        content_type: Option<String>,
        body: String,
    }

    /// A fake agent on a Unix socket in a temporary directory: each route
    /// answers with its canned status and JSON; every request is recorded.
    struct Fake {
        _dir: tempfile::TempDir,
        sock: PathBuf,
        seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    }

    impl Fake {
        /// Binds and serves on the current runtime.
        async fn start(routes: &[(&'static str, StatusCode, &'static str)]) -> Fake {
            use axum::extract::Request as AxumRequest;
            let dir = tempfile::tempdir().unwrap();
            let sock = dir.path().join("agent.sock");
            let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let mut app = axum::Router::new();
            for &(path, status, answer) in routes {
                let seen = seen.clone();
                app = app.route(
                    path,
                    axum::routing::any(move |req: AxumRequest| async move {
                        let call = format!("{} {}", req.method(), req.uri());
                        let content_type = req
                            .headers()
                            .get(CONTENT_TYPE)
                            .map(|v| v.to_str().unwrap().to_string());
                        let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                            .await
                            .unwrap();
                        seen.lock().unwrap().push(Seen {
                            call,
                            content_type,
                            body: String::from_utf8(body.to_vec()).unwrap(),
                        });
                        (status, [(CONTENT_TYPE, "application/json")], answer)
                    }),
                );
            }
            let listener = tokio::net::UnixListener::bind(&sock).unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            Fake {
                _dir: dir,
                sock,
                seen,
            }
        }

        fn client(&self) -> Client {
            Client::new(&self.sock)
        }

        /// The requests so far, and forgets them.
        fn take(&self) -> Vec<Seen> {
            std::mem::take(&mut *self.seen.lock().unwrap())
        }
    }

    fn posted(call: &str, body: &str) -> Seen {
        Seen {
            call: call.into(),
            content_type: Some("application/json".into()),
            body: body.into(),
        }
    }

    const DIGEST: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    const HEALTH: &str = r#"{"verdict":"healthy","worker":{"verdict":"healthy",
        "container":"gpu-worker","state":"running","digest":null,"restart_count":0,
        "healthcheck":null,"http":{"url":"http://127.0.0.1:8080/health","ok":true,
        "latency_ms":3,"error":null},"in_flight":0,"problem":null},
        "gpu":{"verdict":"not_checked","detail":"no NVML"},
        "hub":{"verdict":"healthy","detail":"registered","data":{"in_flight":0}}}"#;

    #[tokio::test]
    async fn each_maintenance_call_sends_its_request_and_reads_its_answer() {
        let fake = Fake::start(&[
            (
                "/v1/drain",
                StatusCode::OK,
                r#"{"outcome":"drained","digest":null,"error":null}"#,
            ),
            (
                "/v1/undrain",
                StatusCode::OK,
                r#"{"outcome":"undrained","digest":"sha256:aa","error":null}"#,
            ),
            (
                "/v1/rollback",
                StatusCode::OK,
                r#"{"outcome":"updated","digest":"sha256:aa","error":null}"#,
            ),
            (
                "/v1/pin",
                StatusCode::OK,
                r#"{"outcome":"up_to_date","digest":"sha256:aa","error":null}"#,
            ),
            (
                "/v1/unpin",
                StatusCode::OK,
                r#"{"outcome":"unpinned","digest":null,"error":null}"#,
            ),
            ("/v1/health", StatusCode::OK, HEALTH),
        ])
        .await;
        let c = fake.client();

        let req = DrainRequest {
            reason: Some("driver upgrade".into()),
            timeout: Some("10m".into()),
            wait: true,
        };
        assert_eq!(c.drain(&req).await.unwrap().value.outcome, "drained");
        let r = c.drain(&DrainRequest::default()).await.unwrap();
        assert!(r.raw.contains("drained"));
        assert_eq!(
            fake.take(),
            [
                posted(
                    "POST /v1/drain",
                    r#"{"reason":"driver upgrade","timeout":"10m","wait":true}"#
                ),
                posted(
                    "POST /v1/drain",
                    r#"{"reason":null,"timeout":null,"wait":false}"#
                ),
            ]
        );

        assert_eq!(c.undrain().await.unwrap().value.outcome, "undrained");
        assert_eq!(c.rollback().await.unwrap().value.outcome, "updated");
        assert_eq!(c.pin("v2").await.unwrap().value.outcome, "up_to_date");
        assert_eq!(
            c.pin(DIGEST).await.unwrap().value.digest.as_deref(),
            Some("sha256:aa")
        );
        assert_eq!(c.unpin().await.unwrap().value.outcome, "unpinned");
        assert_eq!(
            fake.take(),
            [
                posted("POST /v1/undrain", "{}"),
                posted("POST /v1/rollback", "{}"),
                posted("POST /v1/pin", r#"{"reference":"v2"}"#),
                posted("POST /v1/pin", &format!(r#"{{"reference":"{DIGEST}"}}"#)),
                posted("POST /v1/unpin", "{}"),
            ]
        );

        let h = c.health().await.unwrap();
        assert_eq!(h.raw, HEALTH);
        assert_eq!(h.value.worker.http.unwrap().latency_ms, 3);
        assert_eq!(h.value.gpu.data, serde_json::Value::Null);
        assert_eq!(
            fake.take(),
            [Seen {
                call: "GET /v1/health".into(),
                content_type: None,
                body: String::new(),
            }]
        );
    }

    #[tokio::test]
    async fn the_bodies_read_as_the_server_request_types() {
        // The bodies agentctl sends read as the server's request types, which
        // refuse unknown fields.
        let fake = Fake::start(&[
            (
                "/v1/drain",
                StatusCode::OK,
                r#"{"outcome":"started","digest":null,"error":null}"#,
            ),
            (
                "/v1/pin",
                StatusCode::OK,
                r#"{"outcome":"updated","digest":"sha256:aa","error":null}"#,
            ),
        ])
        .await;
        let c = fake.client();
        let req = DrainRequest {
            reason: Some("x".into()),
            timeout: None,
            wait: false,
        };
        c.drain(&req).await.unwrap();
        c.pin("stable").await.unwrap();
        let seen = fake.take();
        let d: DrainRequest = serde_json::from_str(&seen[0].body).unwrap();
        assert_eq!(d, req);
        let p: PinRequest = serde_json::from_str(&seen[1].body).unwrap();
        assert_eq!(p.reference, "stable");
    }

    #[tokio::test]
    async fn a_refusal_is_exit_code_4_with_the_server_text() {
        let fake = Fake::start(&[(
            "/v1/pin",
            StatusCode::CONFLICT,
            r#"{"error":"the worker is drained for maintenance: agentctl undrain first"}"#,
        )])
        .await;
        let e = fake.client().pin("v2").await.unwrap_err();
        assert_eq!(e.exit(), Exit::Refused);
        assert_eq!(
            e.to_string(),
            "the worker is drained for maintenance: agentctl undrain first"
        );
    }

    /// Whole command lines through `cli::run`, as the binary runs them: the
    /// fake agent runs on a runtime of its own.
    #[test]
    fn command_lines_end_with_the_spec_exit_codes() {
        use crate::cli::{run, Cli};
        use clap::Parser;
        let rt = tokio::runtime::Runtime::new().unwrap();
        let fake = rt.block_on(Fake::start(&[
            (
                "/v1/drain",
                StatusCode::CONFLICT,
                r#"{"error":"an update is in progress"}"#,
            ),
            (
                "/v1/undrain",
                StatusCode::OK,
                r#"{"outcome":"failed","digest":null,"error":"not healthy within 60s"}"#,
            ),
            ("/v1/health", StatusCode::OK, HEALTH),
        ]));
        let sock = fake.sock.to_str().unwrap();
        let exit = |args: &[&str]| {
            let mut argv = vec!["agentctl", "--json", "--socket", sock];
            argv.extend_from_slice(args);
            run(Cli::try_parse_from(argv).unwrap())
        };
        assert_eq!(exit(&["drain", "--timeout", "90s"]), Exit::Refused);
        assert_eq!(exit(&["undrain"]), Exit::Failed);
        assert_eq!(exit(&["health"]), Exit::Ok);
        assert_eq!(exit(&["rollback"]), Exit::Failed, "404: no such call");
        assert_eq!(
            fake.take()[0],
            posted(
                "POST /v1/drain",
                r#"{"reason":null,"timeout":"90s","wait":false}"#
            )
        );
    }
}
