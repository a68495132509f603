//! The fires consumer: takes deliveries (fires, or batches of them) from the fires queue, each on a task
//! of its own (a delivery may be held for its sub-second remainder), and acks, requeues or dead-letters
//! by the error's code.

use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use spot_shared::broker::{decode, settle};
use spot_shared::messages::FireDelivery;
use tokio::task::JoinSet;

use crate::Provisioner;

impl Provisioner {
    /// Consumes fires, pumps timers from Redis to RabbitMQ and reconciles them until `shutdown`
    /// resolves; in-flight messages finish first.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let queue = self.broker.topology().fires_queue();
        let mut consumer = self
            .broker
            .consume(&queue, self.settings.provisioner.prefetch, "provisioner")
            .await?;
        tracing::info!(queue, "provisioner consuming");
        let mut reconcile = tokio::time::interval(Duration::from_secs(
            self.settings.provisioner.reconcile_interval_secs.max(1),
        ));
        let mut in_flight = JoinSet::new();
        let pump = self.clone();
        let pump = tokio::spawn(async move { pump.pump_forever().await });
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
                    None => anyhow::bail!("the fires consumer was cancelled"),
                },
                _ = reconcile.tick() => {
                    if let Err(err) = self.reconcile_once().await {
                        tracing::warn!(error = %err, "reconcile failed");
                    }
                }
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            }
        }
        pump.abort();
        while in_flight.join_next().await.is_some() {}
        self.broker.close().await;
        Ok(())
    }

    /// Processes one delivery (a fire or a batch of them): handle it, then ack, requeue (retryable)
    /// or dead-letter (malformed, bug).
    pub async fn process_delivery(&self, delivery: Delivery) {
        match decode::<FireDelivery>(&delivery) {
            Ok(FireDelivery::One(fire)) => {
                settle(&delivery, self.handle_fire(&fire).await, "fire").await
            }
            Ok(FireDelivery::Batch(batch)) => {
                settle(&delivery, self.handle_batch(&batch).await, "fire batch").await
            }
            Err(err) => settle::<()>(&delivery, Err(err), "fire").await,
        }
    }
}
