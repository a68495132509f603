//! The spot-scheduler api: the HTTP surface users and agents talk to.
//!
//! [`startup`] builds the app from one [`Settings`]; each group of routes lives in [`routes`]. The api
//! stores jobs in Redis, arms their timers on RabbitMQ, and takes the agents' callbacks.

pub mod audit;
pub mod auth;
pub mod bcrypt_gate;
pub mod create_queue;
pub mod error;
pub mod follow;
pub mod idempotency;
pub mod jobs;
pub mod routes;
pub mod startup;
pub mod state;

pub use startup::Application;

use spot_shared::config::Settings;

/// Runs the api until Ctrl-C or SIGTERM.
/// [`run`] on a multi-threaded runtime of its own: what `main` calls. The runtime is built here, not
/// by `#[tokio::main]` in `main.rs`, so the service's futures are compiled once, in this crate: polled
/// from the binary they were compiled again there (BENCHMARKS.md, "A fresh machine").
pub fn run_blocking(settings: Settings) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(settings))
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let app = Application::build(settings).await?;
    tracing::info!(port = app.port(), "api listening");
    app.run_until_stopped(spot_shared::shutdown_signal()).await
}
