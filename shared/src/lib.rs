//! The library every spot-scheduler service shares: the job and run model with its state machine,
//! schedule parsing, the Redis store, the RabbitMQ topology and timers, configuration, auth and the
//! cloud providers that launch and terminate instances.

pub mod alerts;
pub mod arrays;
pub mod auth;
pub mod aws;
pub mod broker;
pub mod catch_up;
pub mod chain;
pub mod cloud;
pub mod config;
pub mod container_limits;
pub mod error;
pub mod file_source;
pub mod ids;
pub mod instance_power;
pub mod messages;
pub mod model;
pub mod notify;
pub mod outbound;
pub mod policy;
pub mod pricing;
pub mod quotas;
pub mod schedule;
pub mod secrets;
pub mod store;
pub mod supervise;
pub mod task_instances;
pub mod telemetry;
pub mod timer;

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

/// The handles on Redis and RabbitMQ every service starts with. Neither needs its server to be up:
/// both connect in the background and heal themselves, so a service starts, and stays up, while
/// either is down. It waits a few seconds for them first (so a stack started together is ready at
/// once), then starts regardless. Fails only on a configuration error.
pub async fn connect(settings: &config::Settings) -> Result<(store::Store, broker::Broker)> {
    const STARTUP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
    let notifying = settings
        .auth
        .accounts
        .iter()
        .filter(|account| !account.notify.is_empty())
        .map(|account| {
            let events = account.notify.iter().flat_map(|t| t.events.clone());
            (account.name.clone(), events.collect())
        });
    let store = store::Store::connect_lazy(&settings.redis)?.with_notifying_accounts(notifying);
    let broker = broker::Broker::start(&settings.rabbitmq);
    let redis_up = async {
        let deadline = tokio::time::Instant::now() + STARTUP_WAIT;
        while store.ping().await.is_err() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    };
    let (_, rabbit) = tokio::join!(redis_up, broker.wait_connected(STARTUP_WAIT));
    if store.ping().await.is_err() {
        tracing::warn!(
            "Redis is not reachable yet; starting anyway and reconnecting in the background"
        );
    } else if let Err(err) = store.check_layout().await {
        // Another shard count than the store's would read and write every job in the wrong place.
        if !err.is_retryable() {
            return Err(err);
        }
    }
    if rabbit.is_err() {
        tracing::warn!(
            "RabbitMQ is not reachable yet; starting anyway and connecting in the background"
        );
    }
    Ok((store, broker))
}
