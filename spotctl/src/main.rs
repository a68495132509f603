//! `spotctl`: parses the command line and hands it to [`spotctl::run`]; the exit code is its answer.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = spotctl::cli::Cli::parse();
    spotctl::run_blocking(cli)
}
