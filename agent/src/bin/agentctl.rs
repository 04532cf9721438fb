//! `agentctl`: the operator's command line for the local gpu-agent. Parses
//! arguments (clap exits 2 on a usage error) and calls the library.

use std::process::ExitCode;

use clap::Parser;
use gpu_agent::cli::{self, Cli};

fn main() -> ExitCode {
    ExitCode::from(cli::run(Cli::parse()) as u8)
}
