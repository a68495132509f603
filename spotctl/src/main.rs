//! `spotctl`: parses the command line and hands it to [`spotctl::run`]; the exit code is its answer.

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = spotctl::cli::Cli::parse();
    spotctl::run(cli).await
}
