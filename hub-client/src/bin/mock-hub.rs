//! `mock-hub`: the mock hub of hub protocol v1 on its own, for demos and manual tests.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use hub_client::mock::MockHub;

/// A mock hub speaking gpu-agent hub protocol v1, with everything in memory.
///
/// Protocol routes (bearer token checked when --token-file is given):
///   GET  /v1/agents/{id}/desired     200 {"repository","digest"} or 204
///   GET  /v1/agents/{id}/events      text/event-stream of `nudge` events
///   POST /v1/agents/{id}/report      the agent's status (+ event); 204
///   POST /v1/agents/{id}/drain       {"draining": bool, "reason"}; 204
///   GET  /v1/workers/{id}            {"registered","digest","in_flight"}
///
/// Worker routes (no token): POST /v1/workers/{id}/register with
/// {"digest":"sha256:..."} or `digest=sha256:...`; POST /v1/workers/{id}/in_flight
/// with {"in_flight": N} or `in_flight=N`.
///
/// Control routes (no token, work in every mode):
///   PUT|DELETE /mock/agents/{id}/desired   set {"repository","digest"} / clear (204)
///   POST /mock/agents/{id}/nudge           {"reason","digest"?}; answers {"id": N}
///   GET  /mock/agents/{id}/reports|drains  what the agent sent
///   PUT  /mock/mode                        {"mode":"normal|down|garbage|unauthorized|slow","slow_ms":N}
///   POST /mock/workers/{id}/refuse         {"refuse": bool}
///   GET  /mock/workers/{id}                the worker view
///   GET  /mock/received                    every protocol call so far
///
/// Example:
///   mock-hub --listen 127.0.0.1:7070 &
///   curl -X PUT localhost:7070/mock/agents/gpu-host-17/desired \
///     -d '{"repository":"ghcr.io/acme/worker","digest":"sha256:<64 hex>"}'
///   curl -X POST localhost:7070/mock/agents/gpu-host-17/nudge -d '{"reason":"demo"}'
#[derive(Debug, Parser)]
#[command(name = "mock-hub", version, verbatim_doc_comment)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// File holding the bearer token the agent must send (trimmed); without
    /// it, no token is asked for.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let level = match args.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mock-hub: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mock-hub: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let token = match &args.token_file {
        None => None,
        Some(p) => {
            let t = std::fs::read_to_string(p)
                .map_err(|e| format!("reading the token file {}: {e}", p.display()))?;
            let t = t.trim().to_string();
            if t.is_empty() {
                return Err(format!("the token file {} is empty", p.display()));
            }
            Some(t)
        }
    };
    let hub = MockHub::start_on(args.listen, token)
        .await
        .map_err(|e| format!("listening on {}: {e}", args.listen))?;
    tracing::info!(url = %hub.url(), "mock hub ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("installing the SIGTERM handler: {e}"))?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map_err(|e| format!("waiting for SIGINT: {e}"))?,
        _ = term.recv() => {}
    }
    tracing::info!("signal received; stopping");
    hub.stop().await;
    Ok(())
}
