//! `gpu-agent`: the daemon binary. Parses arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gpu_agent::cli::output::stdout;
use gpu_agent::config;

/// Exit codes of `gpu-agent`.
#[repr(u8)]
enum Exit {
    Ok = 0,
    /// The agent failed while running.
    Failure = 1,
    /// The configuration was refused (EX_CONFIG from sysexits.h; systemd does not retry it).
    Config = 78,
}

/// Keeps this host's GPU worker container on the right image, safely:
/// pre-pull, drain, swap, verify, and roll back to the last good digest.
#[derive(Parser)]
#[command(name = "gpu-agent", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (what the systemd unit starts).
    Run {
        /// Main config file; drop-ins are read from the agent.d/ folder beside it.
        #[arg(long, short, default_value = config::DEFAULT_PATH, env = "GPU_AGENT_CONFIG")]
        config: PathBuf,
        /// More log detail (-v: debug, -vv: trace). RUST_LOG overrides.
        #[arg(short, long, action = clap::ArgAction::Count)]
        verbose: u8,
    },
    /// Validate the config (main file and drop-ins) without touching Docker;
    /// also checks that the hub token file exists and that the unit can bind
    /// the metrics address.
    CheckConfig {
        #[arg(long, short, default_value = config::DEFAULT_PATH, env = "GPU_AGENT_CONFIG")]
        config: PathBuf,
        /// Only the config files: skip the checks of this host (the hub token
        /// file, the metrics address), which the running agent does not
        /// refuse either. What the unit's reload runs before it signals the agent.
        #[arg(long)]
        no_host_checks: bool,
    },
    /// Print the version.
    Version,
    /// Write the man pages of gpu-agent into a folder (for packaging).
    #[command(hide = true)]
    Man {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => "info",
        1 => "gpu_agent=debug,info",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // journald stamps every line itself. Colours only on a terminal: not in
    // the journal, `docker logs` (the agent image) or a file.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().with_ansi(false).init();
    } else {
        use std::io::IsTerminal;
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Version => {
            stdout(&format!(
                "gpu-agent {} (commit {})",
                env!("CARGO_PKG_VERSION"),
                gpu_agent::COMMIT
            ));
            Exit::Ok
        }
        Command::Man { out } => {
            use clap::CommandFactory;
            match gpu_agent::cli::docs::write_man_pages(Cli::command(), &out) {
                Ok(written) => {
                    for p in written {
                        stdout(&p.display().to_string());
                    }
                    Exit::Ok
                }
                Err(e) => {
                    eprintln!("gpu-agent: writing man pages into {}: {e}", out.display());
                    Exit::Failure
                }
            }
        }
        Command::CheckConfig {
            config,
            no_host_checks,
        } => match config::load(&config) {
            Ok(s) => {
                let problems = if no_host_checks {
                    Vec::new()
                } else {
                    config::preflight(&s)
                };
                if !problems.is_empty() {
                    for e in problems {
                        eprintln!("gpu-agent: {e}");
                    }
                    return ExitCode::from(Exit::Config as u8);
                }
                let files = config::config_files(&config).unwrap_or_default();
                let mut text = format!("config ok: {} file(s)\n", files.len());
                for f in files {
                    text.push_str(&format!("  {}\n", f.display()));
                }
                text.push_str(&format!(
                    "agent {} follows {} ({}) as worker {:?}",
                    s.agent.id, s.image.name, s.image.policy, s.worker.name
                ));
                for note in s.security_notes() {
                    text.push_str(&format!("\nnote: {note}"));
                }
                stdout(&text);
                Exit::Ok
            }
            Err(e) => {
                eprintln!("gpu-agent: {e}");
                Exit::Config
            }
        },
        Command::Run { config, verbose } => {
            init_logging(verbose);
            let settings = match config::load(&config) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("gpu-agent: {e}");
                    return ExitCode::from(Exit::Config as u8);
                }
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("gpu-agent: starting the runtime: {e}");
                    return ExitCode::from(Exit::Failure as u8);
                }
            };
            let code = match rt.block_on(gpu_agent::daemon::run(settings, config)) {
                Ok(()) => Exit::Ok,
                Err(e) => {
                    tracing::error!("{e:#}");
                    Exit::Failure
                }
            };
            // A blocking task stuck in a call that never returns must not
            // hold up the exit.
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
            code
        }
    };
    ExitCode::from(code as u8)
}
