//! A consumer that outlives its connection: when the link drops, the queue is deleted or the broker
//! cancels the consumer, it waits for the next link and consumes again. Deliveries that were in hand
//! when the link dropped are redelivered by RabbitMQ (their acks fail, which is logged and harmless:
//! every handler is idempotent).

use std::sync::Arc;
use std::time::Duration;

use std::panic::AssertUnwindSafe;

use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use lapin::{Acker, Consumer};

use super::{reconnect_backoff, Broker};

pub struct Subscription {
    broker: Arc<Broker>,
    queue: String,
    prefetch: u16,
    tag: String,
    consumer: Option<Consumer>,
    backoff: Box<dyn Iterator<Item = Duration> + Send>,
}

impl Subscription {
    pub(super) fn new(broker: Arc<Broker>, queue: &str, prefetch: u16, tag: &str) -> Subscription {
        Subscription {
            broker,
            queue: queue.to_string(),
            prefetch,
            tag: tag.to_string(),
            consumer: None,
            backoff: Box::new(reconnect_backoff()),
        }
    }

    /// Whether a consumer is attached now.
    pub fn is_consuming(&self) -> bool {
        self.consumer.is_some()
    }

    /// The next delivery, waiting through any number of reconnections. Cancel-safe: dropping the
    /// future loses no delivery (one not yet taken stays with the consumer).
    pub async fn next(&mut self) -> Delivery {
        let mut links = self.broker.shared.link.subscribe();
        loop {
            let Some(consumer) = self.consumer.as_mut() else {
                let link = self.broker.wait_link().await;
                links.borrow_and_update();
                match link.consume(&self.queue, self.prefetch, &self.tag).await {
                    Ok(consumer) => {
                        tracing::info!(queue = %self.queue, "consuming");
                        self.consumer = Some(consumer);
                        self.backoff = Box::new(reconnect_backoff());
                    }
                    Err(err) => {
                        // Most likely the queue is gone (a wiped or replaced node): declare it again.
                        tracing::warn!(queue = %self.queue, error = %err, "cannot consume; redeclaring");
                        self.broker.reset("a queue could not be consumed");
                        let pause = self.backoff.next().unwrap_or(Duration::from_secs(1));
                        tokio::time::sleep(pause).await;
                    }
                }
                continue;
            };
            let lost = tokio::select! {
                delivery = consumer.next() => match delivery {
                    Some(Ok(delivery)) => return delivery,
                    Some(Err(err)) => format!("consumer failed: {err}"),
                    None => "consumer cancelled by the broker".to_string(),
                },
                // A new link, or none: this consumer's channel went with the old one.
                _ = links.changed() => "the link changed".to_string(),
            };
            tracing::warn!(queue = %self.queue, why = %lost, "resuming consumption");
            self.consumer = None;
        }
    }
}

/// Takes deliveries from `subscription`, each handled on a task of its own by `handle`, until
/// `shutdown` resolves; then takes no more and gives those in hand up to `grace` to finish. Any still
/// running then are dropped unacknowledged, and RabbitMQ gives them to another consumer once this
/// connection closes: a stop hands back what it holds and loses nothing.
///
/// A handler that panics (a bug, or a value nothing foresaw) costs only its own message: the panic is
/// caught, the message goes to the dead letters with the panic's text, and the consumer goes on.
/// Left unacknowledged instead, each such message would hold one of the consumer's prefetch slots
/// until the connection closed, and enough of them would stop every account's fires.
pub async fn serve<H, F>(
    subscription: &mut Subscription,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
    handle: H,
) where
    H: Fn(Delivery) -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut in_flight = tokio::task::JoinSet::new();
    let (broker, queue) = (subscription.broker.clone(), subscription.queue.clone());
    tokio::pin!(shutdown);
    'taking: loop {
        // Kept across finished tasks: `next` is never dropped half-way except to stop.
        let next = subscription.next();
        tokio::pin!(next);
        let delivery = loop {
            tokio::select! {
                _ = &mut shutdown => break 'taking,
                delivery = &mut next => break delivery,
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            }
        };
        in_flight.spawn(dead_letter_on_panic(
            broker.clone(),
            queue.clone(),
            delivery.acker.clone(),
            delivery.data.clone(),
            handle(delivery),
        ));
    }
    let in_hand = in_flight.len();
    let drained = tokio::time::timeout(grace, async {
        while in_flight.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            in_hand,
            left = in_flight.len(),
            "stop: grace over; handing the rest back to RabbitMQ"
        );
        in_flight.abort_all();
    } else if in_hand > 0 {
        tracing::info!(in_hand, "stop: every delivery in hand finished");
    }
}

/// Runs `work` (the handling of one delivery); if it panics, dead-letters the delivery with the
/// panic's text. If the handler had settled the delivery before panicking, the acker is used already
/// and nothing more is sent.
async fn dead_letter_on_panic(
    broker: Arc<Broker>,
    queue: String,
    acker: Acker,
    payload: Vec<u8>,
    work: impl std::future::Future<Output = ()> + Send,
) {
    let Err(panic) = AssertUnwindSafe(work).catch_unwind().await else {
        return;
    };
    let reason = format!("handler panicked: {}", panic_text(panic.as_ref()));
    tracing::error!(queue, reason, "dead-lettering the message");
    if !acker.usable() {
        return;
    }
    match broker.dead_letter(&queue, &payload, &reason).await {
        Ok(()) => {
            let _ = acker.ack(BasicAckOptions::default()).await;
        }
        Err(err) => {
            // Without the copy, RabbitMQ's own dead-lettering keeps the message (without the reason).
            tracing::warn!(queue, error = %err, "dead letter not published; rejecting instead");
            let _ = acker.reject(BasicRejectOptions { requeue: false }).await;
        }
    }
}

/// The message a panic carries (`panic!("...")` gives a `&str` or a `String`).
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}
