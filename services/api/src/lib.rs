//! The spot-scheduler api: the HTTP surface users and agents talk to.
//!
//! [`startup`] builds the app from one [`Settings`]; each group of routes lives in [`routes`]. The api
//! stores jobs in Redis, arms their timers on RabbitMQ, and takes the agents' callbacks.

pub mod auth;
pub mod bcrypt_gate;
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
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let app = Application::build(settings).await?;
    tracing::info!(port = app.port(), "api listening");
    app.run_until_stopped(spot_shared::shutdown_signal()).await
}
