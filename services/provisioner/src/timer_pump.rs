//! The timer pump: hands timers from Redis to RabbitMQ shortly before they are due.
//!
//! Redis holds every job's next fire time (`timers:unarmed` until armed), so the api answers after its
//! Redis write alone and RabbitMQ never holds the millions of timers due next month. With a level `k`
//! (`timer_pump_level`, 5 by default) a timer is handed over `2^k + 1` units ahead and waits in that
//! one TTL level (one hop, instead of one per set bit of a long delay), where the management UI shows
//! it coming; a timer taken too late for its level (a job due sooner than the horizon) takes the levels
//! of its remaining delay, as any does. With `-1` a timer is handed over in its last unit straight to
//! the fires queue: no dead-letter hop.
//!
//! The timers of a round travel several to a message ([`FireBatch`], `pump_message_fires` each), in
//! order of their instants: RabbitMQ's work is per message, and a busy second has thousands due.
//!
//! Retries and run-nows travel the same way: they are written to Redis (`timers:delayed` and the
//! unarmed set) in the step that asks for them, so a broker outage delays them and loses none.
//!
//! Timers are split over shards; each provisioner pumps the shards it holds the lease of
//! ([`crate::shard_leases`]), so the pumping is shared out as provisioners are added. Taking timers
//! is atomic in Redis besides, so a shard pumped by two (a lease changing hands) hands each timer
//! over once. A provisioner that is stopped lets the pump's round under way end first (it holds
//! `pump_round`), so a restart leaves no timer taken and not published. A timer taken by a pump that
//! dies before publishing (a crash), or lost with a wiped broker, goes back to the unarmed set when
//! the reconciler finds it overdue ([`Provisioner::reconcile_once`]).
//!
//! Timers due beyond `far_timer_horizon_secs` are parked in compact buckets (the store's
//! `far_timers`); every `far_timer_promote_secs` the pump of each shard moves the horizon on and
//! brings in those it passed ([`Provisioner::promote`]), long before the pump's own horizon
//! reaches them.

use std::time::Duration;

use chrono::Utc;
use futures::future::join_all;
use spot_shared::messages::FireBatch;
use spot_shared::store::{Promoted, UnarmedTimer};
use spot_shared::Result;

use crate::Provisioner;

impl Provisioner {
    /// How far ahead of their fire time timers are handed over, and the units they then wait.
    pub fn pump_horizon(&self) -> (chrono::Duration, Option<u64>) {
        let rabbit = &self.settings.rabbitmq;
        let level_units = u8::try_from(rabbit.timer_pump_level)
            .ok()
            .map(|level| 1u64 << level.min(rabbit.timer_levels.saturating_sub(1)));
        let ahead_ms = (level_units.unwrap_or(0) + 1) * rabbit.timer_unit_ms + rabbit.timer_lead_ms;
        (chrono::Duration::milliseconds(ahead_ms as i64), level_units)
    }

    /// One round over every shard, leases or not (what tests drive): see [`Provisioner::pump_shard`].
    pub async fn pump_once(&self) -> Result<usize> {
        let mut handed = 0;
        for shard in self.store.shards().all() {
            handed += self.pump_shard(shard).await?;
        }
        Ok(handed)
    }

    /// One round over the shards this provisioner holds; returns the most any one of them handed
    /// over (a full round means more are waiting there). The round holds `pump_round`: it takes
    /// timers out of Redis before it publishes them, so it must not be dropped in between.
    async fn pump_held_once(&self) -> Result<usize> {
        let _round = self.pump_round.lock().await;
        let rounds = join_all(
            self.held_shards()
                .await
                .into_iter()
                .map(|shard| self.pump_shard(shard)),
        )
        .await;
        let mut most = 0;
        for round in rounds {
            most = most.max(round?);
        }
        Ok(most)
    }

    /// One round in `shard`: takes the timers coming within the horizon and publishes them, several
    /// per message (in order of their instants). Returns how many timers it handed over.
    pub async fn pump_shard(&self, shard: u16) -> Result<usize> {
        let (ahead, level_units) = self.pump_horizon();
        let settings = &self.settings.provisioner;
        let timers = self
            .store
            .claim_unarmed_in(shard, Utc::now() + ahead, settings.pump_batch.max(1))
            .await?;
        if timers.is_empty() {
            return Ok(0);
        }
        let levels = &self.broker.topology().timers;
        let groups: Vec<&[UnarmedTimer]> =
            timers.chunks(settings.pump_message_fires.max(1)).collect();
        let outcomes = join_all(groups.iter().map(|group| async move {
            let batch = FireBatch {
                fires: group.iter().map(|timer| timer.fire.clone()).collect(),
            };
            // The batch waits for its earliest timer; the consumer holds each fire for the rest.
            let delay = (group[0].due - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO);
            let units = match level_units {
                // Wait in that one level; the consumer holds the rest (under a unit).
                Some(level_units) if levels.units_of(delay) >= level_units => level_units,
                _ => levels.units_of(delay),
            };
            self.broker.arm_timer_units(&batch, units).await
        }))
        .await;
        let failed: Vec<UnarmedTimer> = groups
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| outcome.is_err())
            .flat_map(|(group, _)| group.iter().cloned())
            .collect();
        if let Some(Err(err)) = outcomes.iter().find(|o| o.is_err()) {
            tracing::warn!(failed = failed.len(), error = %err, "timers not armed; retrying next round");
            self.store.unclaim(&failed).await?;
        }
        Ok(timers.len() - failed.len())
    }

    /// Brings the parked timers of `shards` that came within the far horizon into `timers`. Each
    /// step is atomic, so it may be stopped anywhere.
    pub async fn promote(&self, shards: impl IntoIterator<Item = u16>) -> Result<Promoted> {
        let horizon = Utc::now()
            + chrono::Duration::seconds(self.settings.provisioner.far_timer_horizon_secs as i64);
        let mut all = Promoted::default();
        for shard in shards {
            let promoted = self.store.promote_far_timers(shard, horizon).await?;
            all.moved += promoted.moved;
            all.dropped += promoted.dropped;
        }
        if all.moved + all.dropped > 0 {
            tracing::info!(
                moved = all.moved,
                dropped = all.dropped,
                "far timers brought in"
            );
        }
        Ok(all)
    }

    /// Pumps the shards it holds until the future is dropped: at once again after a full round,
    /// else after the interval; and brings their far timers in every promote period.
    pub async fn pump_forever(&self) {
        let idle = Duration::from_millis(self.settings.provisioner.pump_interval_ms.max(1));
        let promote_every = Duration::from_secs(self.settings.provisioner.far_timer_promote_secs);
        let mut next_promotion = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_promotion {
                // Once this provisioner holds a shard; one taken over later waits a period at most.
                let held = self.held_shards().await;
                if !held.is_empty() {
                    match self.promote(held).await {
                        Ok(_) => next_promotion = tokio::time::Instant::now() + promote_every,
                        Err(err) => {
                            tracing::warn!(error = %err, "far timers not brought in; retrying")
                        }
                    }
                }
            }
            let pause = match self.pump_held_once().await {
                Ok(n) if n >= self.settings.provisioner.pump_batch => Duration::ZERO,
                Ok(_) => idle,
                Err(err) => {
                    tracing::warn!(error = %err, "timer pump failed");
                    idle
                }
            };
            tokio::time::sleep(pause).await;
        }
    }
}
