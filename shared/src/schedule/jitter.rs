//! Jitter: how long after its instant a fire starts (`policies.jitter_secs`), so that many jobs on
//! the same pattern do not all start in the same second.
//!
//! The delay is a hash of the job and the instant, not a random draw: the api's preview
//! (`GET /v1/jobs/{id}/next`), every provisioner and every redelivery of the fire compute the same
//! instant, so a fire is still recorded once.

use chrono::{DateTime, Duration, Utc};
use sha2::{Digest, Sha256};

/// The delay of job `job_id`'s fire due at `instant`: in `[0, max)`, and short of `room` (the time to
/// the schedule's next instant, `None` when there is none) by at least a millisecond, so that a
/// jittered fire never reaches the next one. Whole milliseconds, as every instant is kept.
pub fn delay(
    job_id: &str,
    instant: DateTime<Utc>,
    max: Duration,
    room: Option<Duration>,
) -> Duration {
    let bound = room.map_or(max, |room| max.min(room - Duration::milliseconds(1)));
    let Ok(bound_ms) = u64::try_from(bound.num_milliseconds()) else {
        return Duration::zero();
    };
    if bound_ms == 0 {
        return Duration::zero();
    }
    let digest = Sha256::new()
        .chain_update(job_id.as_bytes())
        .chain_update(instant.timestamp_millis().to_be_bytes())
        .finalize();
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    // Modulo bias is below 2^-40 for any bound a day long: immaterial.
    let ms = u64::from_be_bytes(head) % bound_ms;
    Duration::milliseconds(i64::try_from(ms).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{parse_time_zone, Schedule};

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn delays_stay_within_the_bound_and_are_the_same_each_time() {
        let max = Duration::seconds(30);
        let start = at("2026-12-06T00:00:00Z");
        let mut seen = std::collections::BTreeSet::new();
        for minute in 0..2000 {
            let instant = start + Duration::minutes(minute);
            let d = delay("job-a", instant, max, Some(Duration::minutes(1)));
            assert!(d >= Duration::zero() && d < max, "{d}");
            assert_eq!(d, delay("job-a", instant, max, Some(Duration::minutes(1))));
            seen.insert(d.num_seconds());
        }
        // Spread over the window, not piled at one end.
        assert_eq!(seen.len(), 30, "{seen:?}");
        // Another job, another delay (for almost every instant).
        let differ = (0..100)
            .filter(|m| {
                let instant = start + Duration::minutes(*m);
                delay("job-a", instant, max, None) != delay("job-b", instant, max, None)
            })
            .count();
        assert!(differ > 95, "{differ}");
    }

    #[test]
    fn a_delay_never_reaches_the_next_instant() {
        let instant = at("2026-12-06T00:00:00Z");
        for job in ["a", "b", "c", "d", "e", "f"] {
            let d = delay(job, instant, Duration::hours(1), Some(Duration::seconds(2)));
            assert!(d < Duration::seconds(2), "{d}");
        }
        assert_eq!(
            delay(
                "a",
                instant,
                Duration::hours(1),
                Some(Duration::milliseconds(1))
            ),
            Duration::zero()
        );
        assert_eq!(
            delay("a", instant, Duration::zero(), None),
            Duration::zero()
        );
    }

    /// Across the two days Berlin's clock changes, a daily 02:30 job's jittered fires stay within
    /// the window after each instant the schedule gives, and before the next.
    #[test]
    fn jittered_fires_keep_their_order_across_clock_changes() {
        let tz = parse_time_zone("Europe/Berlin", "timezone").unwrap();
        let schedule =
            Schedule::parse("30 2 * * *", tz, at("2026-01-01T00:00:00Z"), "schedule").unwrap();
        let max = Duration::hours(6);
        for (from, days) in [("2026-03-27T00:00:00Z", 4), ("2026-10-23T00:00:00Z", 4)] {
            let instants = schedule.upcoming(at(from), days);
            for pair in instants.windows(2) {
                let d = delay("job", pair[0], max, Some(pair[1] - pair[0]));
                assert!(d < max && pair[0] + d < pair[1]);
                assert_eq!(d, delay("job", pair[0], max, Some(pair[1] - pair[0])));
            }
        }
    }
}
