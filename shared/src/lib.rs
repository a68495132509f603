//! The library every spot-scheduler service shares: the job and run model with its state machine,
//! schedule parsing, the Redis store, the RabbitMQ topology and timers, configuration, auth and the
//! cloud providers that launch and terminate instances.

pub mod auth;
pub mod broker;
pub mod cloud;
pub mod config;
pub mod ec2;
pub mod error;
pub mod ids;
pub mod messages;
pub mod model;
pub mod outbound;
pub mod policy;
pub mod schedule;
pub mod store;
pub mod telemetry;
pub mod timer;
pub mod userdata;

pub use error::{Error, ErrorCode, Result};

/// Resolves on Ctrl-C or SIGTERM: the stop signal of every service.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Connects to Redis and RabbitMQ and declares the topology: what every service does at start.
pub async fn connect(settings: &config::Settings) -> Result<(store::Store, broker::Broker)> {
    let store = store::Store::connect(&settings.redis)
        .await
        .map_err(|err| Error::unavailable(format!("connecting to Redis: {err}")))?;
    let broker = broker::Broker::connect(&settings.rabbitmq)
        .await
        .map_err(|err| Error::unavailable(format!("connecting to RabbitMQ: {err}")))?;
    broker
        .declare_topology()
        .await
        .map_err(|err| Error::unavailable(format!("declaring the RabbitMQ topology: {err}")))?;
    Ok((store, broker))
}
