//! `spotctl`, spot-scheduler's command line: the `/v1` resource API, the simple API's `/schedule`,
//! `/healthcheck` and `/metrics`, as tables for people or JSON for programs.

pub mod cli;
pub mod client;
pub mod commands;
pub mod error;
pub mod output;
pub mod settings;

use std::process::ExitCode;
use std::time::Duration;

use cli::{Cli, Command};
use client::{ApiClient, CtlResult};
use commands::{jobs, runs, system};
use settings::Settings;

/// Runs one command; errors are printed on stderr and become the exit code.
/// [`run`] on a single-threaded runtime: what `main` calls (built here so the command's futures are
/// compiled once, in this crate, not again in the binary).
pub fn run_blocking(cli: Cli) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(err) => {
            eprintln!("spotctl: cannot start: {err}");
            ExitCode::FAILURE
        }
    }
}

pub async fn run(cli: Cli) -> ExitCode {
    match dispatch(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

async fn dispatch(cli: Cli) -> CtlResult<u8> {
    let settings = Settings::resolve(&cli)?;
    let api = ApiClient::new(&settings)?;
    let out = cli.output;
    match cli.command {
        Command::Schedule(args) => jobs::schedule(&api, out, args).await?,
        Command::Jobs { group, limit } => jobs::list(&api, out, group.as_deref(), limit).await?,
        Command::Get { job } => jobs::get(&api, out, &job).await?,
        Command::Edit { job, file } => jobs::edit(&api, out, &job, file.as_deref()).await?,
        Command::Enable { job } => jobs::set_enabled(&api, out, &job, true).await?,
        Command::Disable { job } => jobs::set_enabled(&api, out, &job, false).await?,
        Command::Pause { job, note } => jobs::pause(&api, out, &job, &note).await?,
        Command::Resume { job } => jobs::resume(&api, out, &job).await?,
        Command::Backfill {
            job,
            from,
            to,
            concurrency,
        } => runs::backfill(&api, out, &job, (&from, &to), concurrency).await?,
        Command::Backfills { job, cancel } => {
            runs::backfills(&api, out, &job, cancel.as_deref()).await?
        }
        Command::Delete { job, yes } => jobs::delete(&api, &job, yes).await?,
        Command::Next { job, count } => jobs::next(&api, out, &job, count).await?,
        Command::Runs { job, limit } => runs::list(&api, out, &job, limit).await?,
        Command::Instances { job, limit } => runs::instances(&api, out, &job, limit).await?,
        Command::Notifications { run } => runs::notifications(&api, out, &run).await?,
        Command::Children { run } => runs::children(&api, out, &run).await?,
        Command::Run {
            job,
            env,
            cmd,
            image,
            wait,
            timeout,
        } => {
            let timeout = Duration::from_secs(timeout);
            let overrides = runs::Overrides { env, cmd, image };
            return runs::run_now(&api, out, &job, &overrides, wait, timeout).await;
        }
        Command::Logs { run, follow } => runs::logs(&api, &run, follow).await?,
        Command::Status => return system::status(&api, out).await,
        Command::Usage { from, to } => system::usage(&api, out, from, to).await?,
        Command::Audit {
            job,
            from,
            to,
            limit,
        } => system::audit(&api, out, [("job", job), ("from", from), ("to", to)], limit).await?,
        Command::Completions { shell } => system::completions(shell),
    }
    Ok(0)
}
