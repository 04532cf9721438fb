//! `gpu-fleet`: drives a gpu-agent fleet group through etcd. Parses arguments
//! (clap exits 2 on a usage error) and calls the library (`fleet::cli`).

use std::process::ExitCode;

use clap::Parser;
use gpu_agent::fleet::cli::{self, Cli};

fn main() -> ExitCode {
    ExitCode::from(cli::run(Cli::parse()) as u8)
}
