//! The reaper: terminates the instances of ended runs, through the cloud provider, and records them
//! terminated. Requests come on the terminate queue; several reapers may consume it at once, since
//! terminating an instance twice is harmless and the state only moves forward.

use std::sync::Arc;

use anyhow::Context;
use futures::StreamExt;
use lapin::message::Delivery;
use spot_shared::broker::{decode, settle, Broker};
use spot_shared::cloud::Cloud;
use spot_shared::config::Settings;
use spot_shared::messages::TerminateRequest;
use spot_shared::model::InstanceState;
use spot_shared::store::Store;
use spot_shared::Result;
use tokio::task::JoinSet;

#[derive(Clone)]
pub struct Reaper {
    store: Store,
    broker: Arc<Broker>,
    cloud: Arc<Cloud>,
    prefetch: u16,
}

impl Reaper {
    pub async fn build(settings: Settings) -> anyhow::Result<Reaper> {
        let (store, broker) = spot_shared::connect(&settings).await?;
        let cloud =
            Cloud::from_settings(&settings.cloud).context("setting up the cloud provider")?;
        Ok(Reaper {
            store,
            broker: Arc::new(broker),
            cloud: Arc::new(cloud),
            prefetch: settings.reaper.prefetch,
        })
    }

    /// Terminates one instance and records it. Idempotent.
    pub async fn handle_terminate(&self, request: &TerminateRequest) -> Result<()> {
        let instance = self.store.get_instance(&request.instance_id).await?;
        if let Some(instance) = &instance {
            if instance.state == InstanceState::Terminated {
                return Ok(());
            }
            self.store
                .advance_instance(&instance.id, InstanceState::Terminating, &[])
                .await?;
        }
        self.cloud.terminate(&request.instance_id).await?;
        if instance.is_some() {
            self.store
                .advance_instance(&request.instance_id, InstanceState::Terminated, &[])
                .await?;
        }
        tracing::info!(instance_id = %request.instance_id, run_id = %request.run_id,
            reason = %request.reason, "instance terminated");
        Ok(())
    }

    /// Processes one delivery: ack on success, requeue when retryable, dead-letter otherwise.
    pub async fn process_delivery(&self, delivery: Delivery) {
        let outcome = match decode::<TerminateRequest>(&delivery) {
            Ok(request) => self.handle_terminate(&request).await,
            Err(err) => Err(err),
        };
        settle(&delivery, outcome, "terminate").await;
    }

    /// Consumes terminate requests until `shutdown` resolves; in-flight requests finish first.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let queue = self.broker.topology().terminate_queue();
        let mut consumer = self.broker.consume(&queue, self.prefetch, "reaper").await?;
        tracing::info!(queue, "reaper consuming");
        let mut in_flight = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                delivery = consumer.next() => match delivery {
                    Some(Ok(delivery)) => {
                        let this = self.clone();
                        in_flight.spawn(async move { this.process_delivery(delivery).await });
                    }
                    Some(Err(err)) => return Err(err.into()),
                    None => anyhow::bail!("the terminate consumer was cancelled"),
                },
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            }
        }
        while in_flight.join_next().await.is_some() {}
        self.broker.close().await;
        Ok(())
    }
}

/// Runs the reaper until Ctrl-C or SIGTERM.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let reaper = Reaper::build(settings).await?;
    reaper
        .run_until_stopped(spot_shared::shutdown_signal())
        .await
}
