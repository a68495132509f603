//! The fires consumer: takes deliveries (fires, or batches of them) from the fires queue, each on a task
//! of its own (a delivery may be held for its sub-second remainder), and acks, requeues or dead-letters
//! by the error's code. Beside it run the timer pump and the reconciler, each on a task of its own so
//! that neither holds up the other or the consumer.

use std::future::Future;
use std::time::Duration;

use lapin::message::Delivery;
use spot_shared::broker::{decode, serve, settle};
use spot_shared::messages::FireDelivery;
use spot_shared::supervise::supervise;
use tokio::task::JoinHandle;

use crate::Provisioner;

/// How often a provisioner checks that every queue of the topology exists: at most this long a
/// deleted timer level goes unnoticed.
const TOPOLOGY_CHECK: Duration = Duration::from_secs(2);

impl Provisioner {
    /// Consumes fires, pumps timers from Redis to RabbitMQ and reconciles them until `shutdown`
    /// resolves; fires in hand then get `shutdown_grace_secs` to finish. RabbitMQ or Redis going away
    /// stops nothing for good: the consumer resumes on the next link, the pump and the reconciler
    /// retry on their next round.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let queue = self.broker.topology().fires_queue();
        let mut fires =
            self.broker
                .subscribe(&queue, self.settings.provisioner.prefetch, "provisioner");
        tracing::info!(queue, "provisioner starting");
        let leases = self.supervised("shard_leases", |this| async move {
            this.hold_shards_forever().await
        });
        let pump = self.supervised(
            "timer_pump",
            |this| async move { this.pump_forever().await },
        );
        let reconciler = self.supervised("reconciler", |this| async move {
            this.reconcile_forever().await
        });
        let rearmer = self.supervised("check_broker_after_links", |this| async move {
            this.check_broker_after_links().await
        });
        let topology_watch = self.supervised("topology_watch", |this| async move {
            this.watch_topology().await
        });
        let grace = Duration::from_secs(self.settings.provisioner.shutdown_grace_secs);
        let this = self.clone();
        serve(&mut fires, shutdown, grace, move |delivery| {
            let this = this.clone();
            async move { this.process_delivery(delivery).await }
        })
        .await;
        // A pump round takes timers out of Redis, then publishes them: aborted in between, they would
        // wait for the reconciler (its grace and period late, or for ever with none running). So
        // the round under way ends first, and the pump is stopped holding the lock, between rounds.
        let between_rounds =
            tokio::time::timeout(grace, self.pump_round.clone().lock_owned()).await;
        if between_rounds.is_err() {
            tracing::warn!(
                ?grace,
                "the timer pump's round did not end within the grace; stopped mid-round"
            );
        }
        pump.abort();
        drop(between_rounds);
        leases.abort();
        self.release_shards().await;
        reconciler.abort();
        rearmer.abort();
        topology_watch.abort();
        self.broker.close().await;
        Ok(())
    }

    /// Runs the loop `body` makes of this provisioner under [`supervise`]: one that panics or ends is
    /// counted and started again.
    fn supervised<Fut>(&self, name: &'static str, body: fn(Provisioner) -> Fut) -> JoinHandle<()>
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let this = self.clone();
        supervise(name, Some(self.store.clone()), move || body(this.clone()))
    }

    /// Reconciles every period (one provisioner per period, by lease) until dropped.
    async fn reconcile_forever(&self) {
        let mut ticks = tokio::time::interval(self.reconcile_period());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(err) = self.reconcile_if_due().await {
                tracing::warn!(error = %err, "reconcile failed; the next period retries");
            }
        }
    }

    /// On each new link to RabbitMQ (the first one too), hands the fires RabbitMQ may have lost back
    /// to the pump (see [`Provisioner::check_broker_after_link`]), until dropped.
    async fn check_broker_after_links(&self) {
        let mut links = self.broker.links_opened();
        // The first link may be up before this task starts, so the count is read, not only waited for.
        let mut checked = 0;
        loop {
            let opened = *links.borrow_and_update();
            if opened > checked {
                checked = opened;
                let mut backoff = std::time::Duration::from_millis(200);
                // Redis, or the link itself, may be away: keep trying until the check is done. A
                // link lost meanwhile is checked again after this one, as a link after a loss.
                while let Err(err) = self.check_broker_after_link(opened > 1).await {
                    tracing::warn!(error = %err, "checking RabbitMQ after a new link failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                }
            }
            if links.changed().await.is_err() {
                return;
            }
        }
    }

    /// Looks for every queue of the topology each [`TOPOLOGY_CHECK`] and, when one is gone, makes the
    /// link again (which declares it again and re-arms the horizon, see
    /// [`Provisioner::check_broker_after_link`]), until dropped. A deleted fires queue cancels its
    /// consumer and is noticed at once, but nothing consumes the timer levels: a level deleted
    /// after the link was made (the rest of a wipe) would lose its timers until the reconciler
    /// found them overdue by its grace.
    async fn watch_topology(&self) {
        let mut ticks = tokio::time::interval(TOPOLOGY_CHECK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if !self.broker.is_connected() {
                continue;
            }
            match self.broker.missing_queue().await {
                Ok(Some(queue)) => self.broker.reset(&format!("queue {queue} is gone")),
                Ok(None) => {}
                // The link went away meanwhile: the next link declares the topology anyway.
                Err(err) => tracing::debug!(error = %err, "topology not checked"),
            }
        }
    }

    /// Processes one delivery (a fire or a batch of them): handle it, then ack, requeue (retryable)
    /// or dead-letter (malformed, bug).
    pub async fn process_delivery(&self, delivery: Delivery) {
        let queue = self.broker.topology().fires_queue();
        let (outcome, what) = match decode::<FireDelivery>(&delivery) {
            Ok(FireDelivery::One(fire)) => (self.handle_fire(&fire).await.map(|_| ()), "fire"),
            Ok(FireDelivery::Batch(batch)) => {
                (self.handle_batch(&batch).await.map(|_| ()), "fire batch")
            }
            Err(err) => (Err(err), "fire"),
        };
        settle(&self.broker, &queue, &delivery, outcome, what).await
    }
}
