//! Validated, typed settings: what the rest of the agent reads.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::fragments::{Fragment, GpusFragment, VerifyFragment};
use super::{ConfigError, Origin};
use crate::registry::{ImageName, Policy};

#[derive(Debug, Clone)]
pub struct Settings {
    pub agent: AgentSettings,
    pub docker: DockerSettings,
    pub image: ImageSettings,
    pub worker: WorkerSettings,
    pub gpu: GpuSettings,
    pub hub: Option<HubSettings>,
    /// `[[notify]]` webhooks, in config order.
    pub notify: Vec<super::NotifySettings>,
    /// `[fleet]`: absent, the host decides alone.
    pub fleet: Option<FleetSettings>,
}

#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub id: String,
    pub state_dir: PathBuf,
    pub control_socket: PathBuf,
    pub metrics_listen: Option<SocketAddr>,
    /// How long after SIGTERM an update may go on verifying a worker it has
    /// started before the agent exits (the journal resumes it at the next
    /// start). systemd's TimeoutStopSec must exceed this plus `worker.stop_timeout`.
    pub stop_budget: Duration,
    /// Extra CA certificates (PEM) that the registry and hub clients trust
    /// beside the system's roots; checked when the config loads.
    pub ca_file: Option<PathBuf>,
    /// The history is rotated (to `history.jsonl.1`) past this many bytes.
    pub history_max: u64,
}

#[derive(Debug, Clone)]
pub struct DockerSettings {
    /// `unix:///path`, `tcp://host:port` or `http://host:port`.
    pub host: String,
}

#[derive(Debug, Clone)]
pub struct ImageSettings {
    pub name: ImageName,
    pub policy: Policy,
    pub poll_interval: Duration,
    pub poll_jitter: Duration,
    /// The longest a pull may take, however it progresses.
    pub pull_timeout: Duration,
    pub auth_file: Option<PathBuf>,
    pub insecure: bool,
    /// Rollbacks of one digest that blamed nothing (an engine or a hub that
    /// timed out, a worker that could not be verified) before it is marked
    /// bad; between them the digest is tried again after a back-off.
    pub max_attempts: u32,
    /// `[image.verify]`; `None`: every digest of the repository may be deployed.
    pub verify: Option<VerifySettings>,
}

/// `[image.verify]`, checked when the config loads (the key files read and parsed).
#[derive(Debug, Clone)]
pub struct VerifySettings {
    /// A digest must carry a valid cosign signature by one of these; `None`: no
    /// signature required (only `min_age` was set).
    pub cosign_keys: Option<crate::trust::CosignKeys>,
    /// A digest younger than this is not deployed yet.
    pub min_age: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gpus {
    None,
    All,
    Count(u32),
    Uuids(Vec<String>),
}

/// How the GPUs reach the worker: the NVIDIA device driver of the engine
/// (`docker run --gpus`), or CDI device names (`nvidia.com/gpu=…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpusVia {
    Docker,
    Cdi,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub host_ip: Option<String>,
    pub host_port: Option<u16>,
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDrainTimeout {
    /// Keep the old worker and retry later.
    Abort,
    /// Go on with the swap.
    Proceed,
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub name: String,
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    /// `src:dst[:opts]`, as `docker run -v`.
    pub volumes: Vec<String>,
    pub ports: Vec<PortMapping>,
    pub network: String,
    pub shm_size: Option<u64>,
    /// `no`, `always`, `unless-stopped`, `on-failure` (with optional max retries).
    pub restart: String,
    pub restart_max_retries: Option<u32>,
    pub gpus: Gpus,
    pub gpus_via: GpusVia,
    pub stop_timeout: Duration,
    pub health: HealthSettings,
    pub drain: DrainSettings,
}

#[derive(Debug, Clone)]
pub struct HealthSettings {
    pub http: Option<Url>,
    pub timeout: Duration,
    pub stable_for: Duration,
}

#[derive(Debug, Clone)]
pub struct DrainSettings {
    pub http: Option<Url>,
    pub timeout: Duration,
    pub on_timeout: OnDrainTimeout,
}

#[derive(Debug, Clone)]
pub struct GpuSettings {
    pub check: bool,
    pub expected_count: Option<u32>,
    pub max_temperature_c: u32,
    /// Drain the worker when a hardware-class XID shows a GPU fault.
    pub drain_on_fault: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSettings {
    pub url: Url,
    pub token_file: Option<PathBuf>,
    pub desired_from_hub: bool,
    pub verify_registration: bool,
    pub registration_timeout: Duration,
    /// Plain http to a hub that is not on loopback (refused otherwise).
    pub insecure: bool,
    /// Swaps to digests the hub names (desired or in a nudge) that may start
    /// in any hour; more wait, so a hub that flips between digests cannot
    /// cost a swap a minute.
    pub max_swaps_per_hour: u32,
}

impl Settings {
    /// What `check-config` points out about trust: plain http allowed by
    /// `insecure = true`, and images deployed without signature checks.
    pub fn security_notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.image.insecure && !self.image.name.is_docker_hub() {
            let url = format!("{}/v2/", self.image.name.api_base(true));
            let loopback = Url::parse(&url).is_ok_and(|u| is_loopback(&u));
            if !loopback {
                notes.push(format!(
                    "registry {url} is used over plain http (image.insecure = true): anyone on \
                     the path can change which digest a tag names"
                ));
            }
        }
        if let Some(hub) = &self.hub {
            if hub.url.scheme() == "http" && !is_loopback(&hub.url) {
                notes.push(format!(
                    "hub {} is used over plain http (hub.insecure = true): anyone on the path \
                     can change the answers and see the token",
                    hub.url
                ));
            }
        }
        match self
            .image
            .verify
            .as_ref()
            .and_then(|v| v.cosign_keys.as_ref())
        {
            None => notes.push(
                "image signatures are not checked: anyone who can push to the repository \
                 decides what this host runs (set image.verify.cosign_public_keys)"
                    .into(),
            ),
            Some(keys) => notes.push(format!(
                "a digest must carry a cosign signature by one of: {}",
                keys.paths()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
        notes
    }
}

/// `[fleet]`: how the host reaches its group's etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSettings {
    /// Client URLs of the etcd members (`http://` only on loopback or with `insecure`).
    pub etcd: Vec<Url>,
    /// Hosts that share one rollout policy (default: from `image.repository`).
    pub group: String,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub insecure: bool,
}

/// Environment variables the agent sets in the worker itself.
pub const RESERVED_ENV: [&str; 2] = ["GPU_AGENT_ID", "GPU_AGENT_DIGEST"];

pub(super) fn validate(f: Fragment, o: &Origin) -> Result<Settings, ConfigError> {
    let agent = f.agent.unwrap_or_default();
    let id = match agent.id {
        Some(id) => id,
        None => host_name().ok_or_else(|| o.missing("agent.id"))?,
    };
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(o.invalid(
            "agent.id",
            format!("{id:?} may hold only letters, digits, '-', '_' and '.'"),
        ));
    }
    let metrics_listen = agent
        .metrics_listen
        .map(|s| {
            s.parse::<SocketAddr>().map_err(|e| {
                o.invalid(
                    "agent.metrics_listen",
                    format!("{s:?} is not an address:port ({e}); write e.g. \"127.0.0.1:9464\""),
                )
            })
        })
        .transpose()?;
    let agent = AgentSettings {
        id,
        state_dir: PathBuf::from(
            agent
                .state_dir
                .unwrap_or_else(|| "/var/lib/gpu-agent".into()),
        ),
        control_socket: PathBuf::from(
            agent
                .control_socket
                .unwrap_or_else(|| super::DEFAULT_CONTROL_SOCKET.into()),
        ),
        metrics_listen,
        stop_budget: agent.stop_budget.map_or(Duration::from_secs(60), |d| d.0),
        ca_file: agent.ca_file.map(PathBuf::from),
        history_max: agent
            .history_max
            .map_or(crate::update::journal::DEFAULT_HISTORY_MAX, |b| b.0),
    };
    if agent.history_max < 64 * 1024 {
        return Err(o.invalid(
            "agent.history_max",
            "must be at least 64k (the history keeps this much, and as much again in history.jsonl.1)",
        ));
    }
    absolute(&agent.state_dir, "agent.state_dir", o)?;
    if let Some(p) = &agent.ca_file {
        absolute(p, "agent.ca_file", o)?;
        read_ca_file(p).map_err(|why| o.invalid("agent.ca_file", why))?;
    }
    absolute(&agent.control_socket, "agent.control_socket", o)?;

    let docker_host = f
        .docker
        .and_then(|d| d.host)
        .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    if !["unix://", "tcp://", "http://"]
        .iter()
        .any(|p| docker_host.starts_with(p))
    {
        return Err(o.invalid(
            "docker.host",
            format!("{docker_host:?}: use unix:///path/to/docker.sock or tcp://host:port"),
        ));
    }

    let image = f.image.ok_or_else(|| o.missing("image.repository"))?;
    let repo = image
        .repository
        .ok_or_else(|| o.missing("image.repository"))?;
    let name = ImageName::parse(&repo).map_err(|e| o.invalid("image.repository", e.to_string()))?;
    let policy = match (image.tag, image.version) {
        (Some(_), Some(_)) => {
            return Err(o.invalid(
                "image.version",
                "`image.tag` and `image.version` exclude each other: keep one",
            ))
        }
        (Some(tag), None) => {
            if !valid_tag(&tag) {
                return Err(o.invalid(
                    "image.tag",
                    format!(
                        "{tag:?} is not a valid tag (letters, digits, '_', '.', '-'; at most 128)"
                    ),
                ));
            }
            Policy::Tag(tag)
        }
        (None, Some(v)) => Policy::Version(semver::VersionReq::parse(&v).map_err(|e| {
            o.invalid(
                "image.version",
                format!("{v:?} is not a semver range ({e}); write e.g. \"^2.3\""),
            )
        })?),
        (None, None) => Policy::Tag("latest".into()),
    };
    let poll_interval = image
        .poll_interval
        .map_or(Duration::from_secs(300), |d| d.0);
    if poll_interval < Duration::from_secs(1) {
        return Err(o.invalid("image.poll_interval", "must be at least 1s"));
    }
    let max_attempts = image.max_attempts.unwrap_or(5);
    if max_attempts == 0 {
        return Err(o.invalid(
            "image.max_attempts",
            "must be at least 1 (the attempts before a digest whose rollbacks blamed nothing is marked bad)",
        ));
    }
    let verify = image.verify.map(|v| validate_verify(v, o)).transpose()?;
    let image = ImageSettings {
        name,
        policy,
        max_attempts,
        poll_interval,
        poll_jitter: image.poll_jitter.map_or(Duration::from_secs(30), |d| d.0),
        pull_timeout: image
            .pull_timeout
            .map_or(Duration::from_secs(30 * 60), |d| d.0),
        auth_file: image.auth_file.map(PathBuf::from),
        insecure: image.insecure.unwrap_or(false),
        verify,
    };

    if image.pull_timeout < Duration::from_secs(1) {
        return Err(o.invalid(
            "image.pull_timeout",
            "must be at least 1s (a pull that takes longer is abandoned and the old worker kept)",
        ));
    }

    let w = f.worker.unwrap_or_default();
    let name = w.name.unwrap_or_else(|| "gpu-worker".into());
    if !valid_container_name(&name) {
        return Err(o.invalid(
            "worker.name",
            format!("{name:?} is not a valid container name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"),
        ));
    }
    if let Some(cmd) = &w.command {
        if cmd.is_empty() {
            return Err(o.invalid(
                "worker.command",
                "is empty: leave it out to use the image's command",
            ));
        }
    }
    let env = w.env.unwrap_or_default();
    for k in env.keys() {
        if RESERVED_ENV.contains(&k.as_str()) {
            return Err(o.invalid(
                &format!("worker.env.{k}"),
                "is set by the agent itself: remove it",
            ));
        }
        if k.is_empty() || k.contains('=') {
            return Err(o.invalid("worker.env", format!("{k:?} is not a variable name")));
        }
    }
    let volumes = w.volumes.unwrap_or_default();
    for v in &volumes {
        let parts: Vec<&str> = v.split(':').collect();
        if parts.len() < 2 || parts.len() > 3 || parts[0].is_empty() || !parts[1].starts_with('/') {
            return Err(o.invalid(
                "worker.volumes",
                format!("{v:?}: write \"/host/path:/container/path[:ro]\" or \"volume:/container/path\""),
            ));
        }
    }
    let ports = w
        .ports
        .unwrap_or_default()
        .iter()
        .map(|p| parse_port(p).map_err(|m| o.invalid("worker.ports", m)))
        .collect::<Result<Vec<_>, _>>()?;
    let network = w.network.unwrap_or_else(|| "bridge".into());
    if network.is_empty() {
        return Err(o.invalid("worker.network", "is empty"));
    }
    let restart_raw = w.restart.unwrap_or_else(|| "unless-stopped".into());
    let (restart, restart_max_retries) = parse_restart(&restart_raw).ok_or_else(|| {
        o.invalid(
            "worker.restart",
            format!(
                "{restart_raw:?}: use \"no\", \"always\", \"unless-stopped\" or \"on-failure[:N]\""
            ),
        )
    })?;
    let gpus = match w.gpus {
        None => Gpus::All,
        Some(GpusFragment::Word(s)) if s == "all" => Gpus::All,
        Some(GpusFragment::Word(s)) if s == "none" => Gpus::None,
        Some(GpusFragment::Word(s)) => {
            return Err(o.invalid(
                "worker.gpus",
                format!("{s:?}: use \"all\", \"none\", a count, or a list of GPU UUIDs"),
            ))
        }
        Some(GpusFragment::Count(n)) if n >= 1 && n <= i64::from(u16::MAX) => Gpus::Count(n as u32),
        Some(GpusFragment::Count(n)) => {
            return Err(o.invalid(
                "worker.gpus",
                format!("{n} GPUs: a count must be 1 or more (use \"none\" for none)"),
            ))
        }
        Some(GpusFragment::List(l)) => {
            if l.is_empty() || l.iter().any(|u| u.trim().is_empty() || u.contains(',')) {
                return Err(o.invalid(
                    "worker.gpus",
                    "a list must hold one or more GPU UUIDs (or indexes), one per item",
                ));
            }
            Gpus::Uuids(l)
        }
    };
    let gpus_via = match w.gpus_via.as_deref() {
        None | Some("docker") => GpusVia::Docker,
        Some("cdi") => GpusVia::Cdi,
        Some(other) => {
            return Err(o.invalid(
                "worker.gpus_via",
                format!("{other:?}: use \"docker\" (the NVIDIA device driver, like docker run --gpus) or \"cdi\" (CDI devices nvidia.com/gpu=…)"),
            ))
        }
    };
    let stop_timeout = w.stop_timeout.map_or(Duration::from_secs(30), |d| d.0);
    let h = w.health.unwrap_or_default();
    let health = HealthSettings {
        http: h
            .http
            .map(|u| http_url(&u, "worker.health.http", o))
            .transpose()?,
        timeout: h.timeout.map_or(Duration::from_secs(120), |d| d.0),
        stable_for: h.stable_for.map_or(Duration::from_secs(10), |d| d.0),
    };
    if health.timeout.is_zero() {
        return Err(o.invalid("worker.health.timeout", "must be above zero"));
    }
    let d = w.drain.unwrap_or_default();
    let drain = DrainSettings {
        http: d
            .http
            .map(|u| http_url(&u, "worker.drain.http", o))
            .transpose()?,
        timeout: d.timeout.map_or(Duration::from_secs(30 * 60), |d| d.0),
        on_timeout: match d.on_timeout.as_deref() {
            None | Some("abort") => OnDrainTimeout::Abort,
            Some("proceed") => OnDrainTimeout::Proceed,
            Some(other) => {
                return Err(o.invalid(
                    "worker.drain.on_timeout",
                    format!("{other:?}: use \"abort\" or \"proceed\""),
                ))
            }
        },
    };
    let worker = WorkerSettings {
        name,
        command: w.command,
        env,
        volumes,
        ports,
        network,
        shm_size: w.shm_size.map(|s| s.0),
        restart,
        restart_max_retries,
        gpus,
        gpus_via,
        stop_timeout,
        health,
        drain,
    };

    let g = f.gpu.unwrap_or_default();
    let gpu = GpuSettings {
        check: g.check.unwrap_or(worker.gpus != Gpus::None),
        expected_count: g.expected_count,
        max_temperature_c: g.max_temperature_c.unwrap_or(90),
        drain_on_fault: g.drain_on_fault.unwrap_or(true),
    };

    let hub = match f.hub {
        None => None,
        Some(h) => {
            let url = h.url.ok_or_else(|| o.missing("hub.url"))?;
            let url = http_url(&url, "hub.url", o)?;
            let insecure = h.insecure.unwrap_or(false);
            check_plain_http(url.as_str(), insecure).map_err(|why| o.invalid("hub.url", why))?;
            Some(HubSettings {
                url,
                insecure,
                token_file: h.token_file.map(PathBuf::from),
                desired_from_hub: h.desired_from_hub.unwrap_or(false),
                verify_registration: h.verify_registration.unwrap_or(false),
                registration_timeout: h
                    .registration_timeout
                    .map_or(Duration::from_secs(60), |d| d.0),
                max_swaps_per_hour: match h.max_swaps_per_hour.unwrap_or(6) {
                    0 => {
                        return Err(o.invalid(
                            "hub.max_swaps_per_hour",
                            "must be at least 1 (swaps to digests the hub names, per hour)",
                        ))
                    }
                    n => n,
                },
            })
        }
    };

    let fleet = match f.fleet {
        None => None,
        Some(fl) => Some(validate_fleet(
            fl,
            &format!("{}/{}", image.name.registry, image.name.repository),
            o,
        )?),
    };

    Ok(Settings {
        agent,
        docker: DockerSettings { host: docker_host },
        image,
        worker,
        gpu,
        hub,
        notify: super::notify::validate(f.notify, o)?,
        fleet,
    })
}

fn validate_fleet(
    fl: super::fragments::FleetFragment,
    repository: &str,
    o: &Origin,
) -> Result<FleetSettings, ConfigError> {
    let insecure = fl.insecure.unwrap_or(false);
    let endpoints = fl.etcd.ok_or_else(|| o.missing("fleet.etcd"))?;
    if endpoints.is_empty() {
        return Err(o.invalid(
            "fleet.etcd",
            "name at least one etcd member, e.g. [\"https://etcd-1:2379\"]",
        ));
    }
    let mut etcd = Vec::with_capacity(endpoints.len());
    for e in &endpoints {
        let u = http_url(e, "fleet.etcd", o)?;
        let loopback = match u.host() {
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv4(a)) => a.is_loopback(),
            Some(url::Host::Ipv6(a)) => a.is_loopback(),
            None => false,
        };
        if u.scheme() == "http" && !loopback && !insecure {
            return Err(o.invalid(
                "fleet.etcd",
                format!("{e:?}: plain http to etcd is refused off loopback; use https (with fleet.ca_file) or set fleet.insecure = true"),
            ));
        }
        etcd.push(u);
    }
    let group = match fl.group {
        Some(g) => g,
        None => crate::fleet::keys::group_for_repository(repository),
    };
    if !crate::fleet::keys::valid_group(&group) {
        return Err(o.invalid(
            "fleet.group",
            format!("{group:?} may hold only letters, digits, '-', '_' and '.' (at most 128)"),
        ));
    }
    let files = [
        ("fleet.ca_file", fl.ca_file.map(PathBuf::from)),
        ("fleet.cert_file", fl.cert_file.map(PathBuf::from)),
        ("fleet.key_file", fl.key_file.map(PathBuf::from)),
        ("fleet.password_file", fl.password_file.map(PathBuf::from)),
    ];
    for (key, p) in &files {
        if let Some(p) = p {
            absolute(p, key, o)?;
            std::fs::metadata(p).map_err(|e| o.invalid(key, format!("{}: {e}", p.display())))?;
        }
    }
    if files[1].1.is_some() != files[2].1.is_some() {
        return Err(o.invalid(
            "fleet.cert_file",
            "a client certificate needs both fleet.cert_file and fleet.key_file",
        ));
    }
    if fl.username.is_some() && files[3].1.is_none() {
        return Err(o.missing("fleet.password_file"));
    }
    if fl.username.is_none() && files[3].1.is_some() {
        return Err(o.invalid("fleet.password_file", "needs fleet.username"));
    }
    let [ca, cert, key, pw] = files.map(|(_, p)| p);
    Ok(FleetSettings {
        etcd,
        group,
        ca_file: ca,
        cert_file: cert,
        key_file: key,
        username: fl.username,
        password_file: pw,
        insecure,
    })
}

fn validate_verify(v: VerifyFragment, o: &Origin) -> Result<VerifySettings, ConfigError> {
    const KEYS: &str = "image.verify.cosign_public_keys";
    let cosign_keys = match v.cosign_public_keys {
        None => None,
        Some(paths) => {
            let paths: Vec<PathBuf> = paths.into_iter().map(PathBuf::from).collect();
            for p in &paths {
                absolute(p, KEYS, o)?;
            }
            Some(
                crate::trust::CosignKeys::load(&paths)
                    .map_err(|e| o.invalid(KEYS, e.to_string()))?,
            )
        }
    };
    let min_age = v.min_age.map(|d| d.0);
    if cosign_keys.is_none() && min_age.is_none() {
        return Err(o.invalid(
            "image.verify",
            "is empty: set cosign_public_keys, min_age or both (or remove the table)",
        ));
    }
    Ok(VerifySettings {
        cosign_keys,
        min_age,
    })
}

/// Whether `url` may be used: `https`, or `http` to a loopback address
/// (`localhost`, 127.0.0.0/8, `::1`), or `http` anywhere when its table says
/// `insecure = true`. `Err` says why not and what to do. For the hub, the
/// registry and etcd alike.
pub fn check_plain_http(url: &str, insecure: bool) -> Result<(), String> {
    let u = Url::parse(url).map_err(|e| format!("{url:?} is not a URL ({e})"))?;
    match u.scheme() {
        "https" | "unix" => return Ok(()),
        "http" => {}
        other => return Err(format!("{url}: scheme {other:?} is neither https nor http")),
    }
    if insecure || is_loopback(&u) {
        return Ok(());
    }
    Err(format!(
        "{url}: plain http to a host that is not loopback is refused (anyone on the path \
         could change the answers); use https, or set `insecure = true` in this table to \
         accept the risk"
    ))
}

/// Whether the URL's host is a loopback name or address.
pub fn is_loopback(u: &Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The certificates of a PEM bundle (`agent.ca_file`). `Err` says what is
/// wrong with the file, for the config error.
pub fn read_ca_file(p: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{} is not a PEM certificate bundle: {e}", p.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)",
            p.display()
        ));
    }
    Ok(certs)
}

fn absolute(p: &std::path::Path, key: &str, o: &Origin) -> Result<(), ConfigError> {
    if p.is_absolute() {
        Ok(())
    } else {
        Err(o.invalid(key, format!("{} must be an absolute path", p.display())))
    }
}

fn http_url(s: &str, key: &str, o: &Origin) -> Result<Url, ConfigError> {
    let u = Url::parse(s).map_err(|e| o.invalid(key, format!("{s:?} is not a URL ({e})")))?;
    if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
        return Err(o.invalid(key, format!("{s:?}: use an http:// or https:// URL")));
    }
    Ok(u)
}

/// The OCI tag grammar: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}` (also `agentctl pin`'s).
pub(crate) fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn valid_container_name(n: &str) -> bool {
    n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn parse_restart(s: &str) -> Option<(String, Option<u32>)> {
    match s {
        "no" | "always" | "unless-stopped" | "on-failure" => Some((s.to_string(), None)),
        _ => {
            let n = s.strip_prefix("on-failure:")?.parse().ok()?;
            Some(("on-failure".into(), Some(n)))
        }
    }
}

/// `[ip:]host_port:container_port[/proto]` or `container_port[/proto]`.
pub fn parse_port(s: &str) -> Result<PortMapping, String> {
    let bad = || {
        format!(
            "{s:?}: write \"[ip:]host_port:container_port[/tcp|/udp]\", e.g. \"127.0.0.1:8080:8080\""
        )
    };
    let (rest, protocol) = match s.rsplit_once('/') {
        Some((r, p)) if p == "tcp" || p == "udp" => (r, p.to_string()),
        Some(_) => return Err(bad()),
        None => (s, "tcp".to_string()),
    };
    let port = |p: &str| p.parse::<u16>().ok().filter(|&n| n > 0);
    // An IPv6 host address is written in brackets: "[::1]:8080:80".
    let (host_ip, rest) = if let Some(r) = rest.strip_prefix('[') {
        let (ip, r) = r.split_once("]:").ok_or_else(bad)?;
        (Some(ip.to_string()), r)
    } else {
        (None, rest)
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (host_ip, host_port, container) = match (host_ip, parts.as_slice()) {
        (None, [c]) => (None, None, *c),
        (None, [h, c]) => (None, Some(port(h).ok_or_else(bad)?), *c),
        (None, [ip, h, c]) => (
            Some(ip.to_string()),
            if h.is_empty() {
                None
            } else {
                Some(port(h).ok_or_else(bad)?)
            },
            *c,
        ),
        (Some(ip), [h, c]) => (Some(ip), Some(port(h).ok_or_else(bad)?), *c),
        _ => return Err(bad()),
    };
    if let Some(ip) = &host_ip {
        ip.parse::<std::net::IpAddr>().map_err(|_| bad())?;
    }
    Ok(PortMapping {
        host_ip,
        host_port,
        container_port: port(container).ok_or_else(bad)?,
        protocol,
    })
}
