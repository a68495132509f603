//! Shards: where a job's keys live.
//!
//! A job's record, its timers, its runs, their logs and fire markers are kept together in one of a
//! fixed number of shards (`redis.timer_shards`), the shard of the job's id. Each shard has a key
//! prefix of its own; on a cluster that prefix is a hash tag, chosen so that the shards spread evenly
//! over the 16,384 slots (and so over the primaries), while every script and transaction on a job
//! still touches one slot. A run's id is drawn in its job's shard ([`Shards::id_in`]), so the run is
//! found from its id alone. What belongs to an account or to the deployment (job indexes, quotas,
//! instances, costs, leases, metrics) stays under the plain prefix.
//!
//! With one shard (the default) the shard's prefix is the plain prefix: the key layout of a
//! deployment that never asked for shards is unchanged. The count is fixed for a deployment's life
//! (its keys are found through it): [`super::Store::check_layout`] refuses another.

/// Redis Cluster's slot count.
pub const SLOTS: u16 = 16_384;

pub use crate::config::MAX_SHARDS;

/// The slot Redis Cluster gives `key` (no hash tag: ids have no braces).
pub fn slot(key: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(key) % SLOTS
}

/// The fixed set of shards and their key prefixes.
#[derive(Debug, Clone)]
pub struct Shards {
    prefixes: Vec<String>,
}

impl Shards {
    /// `count` shards (at least one) of a deployment whose plain prefix is `key_prefix`.
    pub fn new(key_prefix: &str, count: u16, cluster: bool) -> Shards {
        let count = count.clamp(1, MAX_SHARDS);
        let prefixes = match (count, cluster) {
            (1, true) => vec![format!("{{{key_prefix}}}")],
            (1, false) => vec![key_prefix.to_string()],
            (_, false) => (0..count).map(|i| format!("{key_prefix}:s{i}")).collect(),
            (_, true) => (0..count)
                .map(|i| format!("{{{}}}", spread_tag(key_prefix, i, count)))
                .collect(),
        };
        Shards { prefixes }
    }

    pub fn count(&self) -> u16 {
        self.prefixes.len() as u16
    }

    /// The shard of a job or run id.
    pub fn of(&self, id: &str) -> u16 {
        match self.count() {
            1 => 0,
            n => slot(id.as_bytes()) % n,
        }
    }

    /// What every key of `shard` starts with.
    pub fn prefix(&self, shard: u16) -> &str {
        &self.prefixes[usize::from(shard) % self.prefixes.len()]
    }

    /// Every shard, in order.
    pub fn all(&self) -> impl Iterator<Item = u16> {
        0..self.count()
    }

    /// A fresh id in `shard`: drawn until one falls there (a shard count's worth of draws on average).
    pub fn id_in(&self, shard: u16) -> String {
        loop {
            let id = crate::ids::new_id();
            if self.of(&id) == shard {
                return id;
            }
        }
    }
}

/// A hash tag for shard `i` of `count` whose slot lies in the shard's own stretch of the slot space,
/// so that shards land evenly on primaries that split the slots evenly: `prefix:s{i}`, or the first
/// `prefix:s{i}.{k}` that lands there.
fn spread_tag(prefix: &str, i: u16, count: u16) -> String {
    let lands = |tag: &str| u32::from(slot(tag.as_bytes())) * u32::from(count) / u32::from(SLOTS);
    let plain = format!("{prefix}:s{i}");
    if lands(&plain) == u32::from(i) {
        return plain;
    }
    (0u32..)
        .map(|k| format!("{prefix}:s{i}.{k}"))
        .find(|tag| lands(tag) == u32::from(i))
        .unwrap_or(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shard_keeps_the_plain_prefix() {
        assert_eq!(Shards::new("spot", 1, false).prefix(0), "spot");
        assert_eq!(Shards::new("spot", 1, true).prefix(0), "{spot}");
        assert_eq!(Shards::new("spot", 1, false).of("anything"), 0);
    }

    #[test]
    fn slots_are_redis_clusters() {
        // Known answers from `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
    }

    #[test]
    fn cluster_shards_spread_evenly_over_the_slots() {
        let shards = Shards::new("spot", 16, true);
        for i in shards.all() {
            let prefix = shards.prefix(i);
            let tag = prefix.trim_start_matches('{').trim_end_matches('}');
            assert_eq!(
                u32::from(slot(tag.as_bytes())) * 16 / 16384,
                u32::from(i),
                "{prefix}"
            );
        }
    }

    #[test]
    fn ids_drawn_in_a_shard_are_of_it() {
        let shards = Shards::new("spot", 8, false);
        for shard in shards.all() {
            let id = shards.id_in(shard);
            assert_eq!(shards.of(&id), shard);
            assert!(crate::ids::is_id(&id));
        }
        let mut seen = [0u32; 8];
        for _ in 0..4000 {
            seen[usize::from(shards.of(&crate::ids::new_id()))] += 1;
        }
        assert!(seen.iter().all(|&n| n > 350), "{seen:?}");
    }
}
