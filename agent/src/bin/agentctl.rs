//! `agentctl`: the operator's command line for the local gpu-agent. Parses
//! arguments (clap exits 2 on a usage error) and calls the library.

use std::process::ExitCode;

use clap::Parser;
use gpu_agent::cli::{self, Cli};

fn main() -> ExitCode {
    match Cli::try_parse() {
        Ok(c) => ExitCode::from(cli::run(c) as u8),
        Err(e) => ExitCode::from(cli::usage_error(&e, std::env::args_os()) as u8),
    }
}
