//! A byte-forwarding proxy for the fault tests, over TCP or a Unix socket:
//! it forwards as is, or hangs (no byte goes either way, on open connections
//! and new ones: an engine that stopped answering), or trickles the answers
//! to `GET …/manifests/…` and `GET …/blobs/…` (a registry that sends a few
//! bytes a second, forever).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Default)]
pub struct Modes {
    /// No byte is forwarded.
    pub hang: AtomicBool,
    /// Answers to manifest and blob downloads go at [`TRICKLE`] bytes a second.
    pub trickle: AtomicBool,
}

/// Bytes a second of a trickled answer (after its first [`TRICKLE_HEAD`] bytes).
pub const TRICKLE: usize = 4;
/// The start of a trickled answer (its status line and headers) goes at once.
pub const TRICKLE_HEAD: usize = 256;

pub struct Proxy {
    pub modes: Arc<Modes>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub fn hang(&self, on: bool) {
        self.modes.hang.store(on, Ordering::SeqCst);
    }

    pub fn trickle(&self, on: bool) {
        self.modes.trickle.store(on, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listens on `listen` (a Unix socket path) and forwards to the socket `upstream`.
pub fn unix(listen: &Path, upstream: PathBuf) -> Proxy {
    let _ = std::fs::remove_file(listen);
    let l = tokio::net::UnixListener::bind(listen).unwrap();
    let modes = Arc::new(Modes::default());
    let m = modes.clone();
    let task = tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            let (m, up) = (m.clone(), upstream.clone());
            tokio::spawn(async move {
                if let Ok(s) = tokio::net::UnixStream::connect(&up).await {
                    pipe(c, s, m).await;
                }
            });
        }
    });
    Proxy { modes, task }
}

/// Listens on a free loopback port and forwards to `upstream`.
pub async fn tcp(upstream: SocketAddr) -> (Proxy, SocketAddr) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let modes = Arc::new(Modes::default());
    let m = modes.clone();
    let task = tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            let m = m.clone();
            tokio::spawn(async move {
                if let Ok(s) = tokio::net::TcpStream::connect(upstream).await {
                    pipe(c, s, m).await;
                }
            });
        }
    });
    (Proxy { modes, task }, addr)
}

async fn pipe<C, S>(client: C, server: S, modes: Arc<Modes>)
where
    C: AsyncRead + AsyncWrite + Send + 'static,
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut sr, mut sw) = tokio::io::split(server);
    // Whether the request now under way on this connection is a download to trickle.
    let slow = Arc::new(AtomicBool::new(false));
    let (m, s) = (modes.clone(), slow.clone());
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            wait_while_hung(&m).await;
            if let Some(line) = buf[..n].split(|b| *b == b'\n').next() {
                let line = String::from_utf8_lossy(line);
                if line.starts_with("GET ") || line.starts_with("HEAD ") {
                    s.store(
                        m.trickle.load(Ordering::SeqCst)
                            && line.starts_with("GET ")
                            && (line.contains("/manifests/") || line.contains("/blobs/")),
                        Ordering::SeqCst,
                    );
                }
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent_of_answer = 0usize;
    loop {
        let n = match sr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        wait_while_hung(&modes).await;
        let mut chunk = &buf[..n];
        if slow.load(Ordering::SeqCst) {
            while !chunk.is_empty() {
                let take = if sent_of_answer < TRICKLE_HEAD {
                    (TRICKLE_HEAD - sent_of_answer).min(chunk.len())
                } else {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    TRICKLE.min(chunk.len())
                };
                if cw.write_all(&chunk[..take]).await.is_err() || cw.flush().await.is_err() {
                    up.abort();
                    return;
                }
                sent_of_answer += take;
                chunk = &chunk[take..];
            }
        } else {
            sent_of_answer = 0;
            if cw.write_all(chunk).await.is_err() {
                break;
            }
        }
    }
    let _ = cw.shutdown().await;
    up.abort();
}

async fn wait_while_hung(m: &Modes) {
    while m.hang.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
