//! The etcd v3 client the fleet uses: connection options (endpoints, TLS,
//! auth), a timeout on every call, errors mapped to [`FleetError`] ("not
//! reachable" apart from "refused"), and a request counter (the benchmark's
//! "etcd requests per host per minute").

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, DeleteOptions, DeleteResponse, GetOptions, GetResponse,
    Identity, LeaseKeepAliveStream, LeaseKeeper, PutOptions, TlsOptions, Txn, TxnResponse,
    WatchOptions, WatchStream,
};

use super::FleetError;

/// How to reach the group's etcd: what `[fleet]` and `gpu-fleet`'s options say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// `http://` or `https://` client URLs of the members.
    pub endpoints: Vec<String>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// The limit on each request (a watch: on its creation).
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
}

impl EtcdOptions {
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdOptions {
            endpoints,
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password_file: None,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
        }
    }
}

/// A connected client (cheap to clone; clones share the connections and the
/// counter). It keeps one connection per member and sends each request to the
/// member that last answered, moving on to the next when one does not answer,
/// so a dead member costs one refused connection, not a stuck group.
#[derive(Clone)]
pub struct Etcd {
    members: Arc<Vec<Member>>,
    current: Arc<AtomicUsize>,
    options: Option<ConnectOptions>,
    endpoints: String,
    timeout: Duration,
    requests: Arc<AtomicU64>,
}

struct Member {
    endpoint: String,
    client: tokio::sync::Mutex<Option<Client>>,
}

fn read(path: &PathBuf) -> Result<Vec<u8>, FleetError> {
    std::fs::read(path).map_err(|source| FleetError::File {
        path: path.clone(),
        source,
    })
}

impl Etcd {
    /// Connects to the members (lazily: a member that is down now is tried
    /// again when its turn comes). Fails on bad options, files that do not
    /// read, or a member that refuses the TLS or the credentials; never only
    /// because etcd is not reachable now.
    pub async fn connect(opts: &EtcdOptions) -> Result<Etcd, FleetError> {
        crate::init_tls();
        let endpoints = opts.endpoints.join(",");
        if opts.endpoints.is_empty() {
            return Err(FleetError::Invalid("no etcd endpoint given".into()));
        }
        let mut co = ConnectOptions::new()
            .with_timeout(opts.request_timeout)
            .with_connect_timeout(opts.connect_timeout)
            .with_keep_alive(Duration::from_secs(30), Duration::from_secs(10))
            .with_require_leader(true);
        if opts.ca_file.is_some() || opts.cert_file.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &opts.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            match (&opts.cert_file, &opts.key_file) {
                (Some(c), Some(k)) => tls = tls.identity(Identity::from_pem(read(c)?, read(k)?)),
                (None, None) => {}
                _ => {
                    return Err(FleetError::Invalid(
                        "a client certificate needs both cert_file and key_file".into(),
                    ))
                }
            }
            co = co.with_tls(tls);
        }
        if let Some(user) = &opts.username {
            let path = opts.password_file.as_ref().ok_or_else(|| {
                FleetError::Invalid(format!("etcd user {user:?} needs a password_file"))
            })?;
            let pw = String::from_utf8_lossy(&read(path)?).trim_end().to_string();
            // etcd's simple tokens expire (5 min idle by default): refresh them.
            co = co.with_user(user.clone(), pw).with_auto_token_refresh(true);
        }
        let etcd = Etcd {
            members: Arc::new(
                opts.endpoints
                    .iter()
                    .map(|e| Member {
                        endpoint: e.clone(),
                        client: tokio::sync::Mutex::new(None),
                    })
                    .collect(),
            ),
            // Hosts start on a random member, so a fleet spreads its connections.
            current: Arc::new(AtomicUsize::new(rand::random_range(
                0..opts.endpoints.len(),
            ))),
            options: Some(co),
            endpoints,
            timeout: opts.request_timeout,
            requests: Arc::new(AtomicU64::new(0)),
        };
        // Connect one member now, so bad TLS or auth shows at once; when none
        // answers now, each request tries again (and says so) later.
        for _ in 0..etcd.members.len() {
            let i = etcd.current.load(Ordering::Relaxed);
            match etcd.client(i).await {
                Ok(_) => break,
                Err(e) if e.is_unreachable() => etcd.failed(i),
                Err(e) => return Err(e),
            }
        }
        Ok(etcd)
    }

    /// Member `i`'s client, connecting it if needed.
    async fn client(&self, i: usize) -> Result<Client, FleetError> {
        let m = &self.members[i];
        let mut slot = m.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = tokio::time::timeout(
            self.timeout + Duration::from_secs(1),
            Client::connect([m.endpoint.as_str()], self.options.clone()),
        )
        .await
        .map_err(|_| FleetError::Unreachable {
            endpoints: m.endpoint.clone(),
            message: "no answer in time".into(),
        })?
        .map_err(|e| map_err(&m.endpoint, e))?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Moves on from member `i` (if no one else did already).
    fn failed(&self, i: usize) {
        let next = (i + 1) % self.members.len();
        let _ = self
            .current
            .compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Moves on to the next member (a watch or keep-alive stream broke).
    pub fn rotate(&self) {
        self.failed(self.current.load(Ordering::Relaxed));
    }

    /// The same connections with their own request counter (the simulation
    /// gives each simulated host one).
    pub fn with_counter(&self, requests: Arc<AtomicU64>) -> Etcd {
        Etcd {
            requests,
            ..self.clone()
        }
    }

    /// Requests sent so far through this handle (and its clones).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Counts a request sent on a stream (a lease keep-alive, a watch added).
    pub fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// Runs `f` on the current member, then on the next ones while they do
    /// not answer; each try has the request timeout.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, FleetError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut last = None;
        for _ in 0..self.members.len() {
            let i = self.current.load(Ordering::Relaxed);
            self.count();
            let r = match self.client(i).await {
                Ok(c) => match tokio::time::timeout(self.timeout, f(c)).await {
                    Ok(r) => r.map_err(|e| map_err(&self.members[i].endpoint, e)),
                    Err(_) => Err(FleetError::Unreachable {
                        endpoints: self.members[i].endpoint.clone(),
                        message: format!("no answer within {:?}", self.timeout),
                    }),
                },
                Err(e) => Err(e),
            };
            match r {
                Err(e) if e.is_unreachable() => {
                    self.failed(i);
                    last = Some(e);
                }
                r => return r,
            }
        }
        Err(match last {
            Some(FleetError::Unreachable { message, .. }) => FleetError::Unreachable {
                endpoints: self.endpoints.clone(),
                message,
            },
            Some(e) => e,
            None => FleetError::Invalid("no etcd endpoint given".into()),
        })
    }

    pub async fn get(
        &self,
        key: impl Into<Vec<u8>>,
        opts: Option<GetOptions>,
    ) -> Result<GetResponse, FleetError> {
        let key = key.into();
        self.call(|mut c| {
            let (k, o) = (key.clone(), opts.clone());
            async move { c.get(k, o).await }
        })
        .await
    }

    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        opts: Option<PutOptions>,
    ) -> Result<(), FleetError> {
        let (key, value) = (key.into(), value.into());
        self.call(|mut c| {
            let (k, v, o) = (key.clone(), value.clone(), opts.clone());
            async move { c.put(k, v, o).await }
        })
        .await
        .map(|_| ())
    }

    pub async fn delete(
        &self,
        key: impl Into<Vec<u8>>,
        opts: Option<DeleteOptions>,
    ) -> Result<DeleteResponse, FleetError> {
        let key = key.into();
        self.call(|mut c| {
            let (k, o) = (key.clone(), opts.clone());
            async move { c.delete(k, o).await }
        })
        .await
    }

    /// A transaction; retried on another member only when the first did not
    /// answer (every transaction here is safe to repeat: a create compares
    /// `create_revision == 0`, a rewrite compares the revision it read).
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, FleetError> {
        self.call(|mut c| {
            let t = txn.clone();
            async move { c.txn(t).await }
        })
        .await
    }

    /// Opens a watch (the events then come on the stream without requests).
    pub async fn watch(
        &self,
        key: impl Into<Vec<u8>>,
        opts: Option<WatchOptions>,
    ) -> Result<WatchStream, FleetError> {
        let key = key.into();
        self.call(|mut c| {
            let (k, o) = (key.clone(), opts.clone());
            async move { c.watch(k, o).await }
        })
        .await
    }

    /// Grants a lease of `ttl` seconds; returns its id.
    pub async fn lease_grant(&self, ttl: i64) -> Result<i64, FleetError> {
        self.call(|mut c| async move { c.lease_grant(ttl, None).await })
            .await
            .map(|r| r.id())
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<(), FleetError> {
        self.call(|mut c| async move { c.lease_revoke(id).await })
            .await
            .map(|_| ())
    }

    pub async fn keep_alive(
        &self,
        id: i64,
    ) -> Result<(LeaseKeeper, LeaseKeepAliveStream), FleetError> {
        self.call(|mut c| async move { c.lease_keep_alive(id).await })
            .await
    }

    /// Sends one keep-alive and waits for its answer; `Ok(false)` when the
    /// lease is gone (expired while etcd was away).
    pub async fn keep_alive_once(
        &self,
        keeper: &mut LeaseKeeper,
        stream: &mut LeaseKeepAliveStream,
    ) -> Result<bool, FleetError> {
        self.count();
        let fut = async {
            keeper.keep_alive().await?;
            stream.message().await
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(Some(r))) => Ok(r.ttl() > 0),
            Ok(Ok(None)) => Err(FleetError::Unreachable {
                endpoints: self.endpoints.clone(),
                message: "keep-alive stream closed".into(),
            }),
            Ok(Err(e)) => Err(map_err(&self.endpoints, e)),
            Err(_) => Err(FleetError::Unreachable {
                endpoints: self.endpoints.clone(),
                message: format!("no keep-alive answer within {:?}", self.timeout),
            }),
        }
    }
}

fn map_err(endpoints: &str, e: etcd_client::Error) -> FleetError {
    use etcd_client::Error as E;
    let unreachable = match &e {
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) => true,
        E::GRpcStatus(s) => {
            // gRPC codes: 1 cancelled, 4 deadline exceeded, 14 unavailable.
            let code: i32 = s.code().into();
            matches!(code, 1 | 4 | 14) || s.message().contains("no leader")
        }
        _ => false,
    };
    if unreachable {
        FleetError::Unreachable {
            endpoints: endpoints.to_string(),
            message: crate::error_chain(&e),
        }
    } else {
        FleetError::Etcd(crate::error_chain(&e))
    }
}

impl From<&crate::config::FleetSettings> for EtcdOptions {
    fn from(f: &crate::config::FleetSettings) -> Self {
        EtcdOptions {
            endpoints: f
                .etcd
                .iter()
                .map(|u| u.as_str().trim_end_matches('/').to_string())
                .collect(),
            ca_file: f.ca_file.clone(),
            cert_file: f.cert_file.clone(),
            key_file: f.key_file.clone(),
            username: f.username.clone(),
            password_file: f.password_file.clone(),
            ..EtcdOptions::new(Vec::new())
        }
    }
}
