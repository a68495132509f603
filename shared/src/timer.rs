//! Delays on a stock RabbitMQ, without the delayed-message plugin.
//!
//! Level *k* is a queue whose every message waits 2^k units (its queue TTL), chained to the level below
//! by a dead-letter exchange. A timer's routing key spells its delay in binary, highest level first
//! (`0.0.1.0.1.fire`), and each level's exchange routes on its own bit: a set bit parks the message in
//! that level's queue, a clear bit passes it straight down. A message therefore waits only in the levels
//! of its set bits, behind messages with exactly the same wait, so nothing waits behind a longer delay.
//! Level 0 dead-letters into the due exchange, which delivers to the system's fires queue. The consumer
//! holds an early message for the remainder below one unit.
//!
//! This module is the pure arithmetic; [`crate::broker`] declares the queues and publishes.

use std::time::Duration;

/// The last word of a timer's routing key: where it is delivered when due.
pub const FIRE_DESTINATION: &str = "fire";

/// The shape of the timer levels: how many, and how long one unit is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerLevels {
    namespace: String,
    levels: u8,
    unit_ms: u64,
    /// Timers are routed this much early, so that dead-letter hops make them arrive before their time
    /// rather than after it; the consumer holds them for the difference.
    lead_ms: u64,
}

impl TimerLevels {
    pub fn new(namespace: &str, levels: u8, unit_ms: u64, lead_ms: u64) -> Self {
        assert!((1..=40).contains(&levels), "timer levels must be 1..=40");
        assert!(unit_ms > 0, "timer unit must be positive");
        TimerLevels {
            namespace: namespace.to_string(),
            levels,
            unit_ms,
            lead_ms,
        }
    }

    pub fn levels(&self) -> u8 {
        self.levels
    }

    /// The longest delay the levels can express; longer timers are re-armed when they arrive.
    pub fn max_delay(&self) -> Duration {
        Duration::from_millis(self.max_units() * self.unit_ms)
    }

    fn max_units(&self) -> u64 {
        (1u64 << self.levels) - 1
    }

    /// Both the exchange and the queue of level `k` carry this name.
    pub fn level_name(&self, level: u8) -> String {
        format!("{}.timer.level{:02}", self.namespace, level)
    }

    /// The exchange that level 0 dead-letters into.
    pub fn due_exchange(&self) -> String {
        format!("{}.timer.due", self.namespace)
    }

    /// Where a timer is published: the top level's exchange.
    pub fn entry_exchange(&self) -> String {
        self.level_name(self.levels - 1)
    }

    /// Where a timer of `units` is best published: the exchange of its highest set bit (every level
    /// above would only pass it down), or the due exchange for no wait at all. Skipping the clear top
    /// levels saves the broker one exchange-to-exchange hop each.
    pub fn exchange_for(&self, units: u64) -> String {
        match units.checked_ilog2() {
            Some(highest) => self.level_name(highest as u8),
            None => self.due_exchange(),
        }
    }

    /// How long every message in level `k` waits.
    pub fn level_ttl_ms(&self, level: u8) -> u64 {
        (1u64 << level) * self.unit_ms
    }

    /// Where level `k` sends messages whose bit is clear, and where its queue dead-letters to.
    pub fn next_exchange(&self, level: u8) -> String {
        if level == 0 {
            self.due_exchange()
        } else {
            self.level_name(level - 1)
        }
    }

    /// The binding keys of level `k`'s exchange: (bit set → its queue, bit clear → the next exchange).
    pub fn level_patterns(&self, level: u8) -> (String, String) {
        let skipped = (self.levels - 1 - level) as usize;
        let prefix = "*.".repeat(skipped);
        (format!("{prefix}1.#"), format!("{prefix}0.#"))
    }

    /// The routing key for a timer due in `delay`, and the units of waiting it encodes.
    pub fn routing_key(&self, delay: Duration) -> (String, u64) {
        let units = self.units_of(delay);
        (self.routing_key_for_units(units), units)
    }

    /// Whole units a delay waits in the levels (the lead and the fraction left to the consumer).
    pub fn units_of(&self, delay: Duration) -> u64 {
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        (delay_ms.saturating_sub(self.lead_ms) / self.unit_ms).min(self.max_units())
    }

    /// The routing key that makes a message wait `units` (the levels of its set bits).
    pub fn routing_key_for_units(&self, units: u64) -> String {
        let units = units.min(self.max_units());
        let mut key = String::with_capacity(self.levels as usize * 2 + FIRE_DESTINATION.len());
        for level in (0..self.levels).rev() {
            key.push(if units >> level & 1 == 1 { '1' } else { '0' });
            key.push('.');
        }
        key.push_str(FIRE_DESTINATION);
        key
    }

    /// Which levels a routing key makes its message wait in.
    pub fn levels_of(&self, routing_key: &str) -> Vec<u8> {
        routing_key
            .split('.')
            .take(self.levels as usize)
            .enumerate()
            .filter(|(_, bit)| *bit == "1")
            .map(|(position, _)| self.levels - 1 - position as u8)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels() -> TimerLevels {
        TimerLevels::new("spot", 4, 1000, 0)
    }

    /// A topic pattern matcher good enough for our patterns (`*` one word, trailing `#` the rest).
    fn matches(pattern: &str, key: &str) -> bool {
        let pattern: Vec<&str> = pattern.split('.').collect();
        let key: Vec<&str> = key.split('.').collect();
        for (i, word) in pattern.iter().enumerate() {
            match *word {
                "#" => return true,
                "*" if i < key.len() => {}
                literal if key.get(i) == Some(&literal) => {}
                _ => return false,
            }
        }
        pattern.len() == key.len()
    }

    /// Follows a key through the exchanges as RabbitMQ would and sums the waits.
    fn simulate(levels: &TimerLevels, key: &str) -> u64 {
        let mut waited = 0;
        for level in (0..levels.levels()).rev() {
            let (set, clear) = levels.level_patterns(level);
            let in_queue = matches(&set, key);
            assert_ne!(
                in_queue,
                matches(&clear, key),
                "exactly one binding matches"
            );
            if in_queue {
                waited += levels.level_ttl_ms(level);
            }
        }
        waited
    }

    #[test]
    fn keys_spell_the_delay_in_binary() {
        let levels = levels();
        assert_eq!(
            levels.routing_key(Duration::from_millis(0)).0,
            "0.0.0.0.fire"
        );
        assert_eq!(
            levels.routing_key(Duration::from_millis(5_999)).0,
            "0.1.0.1.fire"
        );
        assert_eq!(
            levels.routing_key(Duration::from_secs(15)).0,
            "1.1.1.1.fire"
        );
        assert_eq!(levels.levels_of("0.1.0.1.fire"), vec![2, 0]);
    }

    #[test]
    fn a_message_waits_exactly_its_units_and_never_more_than_its_delay() {
        let levels = levels();
        for delay_ms in (0..20_000).step_by(250) {
            let delay = Duration::from_millis(delay_ms);
            let (key, units) = levels.routing_key(delay);
            let waited = simulate(&levels, &key);
            assert_eq!(waited, units * 1000);
            assert!(waited <= delay_ms, "{delay_ms}: waited {waited}");
            if delay_ms < 15_000 {
                assert!(delay_ms - waited < 1000, "remainder below one unit");
            }
        }
    }

    #[test]
    fn delays_beyond_the_top_are_capped() {
        let levels = levels();
        let (key, units) = levels.routing_key(Duration::from_secs(3600));
        assert_eq!(units, 15);
        assert_eq!(key, "1.1.1.1.fire");
        assert_eq!(levels.max_delay(), Duration::from_secs(15));
    }

    #[test]
    fn lead_routes_early() {
        let levels = TimerLevels::new("spot", 4, 1000, 100);
        assert_eq!(levels.routing_key(Duration::from_millis(2_050)).1, 1);
        assert_eq!(levels.routing_key(Duration::from_millis(2_100)).1, 2);
        assert_eq!(levels.routing_key(Duration::from_millis(50)).1, 0);
    }

    #[test]
    fn timers_enter_at_their_highest_set_bit() {
        let levels = levels();
        assert_eq!(levels.exchange_for(0), "spot.timer.due");
        assert_eq!(levels.exchange_for(1), "spot.timer.level00");
        assert_eq!(levels.exchange_for(5), "spot.timer.level02");
        assert_eq!(levels.exchange_for(15), "spot.timer.level03");
        // Entering there skips only levels whose bit is clear: the wait is the same.
        for delay_secs in 0..16u64 {
            let (key, units) = levels.routing_key(Duration::from_secs(delay_secs));
            let entry = levels.exchange_for(units);
            let top = (0..levels.levels())
                .rev()
                .find(|k| levels.level_name(*k) == entry);
            let waited: u64 = match top {
                Some(top) => (0..=top)
                    .filter(
                        |k| matches!(levels.level_patterns(*k).0, ref set if matches(set, &key)),
                    )
                    .map(|k| levels.level_ttl_ms(k))
                    .sum(),
                None => 0,
            };
            assert_eq!(waited, units * 1000, "{key} entering at {entry}");
        }
    }

    #[test]
    fn names_and_chain() {
        let levels = levels();
        assert_eq!(levels.entry_exchange(), "spot.timer.level03");
        assert_eq!(levels.next_exchange(3), "spot.timer.level02");
        assert_eq!(levels.next_exchange(0), "spot.timer.due");
        assert_eq!(levels.level_patterns(3), ("1.#".into(), "0.#".into()));
        assert_eq!(
            levels.level_patterns(0),
            ("*.*.*.1.#".into(), "*.*.*.0.#".into())
        );
        assert_eq!(levels.level_ttl_ms(3), 8000);
    }
}
