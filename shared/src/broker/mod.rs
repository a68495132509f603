//! RabbitMQ: a self-healing handle on the broker, confirmed publishing, and consumers that resume.
//!
//! [`Broker`] owns a supervisor task that connects (with exponential backoff and jitter), declares the
//! [`Topology`], and watches the link; when the connection or its publishing channel dies, or a
//! publish finds the topology gone, it reconnects and declares everything again. Meanwhile every
//! publish fails at once with a retryable [`ErrorCode::Unavailable`](crate::ErrorCode) (a 503 at the
//! api, a requeue in a consumer), and [`Subscription`]s wait and then consume again. A service never
//! exits because RabbitMQ went away.

mod subscription;
mod topology;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::config::RabbitSettings;
use crate::error::{Error, Result};
use crate::messages::{CarriesFires, FireLabel, FireMessage, TerminateRequest};

pub use subscription::{serve, Subscription};
pub use topology::Topology;

/// Heartbeats every this many seconds (unless the URL says otherwise), so that a silent network
/// failure is noticed in seconds rather than the broker's default minute.
const HEARTBEAT_SECS: u16 = 10;
/// How often the supervisor looks at the link's health.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One live connection with its confirm-mode publishing channel.
pub(crate) struct Link {
    connection: Connection,
    publisher: Channel,
}

impl Link {
    fn alive(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }

    /// A consumer of `queue` on a channel of its own with `prefetch` unacknowledged messages at most.
    async fn consume(&self, queue: &str, prefetch: u16, tag: &str) -> Result<Consumer> {
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
}

/// What the handle and its supervisor share.
struct Shared {
    settings: RabbitSettings,
    topology: Topology,
    /// The current link; `None` while (re)connecting.
    link: watch::Sender<Option<Arc<Link>>>,
    /// Asks the supervisor to drop the link and connect afresh (the topology was found missing).
    reset: Notify,
    closed: AtomicBool,
    /// How many links have been opened: a link after the first follows a loss, across which the
    /// broker may have lost what it held (a wiped vhost, deleted queues).
    links_opened: watch::Sender<u64>,
}

/// The handle every service holds on RabbitMQ. Cheap to share behind an `Arc`; dropping it stops the
/// supervisor.
pub struct Broker {
    shared: Arc<Shared>,
    supervisor: tokio::task::JoinHandle<()>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

/// The backoff between connection attempts: 100 ms doubling to 1 s, for ever, each pause
/// lengthened by a random share of itself (backon's jitter), so 1–2 s apart once capped. A fire due
/// while RabbitMQ is back but a service has not yet tried again waits for that try: with a 5 s cap
/// the tries were 5–10 s apart. A failed try is a refused TCP connect or a handshake, cheap for
/// both sides.
pub(crate) fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(1))
        .with_jitter()
        .without_max_times()
        .build()
}

/// The URL with a heartbeat and a connection timeout added where it sets none.
fn with_defaults(url: &str) -> String {
    let mut url = url.to_string();
    for (key, value) in [
        ("heartbeat", HEARTBEAT_SECS.to_string()),
        (
            "connection_timeout",
            CONNECT_TIMEOUT.as_millis().to_string(),
        ),
    ] {
        if !url.contains(&format!("{key}=")) {
            let separator = if url.contains('?') { '&' } else { '?' };
            url = format!("{url}{separator}{key}={value}");
        }
    }
    url
}

impl Shared {
    /// One attempt on one node: connect, open the publisher, declare the topology.
    async fn open_link(&self, node: &SecretString) -> Result<Link> {
        let url = with_defaults(node.expose_secret());
        let connection = tokio::time::timeout(
            CONNECT_TIMEOUT,
            Connection::connect(&url, ConnectionProperties::default()),
        )
        .await
        .map_err(|_| Error::unavailable("rabbitmq: connecting timed out"))??;
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        self.topology.declare(&publisher).await?;
        Ok(Link {
            connection,
            publisher,
        })
    }

    /// Keeps a link up for as long as the handle lives.
    async fn supervise(self: Arc<Self>) {
        let mut backoff = reconnect_backoff();
        let mut attempt: u64 = 0;
        // The node tried: the next one in turn after a failed attempt or a lost link.
        let nodes = self.settings.nodes();
        let mut node = 0;
        while !self.closed.load(Ordering::Relaxed) {
            let link = match self.open_link(nodes[node % nodes.len()]).await {
                Ok(link) => Arc::new(link),
                Err(err) => {
                    node += 1;
                    attempt += 1;
                    let pause = backoff.next().unwrap_or(Duration::from_secs(1));
                    // The first failures are routine during a restart; say so once, then now and then.
                    if attempt == 1 || attempt.is_multiple_of(20) {
                        tracing::warn!(error = %err, attempt, ?pause, "RabbitMQ unreachable; retrying");
                    }
                    tokio::time::sleep(pause).await;
                    continue;
                }
            };
            if attempt > 0 {
                tracing::info!(
                    attempts = attempt,
                    "RabbitMQ reconnected; topology declared"
                );
            }
            attempt = 0;
            backoff = reconnect_backoff();
            self.link.send_replace(Some(link.clone()));
            self.links_opened.send_modify(|opened| *opened += 1);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(WATCH_INTERVAL) => if !link.alive() {
                        // The node went away: its peers hold the quorum queues too.
                        node += 1;
                        break;
                    },
                    // The topology was found missing on this node: declare it again here.
                    _ = self.reset.notified() => break,
                }
            }
            self.link.send_replace(None);
            if self.closed.load(Ordering::Relaxed) {
                break;
            }
            tracing::warn!("RabbitMQ link lost; reconnecting");
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                link.connection.close(200, "reconnecting".into()),
            )
            .await;
        }
    }
}

impl Broker {
    /// Starts the handle: it connects in the background and keeps reconnecting. Never fails.
    pub fn start(settings: &RabbitSettings) -> Broker {
        let (link, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            settings: settings.clone(),
            topology: Topology::new(settings),
            link,
            reset: Notify::new(),
            closed: AtomicBool::new(false),
            links_opened: watch::channel(0).0,
        });
        let supervisor = tokio::spawn(shared.clone().supervise());
        Broker { shared, supervisor }
    }

    /// Starts the handle and waits (up to 30 s) for the first link, topology declared: for tools and
    /// tests that want a broker now.
    pub async fn connect(settings: &RabbitSettings) -> Result<Broker> {
        let broker = Broker::start(settings);
        broker.wait_connected(Duration::from_secs(30)).await?;
        Ok(broker)
    }

    pub fn topology(&self) -> &Topology {
        &self.shared.topology
    }

    /// Counts the links opened (the first is 1); changes each time a new link is up, topology
    /// declared. A count past 1 means the link was lost and made again.
    pub fn links_opened(&self) -> watch::Receiver<u64> {
        self.shared.links_opened.subscribe()
    }

    /// Whether a link is up now (what `/healthcheck` reports).
    pub fn is_connected(&self) -> bool {
        self.shared
            .link
            .borrow()
            .as_ref()
            .is_some_and(|link| link.alive())
    }

    /// Waits up to `limit` for a link.
    pub async fn wait_connected(&self, limit: Duration) -> Result<()> {
        tokio::time::timeout(limit, self.wait_link())
            .await
            .map(|_| ())
            .map_err(|_| Error::unavailable("rabbitmq: not connected"))
    }

    /// The current link, or a retryable error while there is none.
    fn link(&self) -> Result<Arc<Link>> {
        self.shared
            .link
            .borrow()
            .clone()
            .filter(|link| link.alive())
            .ok_or_else(|| Error::unavailable("rabbitmq: not connected (reconnecting)"))
    }

    /// Waits until a link is up.
    pub(crate) async fn wait_link(&self) -> Arc<Link> {
        let mut changes = self.shared.link.subscribe();
        loop {
            if let Some(link) = changes.borrow_and_update().clone() {
                if link.alive() {
                    return link;
                }
            }
            if changes.changed().await.is_err() {
                // The supervisor is gone; poll rather than spin.
                tokio::time::sleep(WATCH_INTERVAL).await;
            }
        }
    }

    /// Drops the current link and connects afresh, declaring the topology again: for a consumer that
    /// found its queue gone, or a publish that found nothing bound.
    pub fn reset(&self, why: &str) {
        tracing::warn!(
            why,
            "RabbitMQ topology looks incomplete; reconnecting to declare it"
        );
        self.shared.reset.notify_one();
    }

    /// Declares the topology again on the current link.
    pub async fn declare_topology(&self) -> Result<()> {
        let link = self.link()?;
        self.shared.topology.declare(&link.publisher).await
    }

    /// A consumer of `queue` that survives reconnections: see [`Subscription`].
    pub fn subscribe(self: &Arc<Self>, queue: &str, prefetch: u16, tag: &str) -> Subscription {
        Subscription::new(self.clone(), queue, prefetch, tag)
    }

    /// Arms a timer that delivers `fire` to the fires queue at `due_at` (at once if it has passed).
    pub async fn arm_timer(&self, fire: &FireMessage, due_at: DateTime<Utc>) -> Result<()> {
        let delay = (due_at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        let units = self.topology().timers.units_of(delay);
        self.arm_timer_units(fire, units).await
    }

    /// Arms a timer (a [`FireMessage`] or a [`crate::messages::FireBatch`]) that waits exactly `units`
    /// in the levels (then the consumer holds the rest). Its properties and headers say what it
    /// carries ([`timer_properties`]): the levels are where a user looks for what is coming.
    pub async fn arm_timer_units<T: CarriesFires>(&self, fires: &T, units: u64) -> Result<()> {
        let routing_key = self.topology().timers.routing_key_for_units(units);
        let exchange = self.topology().timers.exchange_for(units);
        let payload = serde_json::to_vec(fires)?;
        let properties = timer_properties(&FireLabel::of(fires.fires()), units);
        self.publish_bytes(&exchange, &routing_key, &payload, properties)
            .await
    }

    /// Asks the reaper to terminate an instance.
    pub async fn request_terminate(&self, request: &TerminateRequest) -> Result<()> {
        self.publish("", &self.topology().terminate_queue(), request)
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
        self.publish_bytes(exchange, routing_key, &payload, properties)
            .await
    }

    /// Puts a message whose handling failed for good into the dead letters, saying why in its headers
    /// (`x-spot-error`, and `x-spot-queue` for where it came from), so that "Get messages" on
    /// `ns.dead` tells what went wrong without the logs.
    pub async fn dead_letter(&self, queue: &str, payload: &[u8], reason: &str) -> Result<()> {
        let mut headers = FieldTable::default();
        for (key, value) in [("x-spot-error", reason), ("x-spot-queue", queue)] {
            headers.insert(
                key.into(),
                lapin::types::AMQPValue::LongString(value.into()),
            );
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(headers);
        let dead = self.topology().dead_letters();
        self.publish_bytes(&dead, queue, payload, properties).await
    }

    async fn publish_bytes(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<()> {
        let link = self.link()?;
        let confirm = link
            .publisher
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                payload,
                properties,
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => {
                // Every destination the system publishes to is bound to a queue it owns: one that is
                // unroutable means queues were deleted under us. Declare them again; the caller retries.
                self.reset("a message was unroutable");
                Err(Error::unavailable(format!(
                    "rabbitmq: message to {exchange:?}/{routing_key:?} was unroutable"
                )))
            }
            Confirmation::Nack(_) => Err(Error::unavailable(format!(
                "rabbitmq: broker refused message to {exchange:?}/{routing_key:?}"
            ))),
            Confirmation::NotRequested => Err(Error::internal("publisher confirms are off")),
        }
    }

    /// A consumer of `queue` on the current link (it ends with the link; services use
    /// [`Broker::subscribe`], which resumes).
    pub async fn consume(&self, queue: &str, prefetch: u16, tag: &str) -> Result<Consumer> {
        self.link()?.consume(queue, prefetch, tag).await
    }

    /// How many messages wait in `queue` (a passive declare, on a channel of its own: a queue that is
    /// missing closes the channel it was asked on).
    pub async fn message_count(&self, queue: &str) -> Result<u32> {
        let channel = self.channel().await?;
        let options = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let declared = channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await;
        let _ = channel.close(200, "counted".into()).await;
        Ok(declared?.message_count())
    }

    /// Whether the broker holds the marker [`Broker::leave_state_marker`] leaves (see
    /// [`Topology::state_marker`]): without it, it has lost whatever it held when the marker was left.
    pub async fn state_marker_present(&self) -> Result<bool> {
        Ok(self.message_count(&self.topology().state_marker()).await? > 0)
    }

    /// Leaves the marker (persistent, the queue keeps one), confirmed by the broker.
    pub async fn leave_state_marker(&self) -> Result<()> {
        let properties = BasicProperties::default().with_delivery_mode(2);
        let marker = self.topology().state_marker();
        self.publish_bytes("", &marker, b"held", properties).await
    }

    /// The first queue of the topology that the broker does not have, if any (passive declares on a
    /// channel of their own, which a missing queue closes). Nothing consumes the timer levels, so a
    /// level deleted after the topology was declared would otherwise go unnoticed until a publish
    /// to it, and what the pump had handed to it would be lost without anyone knowing.
    pub async fn missing_queue(&self) -> Result<Option<String>> {
        let channel = self.channel().await?;
        let options = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        for queue in self.shared.topology.queue_names() {
            match channel
                .queue_declare(queue.as_str().into(), options, FieldTable::default())
                .await
            {
                Ok(_) => {}
                Err(err) if is_not_found(&err) => return Ok(Some(queue)),
                Err(err) => return Err(err.into()),
            }
        }
        let _ = channel.close(200, "checked".into()).await;
        Ok(None)
    }

    /// A plain channel, for tests and tools that fetch messages one at a time.
    pub async fn channel(&self) -> Result<Channel> {
        Ok(self.link()?.connection.create_channel().await?)
    }

    /// Stops reconnecting and closes the connection politely, without waiting long for a broker that
    /// does not answer.
    pub async fn close(&self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        self.supervisor.abort();
        let link = self.shared.link.send_replace(None);
        if let Some(link) = link {
            let close = link.connection.close(200, "bye".into());
            if tokio::time::timeout(Duration::from_secs(2), close)
                .await
                .is_err()
            {
                tracing::debug!("the broker did not confirm the close in time");
            }
        }
    }
}

/// A timer message's properties: persistent JSON of type `spot.fires`, and headers saying what it
/// carries: `x-spot-kind` (`scheduled`, `retry`, `run-now`, `mixed`), `x-spot-fires` (how many),
/// `x-spot-first-due` and `x-spot-last-due` (RFC 3339), `x-spot-jobs` (their ids), and
/// `x-spot-delay-units` (what it waits in the levels). RabbitMQ keeps them through every dead-letter
/// hop, beside its own `x-death`.
pub fn timer_properties(label: &FireLabel, units: u64) -> BasicProperties {
    let text = |value: String| lapin::types::AMQPValue::LongString(value.into());
    let instant = |at: Option<DateTime<Utc>>| {
        at.map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default()
    };
    let mut headers = FieldTable::default();
    headers.insert("x-spot-kind".into(), text(label.kind.to_string()));
    headers.insert(
        "x-spot-fires".into(),
        lapin::types::AMQPValue::LongLongInt(label.count as i64),
    );
    headers.insert("x-spot-first-due".into(), text(instant(label.first_due)));
    headers.insert("x-spot-last-due".into(), text(instant(label.last_due)));
    headers.insert("x-spot-jobs".into(), text(label.job_ids.clone()));
    headers.insert(
        "x-spot-delay-units".into(),
        lapin::types::AMQPValue::LongLongInt(units as i64),
    );
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_type("spot.fires".into())
        .with_app_id("spot-scheduler".into())
        .with_timestamp(Utc::now().timestamp().max(0) as u64)
        .with_headers(headers)
}

/// Settles a delivery taken from `queue` by what handling it gave: ack on success; requeue after a
/// pause when the error is transient (a dependency is down); otherwise (malformed, a bug, a Redis
/// error that will not clear: retrying won't help) dead-letter it at once with the reason in
/// `x-spot-error`, so that poison is set aside and seen instead of retried for ever.
pub async fn settle<T: std::fmt::Debug>(
    broker: &Broker,
    queue: &str,
    delivery: &Delivery,
    outcome: Result<T>,
    what: &str,
) {
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
            let reason = format!("{what}: {err}");
            match broker.dead_letter(queue, &delivery.data, &reason).await {
                Ok(()) => {
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                }
                Err(_) => {
                    // Without the copy, RabbitMQ's own dead-lettering keeps it (without the reason).
                    let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
                }
            }
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

/// Whether the broker answered "404 NOT_FOUND" (a queue or exchange that does not exist).
fn is_not_found(err: &lapin::Error) -> bool {
    matches!(err.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404)
}
