//! Shard leases: which provisioner pumps which timer shards.
//!
//! Timers are split over `redis.timer_shards` shards ([`spot_shared::store::Shards`]); each is pumped
//! by the provisioner holding its lease (`lease:pump:{shard}`, [`LEASE_TTL`] long, renewed every
//! [`RENEW_EVERY`]). Provisioners say they are alive on a roll, and each holds at most its fair
//! share, ⌈shards / provisioners alive⌉: one that joins finds shards freed as the others give up
//! their extras; the leases of one that crashed expire and are taken within [`LEASE_TTL`]; one that
//! stops gives its leases back at once. A shard without a holder for a few seconds costs no
//! lateness: the pump hands timers over a whole horizon ahead (33 s by default), so those due
//! meanwhile are already in RabbitMQ.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use spot_shared::Result;
use tokio::sync::Mutex;

use crate::Provisioner;

/// How long a shard's lease outlives its holder's last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(5);

/// How often a provisioner renews its leases, says it is alive and rebalances.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);

/// The roll provisioners say they are alive on.
const ROLL: &str = "provisioners";

/// The leases one provisioner holds: shard → the token to renew or release it with.
#[derive(Debug)]
pub struct ShardLeases {
    /// This process on the roll.
    pub(crate) member: String,
    held: Mutex<BTreeMap<u16, String>>,
    /// Whether the store's shard count was found to be ours (checked until it is).
    layout_checked: AtomicBool,
}

impl ShardLeases {
    pub fn new() -> ShardLeases {
        ShardLeases {
            member: spot_shared::ids::new_id(),
            held: Mutex::new(BTreeMap::new()),
            layout_checked: AtomicBool::new(false),
        }
    }
}

impl Default for ShardLeases {
    fn default() -> Self {
        ShardLeases::new()
    }
}

fn lease_name(shard: u16) -> String {
    format!("pump:{shard}")
}

impl Provisioner {
    /// The shards this provisioner pumps now.
    pub async fn held_shards(&self) -> Vec<u16> {
        self.shard_leases
            .held
            .lock()
            .await
            .keys()
            .copied()
            .collect()
    }

    /// One round: says this provisioner is alive, renews its leases (forgetting those lost), gives
    /// up what is beyond its fair share and takes free shards up to it. A store laid out for
    /// another shard count holds nothing (and says so) rather than pump the wrong keys.
    pub async fn hold_shards_once(&self) -> Result<()> {
        let shards = self.store.shards().count();
        if !self.shard_leases.layout_checked.load(Ordering::Relaxed) {
            if let Err(err) = self.store.check_layout().await {
                if !err.is_retryable() {
                    tracing::error!(error = %err, "pumping no timers");
                    self.release_shards().await;
                }
                return Err(err);
            }
            self.shard_leases
                .layout_checked
                .store(true, Ordering::Relaxed);
        }
        let alive = self
            .store
            .announce(ROLL, &self.shard_leases.member, LEASE_TTL)
            .await?
            .max(1);
        let fair = usize::from(shards).div_ceil(alive as usize);
        let mut held = self.shard_leases.held.lock().await;
        let mut lost = Vec::new();
        for (shard, token) in held.iter() {
            if !self
                .store
                .renew_lease(&lease_name(*shard), token, LEASE_TTL)
                .await?
            {
                lost.push(*shard);
            }
        }
        for shard in lost {
            tracing::warn!(shard, "shard lease lost");
            held.remove(&shard);
        }
        while held.len() > fair {
            let Some((shard, token)) = held.pop_last() else {
                break;
            };
            self.store.release_lease(&lease_name(shard), &token).await?;
            tracing::info!(shard, fair, "shard given up to balance the provisioners");
        }
        // Start from a shard of our own choosing, so provisioners starting together do not all
        // race for the same ones.
        let start = self.store.shards().of(&self.shard_leases.member);
        for offset in 0..shards {
            if held.len() >= fair {
                break;
            }
            let shard = (start + offset) % shards;
            if held.contains_key(&shard) {
                continue;
            }
            if let Some(token) = self.store.try_lease(&lease_name(shard), LEASE_TTL).await? {
                tracing::info!(shard, fair, "shard lease taken");
                held.insert(shard, token);
            }
        }
        Ok(())
    }

    /// Holds shard leases until dropped, a round every [`RENEW_EVERY`].
    pub(crate) async fn hold_shards_forever(&self) {
        let mut ticks = tokio::time::interval(RENEW_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(err) = self.hold_shards_once().await {
                if err.is_retryable() {
                    tracing::warn!(error = %err, "shard leases not renewed; retrying");
                }
            }
        }
    }

    /// Gives every lease back and leaves the roll (on a clean stop), so that the others take the
    /// shards at once instead of after [`LEASE_TTL`].
    pub async fn release_shards(&self) {
        let held = std::mem::take(&mut *self.shard_leases.held.lock().await);
        for (shard, token) in held {
            if let Err(err) = self.store.release_lease(&lease_name(shard), &token).await {
                tracing::warn!(shard, error = %err, "shard lease not released; it expires");
            }
        }
        if let Err(err) = self.store.withdraw(ROLL, &self.shard_leases.member).await {
            tracing::debug!(error = %err, "not taken off the roll; it expires");
        }
    }
}
