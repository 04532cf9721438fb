//! A scriptable HTTP server on 127.0.0.1:0 that records every request: for the
//! registry behaviours a real registry does not easily show (429, 5xx, garbage).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use gpu_agent::registry::ImageName;

/// One request the mock saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path without the query.
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub at: Instant,
    /// How many requests to the same path came before this one.
    pub nth: usize,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Response + Send + Sync>;

pub struct Mock {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mock {
    /// Serves every request with `handler`.
    pub async fn start(handler: impl Fn(&Seen) -> Response + Send + Sync + 'static) -> Mock {
        let handler: Handler = Arc::new(handler);
        let log: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let app_log = log.clone();
        let app = axum::Router::new().fallback(move |req: Request| {
            let handler = handler.clone();
            let log = app_log.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20).await.unwrap().to_vec();
                let path = parts.uri.path().to_string();
                let seen = {
                    let mut log = log.lock().unwrap();
                    let nth = log.iter().filter(|s| s.path == path).count();
                    let seen = Seen {
                        method: parts.method.to_string(),
                        path,
                        query: parts.uri.query().unwrap_or("").to_string(),
                        headers: parts.headers,
                        body,
                        at: Instant::now(),
                        nth,
                    };
                    log.push(seen.clone());
                    seen
                };
                let resp = handler(&seen);
                if let Some(Delay(delay)) = resp.extensions().get::<Delay>() {
                    tokio::time::sleep(*delay).await;
                }
                resp
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Mock { addr, log, task }
    }

    /// `127.0.0.1:<port>/test/worker`.
    pub fn image(&self) -> ImageName {
        ImageName::parse(&format!("{}/test/worker", self.addr)).unwrap()
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    /// The requests to `path`.
    pub fn to(&self, path: &str) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|s| s.path == path)
            .collect()
    }

    /// `METHOD path` of every request, in order.
    pub fn summary(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|s| format!("{} {}", s.method, s.path))
            .collect()
    }
}

/// A response with a status, headers and a body.
pub fn reply(status: u16, headers: &[(&str, &str)], body: impl Into<Body>) -> Response {
    let mut builder = Response::builder().status(StatusCode::from_u16(status).unwrap());
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(body.into()).unwrap()
}

/// Marks a response to be sent only after a delay.
#[derive(Clone, Copy)]
struct Delay(Duration);

/// `resp`, sent after `delay`.
pub fn after(delay: Duration, mut resp: Response) -> Response {
    resp.extensions_mut().insert(Delay(delay));
    resp
}

/// A HEAD-manifest answer carrying `digest`.
pub fn manifest_head(digest: &str) -> Response {
    reply(
        200,
        &[
            ("Docker-Content-Digest", digest),
            ("Content-Type", "application/vnd.oci.image.index.v1+json"),
        ],
        "",
    )
}

/// `{"name": .., "tags": [..]}` with an optional `Link` header.
pub fn tag_page(tags: &[&str], next: Option<&str>) -> Response {
    let body = serde_json::json!({"name": "test/worker", "tags": tags}).to_string();
    match next {
        Some(next) => reply(
            200,
            &[
                ("Content-Type", "application/json"),
                ("Link", &format!("<{next}>; rel=\"next\"")),
            ],
            body,
        ),
        None => reply(200, &[("Content-Type", "application/json")], body),
    }
}
