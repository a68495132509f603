//! The topology the system owns: names of its exchanges and queues, and their declaration.
//!
//! Everything is durable and persistent. Queues are quorum queues; the timer levels dead-letter
//! at-least-once (which RabbitMQ allows only with `x-overflow: reject-publish`), so a timer survives a
//! broker restart and is never dropped between levels. Names, for namespace `ns`:
//! - `ns.timer.levelKK` (exchange and queue per level, see [`crate::timer`]) and `ns.timer.due`
//! - `ns.fires`: every due timer ends here; the provisioner consumes it
//! - `ns.terminate`: instances to terminate; the reaper consumes it
//! - `ns.dead`: messages a consumer refused as malformed, kept for inspection
//! - `ns.marker`: one message a provisioner leaves, never consumed: a broker found without it has
//!   lost what it held (its queues deleted, its vhost or node replaced), whoever declared the
//!   queues again since; the provisioner then hands the timers it had given it back to the pump

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::config::RabbitSettings;
use crate::error::{Error, Result};
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

    pub fn state_marker(&self) -> String {
        format!("{}.marker", self.namespace)
    }

    /// Every queue [`Topology::declare`] makes: what a check of the topology looks for.
    pub fn queue_names(&self) -> Vec<String> {
        let mut names = vec![
            self.dead_letters(),
            self.fires_queue(),
            self.terminate_queue(),
            self.state_marker(),
        ];
        names.extend((0..self.timers.levels()).map(|level| self.timers.level_name(level)));
        names
    }

    /// Declares every exchange, queue and binding on `channel`. Idempotent: the broker handle calls
    /// it on every (re)connection, so a node that lost its definitions gets them back.
    pub async fn declare(&self, channel: &Channel) -> Result<()> {
        let topology = self;
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

        // The marker: one message at most (a second left by a provisioner starting beside another
        // pushes the first out), reached through the default exchange.
        let marker_args = table(&[quorum.clone(), ("x-max-length", AMQPValue::LongLongInt(1))]);
        channel
            .queue_declare(
                topology.state_marker().as_str().into(),
                durable_queue(),
                marker_args,
            )
            .await?;

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
