//! `agentctl`: the operator's command line for the agent on this host. It
//! speaks the control API (`control::api`) over the agent's Unix socket; this
//! module owns the command-line surface (clap derive, one file per
//! subcommand), the one `--json`/human output helper (`output`), the socket
//! client (`client`) and the exit codes of the SPEC ([`Exit`]).
//!
//! The binary (`src/bin/agentctl.rs`) only parses and calls [`run`].

pub mod check;
pub mod client;
pub mod docs;
pub mod drain;
pub mod dry_run;
pub mod health;
pub mod history;
pub mod output;
pub mod pin;
pub mod rollback;
pub mod status;
pub mod undrain;
pub mod unpin;
pub mod update;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use client::Client;
use output::Output;

/// Where the agent listens unless `agent.control_socket` says otherwise.
pub use crate::config::DEFAULT_CONTROL_SOCKET as DEFAULT_SOCKET;

/// Exit codes of `agentctl` (the SPEC's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Done.
    Ok = 0,
    /// The action failed (rolled back, aborted, failed), `health` found
    /// something unhealthy, or the agent hit an error (HTTP 500, an answer
    /// that does not read, a connection that broke).
    Failed = 1,
    /// Bad command line. clap exits with this code itself on its own errors.
    Usage = 2,
    /// The agent is not reachable: no socket, nobody listening, no permission,
    /// or no answer in time.
    Unreachable = 3,
    /// Refused in the agent's current state (HTTP 409); the message says why.
    Refused = 4,
}

/// Why a command did not get done; each maps to one exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "cannot reach gpu-agent at {path}: {cause} (is the agent running? is {path} its \
         agent.control_socket? are you root or in group gpu-agent?)",
        path = .socket.display()
    )]
    Unreachable { socket: PathBuf, cause: String },
    #[error(
        "gpu-agent at {path} did not answer within {secs} s (is it stuck? see journalctl -u gpu-agent)",
        path = .socket.display()
    )]
    NoAnswer { socket: PathBuf, secs: u64 },
    /// HTTP 409: the server's own text.
    #[error("{0}")]
    Refused(String),
    /// HTTP 400: the agent found the request malformed.
    #[error("gpu-agent refused the request as malformed: {0}")]
    BadRequest(String),
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    pub fn exit(&self) -> Exit {
        match self {
            CliError::Unreachable { .. } | CliError::NoAnswer { .. } => Exit::Unreachable,
            CliError::Refused(_) => Exit::Refused,
            CliError::BadRequest(_) => Exit::Usage,
            CliError::Failed(_) => Exit::Failed,
        }
    }
}

/// Operate the gpu-agent of this host: see what the GPU worker runs and how
/// healthy it is, check for or deploy a new worker image, roll back, pin an
/// image, drain the worker for maintenance, read the audit trail.
///
/// Maintenance: agentctl drain stops new jobs, lets the jobs in flight end
/// and stops the worker; updates are held until agentctl undrain starts it
/// again. agentctl pin holds the worker on one digest or tag until agentctl
/// unpin; agentctl rollback goes back to the previous good digest and marks
/// the one it leaves bad.
///
/// agentctl talks to the agent over its control socket (root and group
/// gpu-agent only). Exit codes: 0 done; 1 failed (rolled back, aborted,
/// unhealthy, an agent error); 2 usage; 3 the agent is not reachable; 4 refused in the
/// agent's current state (the message says why).
#[derive(Debug, Parser)]
#[command(name = "agentctl", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// The agent's control socket (its agent.control_socket).
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "GPU_AGENT_SOCKET",
        default_value = DEFAULT_SOCKET
    )]
    pub socket: PathBuf,
    /// Print the agent's answer as JSON (for scripts) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Status(status::Args),
    Health(health::Args),
    Check(check::Args),
    Update(update::Args),
    Rollback(rollback::Args),
    Pin(pin::Args),
    Unpin(unpin::Args),
    Drain(drain::Args),
    Undrain(undrain::Args),
    History(history::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(docs::CompletionsArgs),
    /// Write the man pages of agentctl and its commands into a folder (for packaging).
    #[command(hide = true)]
    Man(docs::ManArgs),
}

/// Runs one parsed command line and prints its outcome; returns the exit code.
pub fn run(cli: Cli) -> Exit {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentctl: starting the runtime: {e}");
            return Exit::Failed;
        }
    };
    let out = Output::new(cli.global.json);
    // These need no agent.
    match &cli.command {
        Command::Completions(a) => return docs::completions(a),
        Command::Man(a) => return docs::man(a),
        _ => {}
    }
    match rt.block_on(dispatch(cli, out)) {
        Ok(code) => code,
        Err(e) => {
            out.failure(&e.to_string(), e.exit());
            e.exit()
        }
    }
}

/// Prints clap's error (or its `--help`/`--version` text) and gives the exit
/// code: 0 for help and version, else 2. With `--json` among `args`, a usage
/// error is also printed as JSON on stdout (see [`output::error_json`]).
pub fn usage_error(e: &clap::Error, args: impl IntoIterator<Item = std::ffi::OsString>) -> Exit {
    let code = e.exit_code();
    let json = args.into_iter().skip(1).any(|a| a == "--json");
    if json && code != 0 {
        let text = e.render().to_string();
        let first = text.lines().next().unwrap_or_default();
        output::stdout(&output::error_json(
            first.trim_start_matches("error: "),
            Exit::Usage,
        ));
    }
    // clap's own print: a closed stdout is not an error there.
    let _ = e.print();
    if code == 0 {
        Exit::Ok
    } else {
        Exit::Usage
    }
}

async fn dispatch(cli: Cli, out: Output) -> Result<Exit, CliError> {
    let client = Client::new(&cli.global.socket);
    match cli.command {
        Command::Status(a) => status::run(a, &client, out).await,
        Command::Check(a) => check::run(a, &client, out).await,
        Command::Update(a) => update::run(a, &client, out).await,
        Command::Rollback(a) => rollback::run(a, &client, out).await,
        Command::Pin(a) => pin::run(a, &client, out).await,
        Command::Unpin(a) => unpin::run(a, &client, out).await,
        Command::Drain(a) => drain::run(a, &client, out).await,
        Command::Undrain(a) => undrain::run(a, &client, out).await,
        Command::Health(a) => health::run(a, &client, out).await,
        Command::History(a) => history::run(a, &client, out).await,
        Command::Completions(_) | Command::Man(_) => Ok(Exit::Ok),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_go_before_or_after_the_command() {
        let c = Cli::try_parse_from(["agentctl", "--json", "status"]).unwrap();
        assert!(c.global.json);
        let c =
            Cli::try_parse_from(["agentctl", "status", "--socket", "/x.sock", "--json"]).unwrap();
        assert!(c.global.json);
        assert_eq!(c.global.socket, PathBuf::from("/x.sock"));
    }

    #[test]
    fn maintenance_commands_parse() {
        let c = Cli::try_parse_from([
            "agentctl",
            "drain",
            "--reason",
            "driver upgrade",
            "--timeout",
            "1h30m",
            "--wait",
        ])
        .unwrap();
        let Command::Drain(d) = c.command else {
            panic!("{:?}", c.command)
        };
        assert_eq!(d.reason.as_deref(), Some("driver upgrade"));
        assert_eq!(d.timeout.as_deref(), Some("1h30m"));
        assert!(d.wait);
        let c = Cli::try_parse_from(["agentctl", "pin", "v2.4.1"]).unwrap();
        let Command::Pin(p) = c.command else {
            panic!("{:?}", c.command)
        };
        assert_eq!(p.reference, "v2.4.1");
        for cmd in ["undrain", "rollback", "unpin", "health"] {
            Cli::try_parse_from(["agentctl", cmd]).unwrap();
        }
        let c = Cli::try_parse_from(["agentctl", "check", "--dry-run"]).unwrap();
        let Command::Check(a) = c.command else {
            panic!("{:?}", c.command)
        };
        assert!(a.dry_run && !a.wait);
        let d = format!("sha256:{}", "0".repeat(64));
        let c = Cli::try_parse_from(["agentctl", "update", "--digest", &d, "--dry-run"]).unwrap();
        let Command::Update(a) = c.command else {
            panic!("{:?}", c.command)
        };
        assert!(a.dry_run);
    }

    #[test]
    fn usage_errors_are_exit_code_2() {
        for args in [
            &["agentctl", "frobnicate"][..],
            &["agentctl", "status", "--frob"],
            &["agentctl", "update"],
            &["agentctl", "update", "--digest", "latest"],
            &["agentctl", "history", "-n", "0"],
            &["agentctl", "drain", "--timeout", "10"],
            &["agentctl", "drain", "--timeout", "ten minutes"],
            &["agentctl", "drain", "--timeout", ""],
            &["agentctl", "drain", "--timeout", "2y"],
            &["agentctl", "pin"],
            &["agentctl", "pin", "sha256:abc"],
            &["agentctl", "pin", "ghcr.io/acme/worker:v2"],
            &["agentctl", "pin", ".v2"],
            &["agentctl", "pin", "v2", "v3"],
            &["agentctl", "unpin", "v2"],
            &["agentctl", "undrain", "--wait"],
            &["agentctl", "check", "--dry-run", "--wait"],
            &["agentctl", "update", "--dry-run"],
        ] {
            let e = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(e.exit_code(), Exit::Usage as i32, "{args:?}");
        }
    }

    #[test]
    fn errors_map_to_the_spec_exit_codes() {
        let socket = PathBuf::from("/run/x.sock");
        let e = CliError::Unreachable {
            socket: socket.clone(),
            cause: "No such file or directory (os error 2)".into(),
        };
        assert_eq!(e.exit(), Exit::Unreachable);
        assert!(e
            .to_string()
            .starts_with("cannot reach gpu-agent at /run/x.sock: No such file"));
        assert!(e.to_string().contains("is the agent running?"));
        assert_eq!(
            CliError::NoAnswer { socket, secs: 10 }.exit(),
            Exit::Unreachable
        );
        assert_eq!(CliError::Refused("busy".into()).exit(), Exit::Refused);
        assert_eq!(CliError::BadRequest("x".into()).exit(), Exit::Usage);
        assert_eq!(CliError::Failed("x".into()).exit(), Exit::Failed);
    }
}
