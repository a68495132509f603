//! RabbitMQ: the topology the system owns, confirmed publishing, and consumers.
//!
//! Everything is durable and persistent. Queues are quorum queues; the timer levels dead-letter
//! at-least-once (which RabbitMQ allows only with `x-overflow: reject-publish`), so a timer survives a
//! broker restart and is never dropped between levels. Names, for namespace `ns`:
//! - `ns.timer.levelKK` (exchange and queue per level, see [`crate::timer`]) and `ns.timer.due`
//! - `ns.fires`: every due timer ends here; the provisioner consumes it
//! - `ns.terminate`: instances to terminate; the reaper consumes it
//! - `ns.dead`: messages a consumer refused as malformed, kept for inspection

use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeBindOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use secrecy::ExposeSecret;
use serde::Serialize;

use crate::config::RabbitSettings;
use crate::error::{Error, Result};
use crate::messages::{FireMessage, TerminateRequest};
use crate::timer::TimerLevels;

/// Names of the queues and exchanges, derived from the namespace.
#[derive(Debug, Clone)]
pub struct Topology {
    pub namespace: String,
    pub timers: TimerLevels,
}

impl Topology {
    pub fn new(settings: &RabbitSettings) -> Topology {
        Topology {
            namespace: settings.namespace.clone(),
            timers: TimerLevels::new(
                &settings.namespace,
                settings.timer_levels,
                settings.timer_unit_ms,
                settings.timer_lead_ms,
            ),
        }
    }

    pub fn fires_queue(&self) -> String {
        format!("{}.fires", self.namespace)
    }

    pub fn terminate_queue(&self) -> String {
        format!("{}.terminate", self.namespace)
    }

    pub fn dead_letters(&self) -> String {
        format!("{}.dead", self.namespace)
    }
}

/// A connection with a confirm-mode channel for publishing.
pub struct Broker {
    connection: Connection,
    publisher: Channel,
    topology: Topology,
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in entries {
        table.insert(ShortString::from(*key), value.clone());
    }
    table
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

impl Broker {
    pub async fn connect(settings: &RabbitSettings) -> Result<Broker> {
        let connection = Connection::connect(
            settings.url.expose_secret(),
            ConnectionProperties::default(),
        )
        .await?;
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Broker {
            connection,
            publisher,
            topology: Topology::new(settings),
        })
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// Declares every exchange, queue and binding. Idempotent; each service calls it at start.
    pub async fn declare_topology(&self) -> Result<()> {
        let channel = &self.publisher;
        let topology = &self.topology;
        let timers = &topology.timers;
        let quorum = ("x-queue-type", text("quorum"));

        // Dead letters of the work queues.
        let dead = topology.dead_letters();
        channel
            .exchange_declare(
                dead.as_str().into(),
                ExchangeKind::Fanout,
                durable_exchange(),
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                dead.as_str().into(),
                durable_queue(),
                table(std::slice::from_ref(&quorum)),
            )
            .await?;
        channel
            .queue_bind(
                dead.as_str().into(),
                dead.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        // Work queues, reached through the default exchange by name.
        let work_args = table(&[quorum.clone(), ("x-dead-letter-exchange", text(&dead))]);
        for queue in [topology.fires_queue(), topology.terminate_queue()] {
            channel
                .queue_declare(queue.as_str().into(), durable_queue(), work_args.clone())
                .await?;
        }

        // The due exchange delivers every timer to the fires queue.
        let due = timers.due_exchange();
        channel
            .exchange_declare(
                due.as_str().into(),
                ExchangeKind::Topic,
                durable_exchange(),
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                topology.fires_queue().as_str().into(),
                due.as_str().into(),
                format!("#.{}", crate::timer::FIRE_DESTINATION)
                    .as_str()
                    .into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        // Levels, from the bottom up so that each level's dead-letter target exists first.
        for level in 0..timers.levels() {
            let name = timers.level_name(level);
            let next = timers.next_exchange(level);
            channel
                .exchange_declare(
                    name.as_str().into(),
                    ExchangeKind::Topic,
                    durable_exchange(),
                    FieldTable::default(),
                )
                .await?;
            let ttl = i64::try_from(timers.level_ttl_ms(level))
                .map_err(|_| Error::internal("timer level TTL overflows"))?;
            let args = table(&[
                quorum.clone(),
                ("x-message-ttl", AMQPValue::LongLongInt(ttl)),
                ("x-dead-letter-exchange", text(&next)),
                ("x-dead-letter-strategy", text("at-least-once")),
                ("x-overflow", text("reject-publish")),
            ]);
            channel
                .queue_declare(name.as_str().into(), durable_queue(), args)
                .await?;
            let (set, clear) = timers.level_patterns(level);
            channel
                .queue_bind(
                    name.as_str().into(),
                    name.as_str().into(),
                    set.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            channel
                .exchange_bind(
                    next.as_str().into(),
                    name.as_str().into(),
                    clear.as_str().into(),
                    ExchangeBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Arms a timer that delivers `fire` to the fires queue at `due_at` (at once if it has passed).
    pub async fn arm_timer(&self, fire: &FireMessage, due_at: DateTime<Utc>) -> Result<()> {
        let delay = (due_at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        let units = self.topology.timers.units_of(delay);
        self.arm_timer_units(fire, units).await
    }

    /// Arms a timer (a [`FireMessage`] or a [`crate::messages::FireBatch`]) that waits exactly `units`
    /// in the levels (then the consumer holds the rest).
    pub async fn arm_timer_units<T: Serialize>(&self, fires: &T, units: u64) -> Result<()> {
        let routing_key = self.topology.timers.routing_key_for_units(units);
        let exchange = self.topology.timers.exchange_for(units);
        self.publish(&exchange, &routing_key, fires).await
    }

    /// Asks the reaper to terminate an instance.
    pub async fn request_terminate(&self, request: &TerminateRequest) -> Result<()> {
        self.publish("", &self.topology.terminate_queue(), request)
            .await
    }

    /// Publishes a persistent JSON message and waits for the broker's confirm.
    pub async fn publish<T: Serialize>(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &T,
    ) -> Result<()> {
        let payload = serde_json::to_vec(message)?;
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        let confirm = self
            .publisher
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &payload,
                properties,
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(Error::internal(format!(
                "message to {exchange:?}/{routing_key:?} was unroutable"
            ))),
            Confirmation::Nack(_) => Err(Error::unavailable(format!(
                "broker refused message to {exchange:?}/{routing_key:?}"
            ))),
            Confirmation::NotRequested => Err(Error::internal("publisher confirms are off")),
        }
    }

    /// A consumer of `queue` on a channel of its own with `prefetch` unacknowledged messages at most.
    pub async fn consume(&self, queue: &str, prefetch: u16, tag: &str) -> Result<Consumer> {
        let channel = self.connection.create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        Ok(channel
            .basic_consume(
                queue.into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?)
    }

    /// A plain channel, for tests and tools that fetch messages one at a time.
    pub async fn channel(&self) -> Result<Channel> {
        Ok(self.connection.create_channel().await?)
    }

    /// Closes the connection politely, without waiting long for a broker that does not answer.
    pub async fn close(&self) {
        let close = self.connection.close(200, "bye".into());
        if tokio::time::timeout(Duration::from_secs(2), close)
            .await
            .is_err()
        {
            tracing::debug!("the broker did not confirm the close in time");
        }
    }
}

/// Settles a delivery by what handling it gave: ack on success; requeue after a pause when the error
/// is retryable (a dependency is down); dead-letter otherwise (malformed or a bug: retrying won't help).
pub async fn settle<T: std::fmt::Debug>(delivery: &Delivery, outcome: Result<T>, what: &str) {
    match outcome {
        Ok(value) => {
            tracing::debug!(what, ?value, "message handled");
            if let Err(err) = delivery.ack(BasicAckOptions::default()).await {
                tracing::warn!(what, error = %err, "ack failed; the message will be redelivered");
            }
        }
        Err(err) if err.is_retryable() => {
            tracing::warn!(what, error = %err, "handling failed; requeueing");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await;
        }
        Err(err) => {
            tracing::error!(what, error = %err, "handling failed for good; dead-lettering");
            let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
        }
    }
}

/// Decodes a JSON message body, mapping a malformed one to a non-retryable error.
pub fn decode<T: serde::de::DeserializeOwned>(delivery: &Delivery) -> Result<T> {
    serde_json::from_slice(&delivery.data).map_err(|err| {
        Error::new(
            crate::ErrorCode::InvalidInput,
            format!("malformed message: {err}"),
        )
    })
}
