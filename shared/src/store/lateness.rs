//! The firing lateness histogram: how long after its instant each fire's run was written, kept in Redis
//! so that every provisioner adds to one histogram and the api serves it as
//! `spot_scheduler_fire_lateness_seconds`.
//!
//! Lateness is measured once the write is done, so it counts the whole way: timer, pump, queue, hold,
//! and Redis itself.
//!
//! Beside it, fires per minute: one counter per wall-clock minute (`metrics:fires:{minute}`, kept two
//! hours), for the dashboard's chart of the last hour.
//!
//! Both are kept per timer shard (a fire's in the shard of its job) and summed when read: they are
//! written with every batch of fires, so on one key they would be the one hot spot left when the
//! shards spread everything else over a cluster's primaries.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::Store;
use crate::error::Result;

/// Upper bounds of the buckets in milliseconds (Prometheus `le`); above the last, `+Inf`.
pub const LATENESS_BUCKETS_MS: [u64; 14] = [
    1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000,
];

const HISTOGRAM_KEY: &str = "metrics:fire_lateness";

/// How long a minute's fire counter is kept.
const FIRES_PER_MINUTE_TTL_SECS: i64 = 2 * 3600;

/// The minute an instant falls in, as minutes since the epoch.
fn minute_of(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(60)
}

/// Observations per bucket (not cumulative), their count and their sum.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatenessHistogram {
    /// One per bound of [`LATENESS_BUCKETS_MS`], then one for `+Inf`.
    pub buckets: [u64; LATENESS_BUCKETS_MS.len() + 1],
    pub count: u64,
    pub sum_ms: u64,
}

impl LatenessHistogram {
    /// Adds the lateness of a fire scheduled at `scheduled_at` and written at `written_at` (a fire
    /// written early, by clock skew, counts as on time).
    pub fn observe(&mut self, scheduled_at: DateTime<Utc>, written_at: DateTime<Utc>) {
        let ms = u64::try_from((written_at - scheduled_at).num_milliseconds()).unwrap_or(0);
        let bucket = LATENESS_BUCKETS_MS
            .iter()
            .position(|&bound| ms <= bound)
            .unwrap_or(LATENESS_BUCKETS_MS.len());
        self.buckets[bucket] += 1;
        self.count += 1;
        self.sum_ms += ms;
    }

    /// `(upper bound in ms, observations at or under it)`, `None` standing for `+Inf`.
    pub fn cumulative(&self) -> Vec<(Option<u64>, u64)> {
        let bounds = LATENESS_BUCKETS_MS.iter().copied().map(Some).chain([None]);
        let mut total = 0;
        bounds
            .zip(self.buckets)
            .map(|(bound, count)| {
                total += count;
                (bound, total)
            })
            .collect()
    }

    /// The smallest bucket bound under which at least `fraction` of the observations fall (`None`
    /// when there are none, or only `+Inf` holds them).
    pub fn quantile_bound(&self, fraction: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let wanted = (self.count as f64 * fraction).ceil() as u64;
        self.cumulative()
            .into_iter()
            .find(|(_, total)| *total >= wanted)
            .and_then(|(bound, _)| bound)
    }
}

/// The fire counter of a minute (minutes since the epoch), within a shard.
fn minute_key(minute: i64) -> String {
    format!("metrics:fires:{minute}")
}

fn field(bucket: usize) -> String {
    match LATENESS_BUCKETS_MS.get(bucket) {
        Some(bound) => format!("le_{bound}"),
        None => "le_inf".to_string(),
    }
}

impl Store {
    /// Adds observations of fires of `job_id`'s shard (or of several shards: any one of them may
    /// hold the counts, which are summed when read) to the shared histogram, in one pipeline. A
    /// histogram that cannot be written is logged, never a failure of the fires it measures.
    pub async fn note_fire_lateness(&self, histogram: &LatenessHistogram, job_id: &str) {
        if histogram.count == 0 {
            return;
        }
        let shard = self.shards.of(job_id);
        let key = self.shard_key(shard, HISTOGRAM_KEY);
        let mut pipe = redis::pipe();
        for (bucket, &count) in histogram.buckets.iter().enumerate() {
            if count > 0 {
                pipe.hincr(&key, field(bucket), count).ignore();
            }
        }
        pipe.hincr(&key, "count", histogram.count)
            .ignore()
            .hincr(&key, "sum_ms", histogram.sum_ms)
            .ignore();
        // Counted in the minute they were written: the chart shows when the work happened.
        let minute = self.shard_key(shard, &minute_key(minute_of(Utc::now())));
        pipe.incr(&minute, histogram.count)
            .ignore()
            .expire(&minute, FIRES_PER_MINUTE_TTL_SECS)
            .ignore();
        let mut conn = self.conn.clone();
        if let Err(err) = pipe.query_async::<()>(&mut conn).await {
            tracing::warn!(error = %err, "fire lateness not recorded");
        }
    }

    /// Fires written in each of the `minutes` whole minutes up to and including the current one,
    /// oldest first: `(the minute's start, fires)`.
    pub async fn fires_per_minute(&self, minutes: usize) -> Result<Vec<(DateTime<Utc>, u64)>> {
        let now = minute_of(Utc::now());
        let starts: Vec<i64> = (0..minutes as i64).rev().map(|back| now - back).collect();
        if starts.is_empty() {
            return Ok(Vec::new());
        }
        let starts = &starts;
        // One MGET per shard (a shard's minutes share its slot).
        let per_shard = self
            .on_every_shard(|shard| async move {
                let keys: Vec<String> = starts
                    .iter()
                    .map(|&minute| self.shard_key(shard, &minute_key(minute)))
                    .collect();
                let mut conn = self.conn.clone();
                let counts: Vec<Option<u64>> =
                    redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
                Ok(counts)
            })
            .await?;
        let mut totals = vec![0u64; starts.len()];
        for counts in per_shard {
            for (total, count) in totals.iter_mut().zip(counts) {
                *total += count.unwrap_or(0);
            }
        }
        Ok(starts
            .iter()
            .zip(totals)
            .filter_map(|(&minute, fires)| Some((DateTime::from_timestamp(minute * 60, 0)?, fires)))
            .collect())
    }

    /// The shared histogram as it stands: every shard's, summed.
    pub async fn fire_lateness(&self) -> Result<LatenessHistogram> {
        let per_shard = self
            .on_every_shard(|shard| async move {
                let mut conn = self.conn.clone();
                let fields: HashMap<String, u64> =
                    redis::AsyncCommands::hgetall(&mut conn, self.shard_key(shard, HISTOGRAM_KEY))
                        .await?;
                Ok(fields)
            })
            .await?;
        let mut histogram = LatenessHistogram::default();
        for fields in per_shard {
            let get = |name: &str| fields.get(name).copied().unwrap_or(0);
            histogram.count += get("count");
            histogram.sum_ms += get("sum_ms");
            for (bucket, total) in histogram.buckets.iter_mut().enumerate() {
                *total += get(&field(bucket));
            }
        }
        Ok(histogram)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let mut histogram = LatenessHistogram::default();
        for late in [0, 1, 2, 40, 100, 101, 70_000] {
            histogram.observe(at(0), at(late));
        }
        histogram.observe(at(50), at(0)); // early by skew: on time
        assert_eq!(histogram.count, 8);
        assert_eq!(histogram.sum_ms, 1 + 2 + 40 + 100 + 101 + 70_000);
        let cumulative = histogram.cumulative();
        assert_eq!(cumulative[0], (Some(1), 3)); // 0, 1 and the early one
        assert_eq!(cumulative[1], (Some(5), 4));
        assert_eq!(cumulative[4], (Some(50), 5));
        assert_eq!(cumulative[5], (Some(100), 6));
        assert_eq!(cumulative[6], (Some(250), 7));
        assert_eq!(cumulative.last(), Some(&(None, 8)));
    }

    #[test]
    fn the_quantile_bound_is_the_first_bucket_reaching_the_fraction() {
        let mut histogram = LatenessHistogram::default();
        for late in 0..100 {
            histogram.observe(at(0), at(if late < 98 { 3 } else { 700 }));
        }
        assert_eq!(histogram.quantile_bound(0.5), Some(5));
        assert_eq!(histogram.quantile_bound(0.98), Some(5));
        assert_eq!(histogram.quantile_bound(0.99), Some(1_000));
        assert_eq!(LatenessHistogram::default().quantile_bound(0.99), None);
    }
}
