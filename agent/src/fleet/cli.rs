//! `gpu-fleet`: drives a fleet group from anywhere that reaches its etcd (an
//! operator's shell, a CI pipeline). The binary only parses arguments and
//! calls [`run`]; each command is a few calls into [`super::admin`].
//!
//! Exit codes (the SPEC's): 0 done; 1 failed or halted; 2 usage; 3 etcd not
//! reachable; 4 refused.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use etcd_client::{EventType, WatchOptions};
use serde_json::json;

use super::admin::{self, RolloutStatus};
use super::keys::{valid_group, Keys};
use super::policy::{parse_percent, MaxUnavailable, Policy};
use super::{Etcd, EtcdOptions, FleetError, RolloutState};
use crate::registry::{ClientOptions, ImageName, RegistryClient};

/// The exit codes of `gpu-fleet`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    /// The rollout failed or halted (or another failure).
    Failed = 1,
    /// Bad command line or options.
    Usage = 2,
    /// etcd did not answer.
    Unreachable = 3,
    /// Refused in the group's current state.
    Refused = 4,
}

#[derive(Debug, Parser)]
#[command(
    name = "gpu-fleet",
    version,
    about = "Drive the rollouts of a gpu-agent fleet group through etcd",
    long_about = "Drive the rollouts of a gpu-agent fleet group through etcd.\n\n\
Every host of a group runs gpu-agent with the same [fleet] table; gpu-fleet reads \
and changes the group's records in etcd: its rollout policy (how many hosts may be \
down at once, canaries, bake time, when to halt), its rollout (which digest every \
host should run), and its slots. It needs no server of its own: point it at the \
etcd cluster with --etcd (repeatable) and --group, or at an agent's config with \
--config.\n\n\
Exit codes: 0 done; 1 failed or halted; 2 usage; 3 etcd not reachable; 4 refused.",
    after_help = "Examples:\n  \
gpu-fleet --config /etc/gpu-agent/agent.toml rollout start registry.example.com/ml/worker:2.4.1\n  \
gpu-fleet --etcd https://etcd-1:2379 --group h100 rollout status --wait --timeout 2h\n  \
gpu-fleet --etcd https://etcd-1:2379 --group h100 policy set --max-unavailable 5% --canary 2 --bake 15m"
)]
pub struct Cli {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the group's etcd is, and how to log in.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// An etcd member's client URL (repeat for each member).
    #[arg(
        long = "etcd",
        value_name = "URL",
        global = true,
        env = "GPU_FLEET_ETCD",
        value_delimiter = ','
    )]
    pub etcd: Vec<String>,
    /// The group (default: the config's fleet.group).
    #[arg(long, value_name = "GROUP", global = true, env = "GPU_FLEET_GROUP")]
    pub group: Option<String>,
    /// Read the etcd URLs, TLS, auth and group from an agent's config ([fleet]).
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,
    /// The CA that signs the etcd members' certificates (PEM).
    #[arg(long, value_name = "PATH", global = true)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate for etcd (PEM; with --key-file).
    #[arg(long, value_name = "PATH", global = true)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, value_name = "PATH", global = true)]
    pub key_file: Option<PathBuf>,
    /// An etcd user (with --password-file).
    #[arg(long, value_name = "NAME", global = true)]
    pub username: Option<String>,
    /// A file that holds the etcd user's password.
    #[arg(long, value_name = "PATH", global = true)]
    pub password_file: Option<PathBuf>,
    /// Allow plain http to etcd off loopback.
    #[arg(long, global = true)]
    pub insecure: bool,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show or change the group's rollout policy.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Start, follow, pause, resume or abort the group's rollout.
    #[command(subcommand)]
    Rollout(RolloutCmd),
    /// One line per host: id, digest, phase, GPU health, slot, last event, seen.
    Hosts,
    /// Give back the slot a dead host holds (and a canary seat it never used).
    Release {
        /// The host id (its agent.id).
        host: String,
    },
    /// Print shell completions.
    Completions(crate::cli::docs::CompletionsArgs),
    /// Write man pages into a folder (for packaging).
    #[command(hide = true)]
    Man(crate::cli::docs::ManArgs),
}

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Print the policy (defaults where none was set).
    Show,
    /// Change some fields of the policy; the others keep their value.
    Set(PolicyFlags),
}

#[derive(Debug, Clone, Default, Args)]
pub struct PolicyFlags {
    /// Hosts down at once: a count (2) or a percentage of the live hosts (5%).
    #[arg(long, value_name = "N|P%")]
    pub max_unavailable: Option<String>,
    /// Hosts that try a new digest alone first.
    #[arg(long, value_name = "N")]
    pub canary: Option<u32>,
    /// How long the canaries must stay verified before the rest go (e.g. 10m).
    #[arg(long, value_name = "DURATION")]
    pub bake: Option<String>,
    /// Rolled-back hosts that halt the digest for the group (0: never by count).
    #[arg(long, value_name = "N")]
    pub halt_after: Option<u32>,
    /// Share of the hosts that tried a digest whose rollback halts it (0%: off).
    #[arg(long, value_name = "P%")]
    pub halt_ratio: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCmd {
    /// Make REF the group's desired digest; the policy rolls it out.
    Start {
        /// A digest (sha256:…), repo@sha256:…, repo:tag, or a tag of the
        /// config's image.repository; a tag is resolved once, here.
        #[arg(value_name = "REF")]
        reference: String,
        #[command(flatten)]
        policy: PolicyFlags,
    },
    /// Digest, state, and hosts done / in progress / failed / waiting.
    Status {
        /// Block until the rollout completes (exit 0) or halts or is aborted (exit 1).
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (exit 1), e.g. 2h.
        #[arg(long, value_name = "DURATION", requires = "wait")]
        timeout: Option<String>,
    },
    /// Hold the rollout where it is (hosts in progress finish).
    Pause,
    /// Go on after a pause or a halt.
    Resume,
    /// Send every host that moved back to the previous digest.
    Abort,
}

/// Why a command did not get done.
#[derive(Debug, thiserror::Error)]
enum CmdError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Fleet(#[from] FleetError),
    #[error("{0}")]
    Failed(String),
}

impl CmdError {
    fn exit(&self) -> Exit {
        match self {
            CmdError::Usage(_) => Exit::Usage,
            CmdError::Fleet(FleetError::Unreachable { .. }) => Exit::Unreachable,
            CmdError::Fleet(FleetError::Refused(_)) => Exit::Refused,
            CmdError::Fleet(FleetError::Invalid(_)) => Exit::Usage,
            CmdError::Fleet(_) | CmdError::Failed(_) => Exit::Failed,
        }
    }
}

/// Runs one parsed command line; returns the exit code.
pub fn run(cli: Cli) -> Exit {
    match &cli.command {
        Command::Completions(a) => {
            clap_complete::generate(
                a.shell,
                &mut Cli::command(),
                "gpu-fleet",
                &mut std::io::stdout(),
            );
            return Exit::Ok;
        }
        Command::Man(a) => {
            return match crate::cli::docs::write_man_pages(Cli::command(), &a.out) {
                Ok(_) => Exit::Ok,
                Err(e) => {
                    eprintln!("gpu-fleet: writing man pages into {}: {e}", a.out.display());
                    Exit::Failed
                }
            }
        }
        _ => {}
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gpu-fleet: starting the runtime: {e}");
            return Exit::Failed;
        }
    };
    let json = cli.conn.json;
    match rt.block_on(run_async(cli)) {
        Ok(code) => code,
        Err(e) => {
            if json {
                crate::cli::output::stdout(&format!(
                    "{}",
                    json!({ "error": e.to_string(), "exit": e.exit() as u8 })
                ));
            } else {
                eprintln!("gpu-fleet: {e}");
            }
            e.exit()
        }
    }
}

/// What a command needs: the connection, the group, and the config if one was read.
struct Ctx {
    etcd: Etcd,
    keys: Keys,
    group: String,
    config: Option<crate::config::Settings>,
    json: bool,
}

async fn connect(conn: &ConnArgs) -> Result<Ctx, CmdError> {
    let config = match &conn.config {
        Some(p) => Some(crate::config::load(p).map_err(|e| CmdError::Usage(e.to_string()))?),
        None => None,
    };
    let fleet = config.as_ref().and_then(|c| c.fleet.as_ref());
    if conn.config.is_some() && fleet.is_none() && conn.etcd.is_empty() {
        return Err(CmdError::Usage(format!(
            "{} has no [fleet] table: add one, or give --etcd URL and --group",
            conn.config
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        )));
    }
    let mut opts = fleet
        .map(EtcdOptions::from)
        .unwrap_or_else(|| EtcdOptions::new(Vec::new()));
    if !conn.etcd.is_empty() {
        opts.endpoints = conn
            .etcd
            .iter()
            .map(|u| u.trim_end_matches('/').to_string())
            .collect();
    }
    if opts.endpoints.is_empty() {
        return Err(CmdError::Usage(
            "name the group's etcd with --etcd URL (repeatable) or --config /etc/gpu-agent/agent.toml".into(),
        ));
    }
    let insecure = conn.insecure || fleet.is_some_and(|f| f.insecure);
    for e in &opts.endpoints {
        check_endpoint(e, insecure)?;
    }
    for (dst, src) in [
        (&mut opts.ca_file, &conn.ca_file),
        (&mut opts.cert_file, &conn.cert_file),
        (&mut opts.key_file, &conn.key_file),
        (&mut opts.password_file, &conn.password_file),
    ] {
        if src.is_some() {
            dst.clone_from(src);
        }
    }
    if conn.username.is_some() {
        opts.username.clone_from(&conn.username);
    }
    let group = conn
        .group
        .clone()
        .or_else(|| fleet.map(|f| f.group.clone()))
        .ok_or_else(|| CmdError::Usage("name the group with --group GROUP (or --config)".into()))?;
    if !valid_group(&group) {
        return Err(CmdError::Usage(format!(
            "--group {group:?}: letters, digits, '-', '_' and '.' only"
        )));
    }
    let etcd = Etcd::connect(&opts).await?;
    Ok(Ctx {
        etcd,
        keys: Keys::new(&group),
        group,
        config,
        json: conn.json,
    })
}

fn check_endpoint(e: &str, insecure: bool) -> Result<(), CmdError> {
    let u = url::Url::parse(e).map_err(|err| CmdError::Usage(format!("--etcd {e:?}: {err}")))?;
    let loopback = match u.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    };
    match u.scheme() {
        "https" => Ok(()),
        "http" if loopback || insecure => Ok(()),
        "http" => Err(CmdError::Usage(format!(
            "--etcd {e}: plain http off loopback is refused; use https or --insecure"
        ))),
        _ => Err(CmdError::Usage(format!(
            "--etcd {e}: use an http:// or https:// URL"
        ))),
    }
}

async fn run_async(cli: Cli) -> Result<Exit, CmdError> {
    let ctx = connect(&cli.conn).await?;
    match cli.command {
        Command::Policy(PolicyCmd::Show) => {
            let p = admin::get_policy(&ctx.etcd, &ctx.keys).await?;
            print_policy(&ctx, &p);
            Ok(Exit::Ok)
        }
        Command::Policy(PolicyCmd::Set(flags)) => {
            let mut p = admin::get_policy(&ctx.etcd, &ctx.keys).await?;
            apply_flags(&mut p, &flags)?;
            admin::set_policy(&ctx.etcd, &ctx.keys, &p).await?;
            print_policy(&ctx, &p);
            Ok(Exit::Ok)
        }
        Command::Rollout(RolloutCmd::Start { reference, policy }) => {
            let digest = resolve(&ctx, &reference).await?;
            let mut p = admin::get_policy(&ctx.etcd, &ctx.keys).await?;
            if apply_flags(&mut p, &policy)? {
                admin::set_policy(&ctx.etcd, &ctx.keys, &p).await?;
            }
            let r = admin::start_rollout(&ctx.etcd, &ctx.keys, &digest, &reference).await?;
            // Without a previous digest an abort has nowhere to send the hosts back to.
            let warning = r.previous.is_none().then(|| {
                "no previous digest is known (no host of the group runs another one yet): \
                 an abort of this rollout leaves the hosts where they are"
                    .to_string()
            });
            if ctx.json {
                crate::cli::output::stdout(&format!(
                    "{}",
                    json!({ "group": ctx.group, "rollout": r, "policy": p, "warning": warning })
                ));
            } else {
                if let Some(w) = &warning {
                    eprintln!("gpu-fleet: warning: {w}");
                }
                crate::cli::output::stdout(&format!(
                    "rollout of {} started in group {} (previous {}; max_unavailable {}, canary {}, bake {})",
                    r.digest,
                    ctx.group,
                    r.previous.as_deref().unwrap_or("none"),
                    p.max_unavailable,
                    p.canary,
                    humantime::format_duration(p.bake)
                ));
            }
            Ok(Exit::Ok)
        }
        Command::Rollout(RolloutCmd::Status { wait, timeout }) => {
            let timeout = timeout
                .map(|t| {
                    humantime::parse_duration(&t)
                        .map_err(|e| CmdError::Usage(format!("--timeout {t:?}: {e}")))
                })
                .transpose()?;
            rollout_status(&ctx, wait, timeout).await
        }
        Command::Rollout(RolloutCmd::Pause) => {
            print_rollout_change(&ctx, &admin::pause(&ctx.etcd, &ctx.keys).await?);
            Ok(Exit::Ok)
        }
        Command::Rollout(RolloutCmd::Resume) => {
            print_rollout_change(&ctx, &admin::resume(&ctx.etcd, &ctx.keys).await?);
            Ok(Exit::Ok)
        }
        Command::Rollout(RolloutCmd::Abort) => {
            print_rollout_change(&ctx, &admin::abort(&ctx.etcd, &ctx.keys).await?);
            Ok(Exit::Ok)
        }
        Command::Hosts => {
            let lines = admin::host_lines(&ctx.etcd, &ctx.keys).await?;
            if ctx.json {
                crate::cli::output::stdout(&format!(
                    "{}",
                    json!({ "group": ctx.group, "hosts": lines })
                ));
            } else {
                crate::cli::output::stdout(&format!(
                    "{:<24} {:<20} {:<10} {:<8} {:<8} {:<28} SEEN",
                    "HOST", "DIGEST", "PHASE", "GPU", "SLOT", "LAST EVENT"
                ));
                let now = super::records::now();
                for l in lines {
                    crate::cli::output::stdout(&format!(
                        "{:<24} {:<20} {:<10} {:<8} {:<8} {:<28} {}",
                        l.id,
                        crate::cli::output::short_digest(l.digest.as_deref()),
                        l.phase,
                        l.gpu,
                        l.slot.as_deref().unwrap_or("-"),
                        l.last_event.as_deref().unwrap_or("-"),
                        match (l.live, l.seen) {
                            (true, Some(s)) => format!("live, changed {}s ago", (now - s).max(0)),
                            (true, None) => "live".into(),
                            (false, _) => "gone (lease expired)".into(),
                        }
                    ));
                }
            }
            Ok(Exit::Ok)
        }
        Command::Release { host } => {
            let had = admin::release(&ctx.etcd, &ctx.keys, &host).await?;
            if ctx.json {
                crate::cli::output::stdout(&format!(
                    "{}",
                    json!({ "group": ctx.group, "host": host, "released": had })
                ));
            } else if had {
                crate::cli::output::stdout(&format!(
                    "released the slot of {host} in group {}",
                    ctx.group
                ));
            } else {
                crate::cli::output::stdout(&format!("{host} holds no slot in group {}", ctx.group));
            }
            Ok(Exit::Ok)
        }
        Command::Completions(_) | Command::Man(_) => unreachable!("handled before connecting"),
    }
}

/// Applies the flags given; returns whether any was.
fn apply_flags(p: &mut Policy, f: &PolicyFlags) -> Result<bool, CmdError> {
    let mut any = false;
    if let Some(m) = &f.max_unavailable {
        p.max_unavailable = m.parse::<MaxUnavailable>().map_err(CmdError::Usage)?;
        any = true;
    }
    if let Some(c) = f.canary {
        p.canary = c;
        any = true;
    }
    if let Some(b) = &f.bake {
        p.bake = humantime::parse_duration(b)
            .map_err(|e| CmdError::Usage(format!("--bake {b:?}: {e}")))?;
        any = true;
    }
    if let Some(h) = f.halt_after {
        p.halt_after = h;
        any = true;
    }
    if let Some(r) = &f.halt_ratio {
        p.halt_ratio =
            parse_percent(r).map_err(|e| CmdError::Usage(format!("--halt-ratio {e}")))?;
        any = true;
    }
    Ok(any)
}

/// A digest as given, or a tag resolved once through the registry.
async fn resolve(ctx: &Ctx, reference: &str) -> Result<String, CmdError> {
    let is_digest = |d: &str| crate::registry::is_sha256_digest(d);
    if is_digest(reference) {
        return Ok(reference.to_string());
    }
    if let Some((_, d)) = reference.rsplit_once('@') {
        return if is_digest(d) {
            Ok(d.to_string())
        } else {
            Err(CmdError::Usage(format!(
                "{reference:?}: the part after @ is not a sha256 digest"
            )))
        };
    }
    // repo:tag (the last ':' after the last '/'), or a bare tag of the config's repository.
    let slash = reference.rfind('/').map_or(0, |i| i + 1);
    let (image, tag) = match reference[slash..].rfind(':') {
        Some(i) => {
            let repo = &reference[..slash + i];
            let image = ImageName::parse(repo).map_err(|e| CmdError::Usage(e.to_string()))?;
            (image, reference[slash + i + 1..].to_string())
        }
        None if slash == 0 => match &ctx.config {
            Some(c) => (c.image.name.clone(), reference.to_string()),
            None => {
                return Err(CmdError::Usage(format!(
                    "{reference:?}: give a digest, repo:tag, or --config for the repository of a bare tag"
                )))
            }
        },
        None => (
            ImageName::parse(reference).map_err(|e| CmdError::Usage(e.to_string()))?,
            "latest".to_string(),
        ),
    };
    let mut opts = ClientOptions::default();
    if let Some(c) = &ctx.config {
        opts.insecure = c.image.insecure;
        opts.auth_file.clone_from(&c.image.auth_file);
    }
    if !opts.insecure {
        // A loopback registry speaks plain http, as the agent allows.
        opts.insecure =
            image.registry.starts_with("127.0.0.1") || image.registry.starts_with("localhost");
    }
    let client = RegistryClient::new(opts).map_err(|e| CmdError::Failed(e.to_string()))?;
    let digest = client
        .head_digest(&image, &tag)
        .await
        .map_err(|e| CmdError::Failed(format!("resolving {reference}: {e}")))?;
    Ok(digest)
}

fn print_policy(ctx: &Ctx, p: &Policy) {
    if ctx.json {
        crate::cli::output::stdout(&format!("{}", json!({ "group": ctx.group, "policy": p })));
    } else {
        crate::cli::output::stdout(&format!(
            "group {}: max_unavailable {}, canary {}, bake {}, halt_after {}, halt_ratio {}%",
            ctx.group,
            p.max_unavailable,
            p.canary,
            humantime::format_duration(p.bake),
            p.halt_after,
            p.halt_ratio
        ));
    }
}

fn print_rollout_change(ctx: &Ctx, r: &super::RolloutRecord) {
    if ctx.json {
        crate::cli::output::stdout(&format!("{}", json!({ "group": ctx.group, "rollout": r })));
    } else {
        crate::cli::output::stdout(&format!(
            "rollout of {} in group {}: {}",
            r.digest,
            ctx.group,
            r.state.as_str()
        ));
    }
}

fn print_status(ctx: &Ctx, s: &RolloutStatus) {
    if ctx.json {
        crate::cli::output::stdout(&serde_json::to_string(s).expect("status serializes"));
        return;
    }
    match &s.rollout {
        None => crate::cli::output::stdout(&format!(
            "group {}: no rollout yet ({} live hosts)",
            s.group, s.hosts
        )),
        Some(r) => {
            crate::cli::output::stdout(&format!(
                "group {}: rollout of {} is {}{}",
                s.group,
                r.digest,
                r.state.as_str(),
                r.note
                    .as_ref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            ));
            crate::cli::output::stdout(&format!(
                "hosts: {} live, {} done, {} in progress, {} failed, {} waiting{}",
                s.hosts,
                s.done,
                s.in_progress,
                s.failed,
                s.waiting,
                if s.host_faults > 0 {
                    format!(" ({} host faults)", s.host_faults)
                } else {
                    String::new()
                }
            ));
        }
    }
}

/// Exit code of a rollout state for `--wait`: Some when it is final.
fn final_exit(s: &RolloutStatus) -> Option<Exit> {
    match s.rollout.as_ref().map(|r| r.state) {
        Some(RolloutState::Complete) => Some(Exit::Ok),
        Some(RolloutState::Halted | RolloutState::Aborted) => Some(Exit::Failed),
        _ => None,
    }
}

async fn rollout_status(
    ctx: &Ctx,
    wait: bool,
    timeout: Option<Duration>,
) -> Result<Exit, CmdError> {
    let s = admin::status(&ctx.etcd, &ctx.keys, &ctx.group).await?;
    if !wait {
        print_status(ctx, &s);
        return Ok(match s.rollout.as_ref().map(|r| r.state) {
            Some(RolloutState::Halted | RolloutState::Aborted) => Exit::Failed,
            _ => Exit::Ok,
        });
    }
    if s.rollout.is_none() {
        print_status(ctx, &s);
        return Err(CmdError::Fleet(FleetError::Refused(format!(
            "group {} has no rollout to wait for",
            ctx.group
        ))));
    }
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut last = String::new();
    loop {
        let s = admin::status(&ctx.etcd, &ctx.keys, &ctx.group).await?;
        let line = serde_json::to_string(&(&s.rollout, s.done, s.in_progress, s.failed))
            .unwrap_or_default();
        if line != last && !ctx.json {
            print_status(ctx, &s);
            last = line;
        }
        if let Some(code) = final_exit(&s) {
            if ctx.json {
                print_status(ctx, &s);
            }
            return Ok(code);
        }
        // Wake on any change under the group (or every 10 s, for completion by hosts' records).
        let rev = ctx
            .etcd
            .get(ctx.keys.rollout(), None)
            .await?
            .header()
            .map_or(0, |h| h.revision());
        let mut w = ctx
            .etcd
            .watch(
                ctx.keys.prefix().to_string(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(rev + 1),
                ),
            )
            .await?;
        let wake = async {
            loop {
                match w.message().await {
                    Ok(Some(r))
                        if r.events().iter().any(|e| {
                            e.event_type() == EventType::Put || e.event_type() == EventType::Delete
                        }) =>
                    {
                        return
                    }
                    Ok(Some(_)) => continue,
                    _ => return,
                }
            }
        };
        let sleep_for = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    print_status(ctx, &s);
                    return Err(CmdError::Failed(format!(
                        "the rollout did not finish within {}",
                        humantime::format_duration(timeout.unwrap_or_default())
                    )));
                }
                left.min(Duration::from_secs(10))
            }
            None => Duration::from_secs(10),
        };
        let _ = tokio::time::timeout(sleep_for, wake).await;
        // Let a burst of changes settle into one status read.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
