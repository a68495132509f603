//! A job's policies beyond its schedule and runner: concurrency, misfire, retries, timeout, history,
//! and the window it fires in.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, Result};

/// What to do with a fire while an earlier run of the job is still active.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Concurrency {
    /// Run anyway, side by side.
    #[default]
    Allow,
    /// Skip this fire.
    Forbid,
    /// Cancel the active run, then start this one.
    Replace,
}

/// Retry of a failed run: attempts in all, exponential backoff with full jitter between them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 means no retry. Attempts a spot interruption ended do
    /// not count: they have their own bound below.
    pub max_attempts: u32,
    /// Attempts a spot interruption may end (each retried) before the run is left interrupted.
    pub max_interruptions: u32,
    pub backoff_secs: u64,
    pub backoff_max_secs: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            max_interruptions: 3,
            backoff_secs: 10,
            backoff_max_secs: 600,
        }
    }
}

impl RetryPolicy {
    /// The longest wait before attempt `next_attempt` (2, 3, ...): base * 2^(n-2), capped. The actual
    /// wait is drawn uniformly below it (full jitter), so retries of many runs spread out.
    pub fn backoff_ceiling(&self, next_attempt: u32) -> std::time::Duration {
        let exponent = next_attempt.saturating_sub(2).min(30);
        let secs = self
            .backoff_secs
            .saturating_mul(1u64 << exponent)
            .min(self.backoff_max_secs);
        std::time::Duration::from_secs(secs)
    }
}

/// The knobs of a job beyond its schedule and runner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Policies {
    pub concurrency: Concurrency,
    /// A fire later than this is skipped (the next one is armed). `None`: late fires still run.
    /// After downtime a recurring job runs at most once for everything it missed either way.
    pub misfire_grace_secs: Option<u64>,
    pub retries: RetryPolicy,
    /// How long a run may take before it is timed out.
    pub timeout_secs: u64,
    /// How many runs are kept; older ended ones are deleted with their logs (a run under way never).
    pub history_limit: usize,
    /// No fire before this instant.
    pub start_at: Option<DateTime<Utc>>,
    /// No fire after this instant.
    pub end_at: Option<DateTime<Utc>>,
    /// Each fire starts this many seconds after its instant at most: a delay in `[0, jitter_secs)`,
    /// the same for a given job and instant wherever it is computed, and always before the next
    /// instant. Spreads the start of many jobs on one pattern. 0: exactly at the instant.
    pub jitter_secs: u64,
    /// Pause the job (with a note saying so) once this many of its runs in a row have ended
    /// failed, timed out or provision-failed with no retry left. `None`: never.
    pub pause_after_failures: Option<u32>,
    /// Days (`2026-12-25`) and cron patterns (`0 * * * sat,sun`), in the job's zone, whose instants
    /// the schedule skips (see [`crate::schedule::Exclusions`]). Checked with the zone, by the job.
    pub exclude: Vec<String>,
}

impl Default for Policies {
    fn default() -> Self {
        Policies {
            concurrency: Concurrency::Allow,
            misfire_grace_secs: None,
            retries: RetryPolicy::default(),
            timeout_secs: 30 * 60,
            history_limit: 100,
            start_at: None,
            end_at: None,
            jitter_secs: 0,
            pause_after_failures: None,
            exclude: Vec::new(),
        }
    }
}

impl Policies {
    pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;
    /// A grace longer than a year means none: larger values are refused rather than overflowing
    /// the time arithmetic they feed.
    pub const MAX_MISFIRE_GRACE_SECS: u64 = 366 * 24 * 3600;
    /// A day: EventBridge Scheduler's longest flexible window.
    pub const MAX_JITTER_SECS: u64 = 24 * 3600;

    pub fn validate(&self, prefix: &str) -> Result<()> {
        let field = |name: &str| format!("{prefix}{name}");
        if self.timeout_secs == 0 || self.timeout_secs > Self::MAX_TIMEOUT_SECS {
            return Err(Error::invalid(
                field("timeout_secs"),
                format!("must be 1..={}", Self::MAX_TIMEOUT_SECS),
            ));
        }
        if self
            .misfire_grace_secs
            .is_some_and(|grace| grace > Self::MAX_MISFIRE_GRACE_SECS)
        {
            return Err(Error::invalid(
                field("misfire_grace_secs"),
                format!("must be 0..={}", Self::MAX_MISFIRE_GRACE_SECS),
            ));
        }
        if !(1..=20).contains(&self.retries.max_attempts) {
            return Err(Error::invalid(
                field("retries.max_attempts"),
                "must be 1..=20",
            ));
        }
        if self.retries.max_interruptions > 20 {
            return Err(Error::invalid(
                field("retries.max_interruptions"),
                "must be 0..=20",
            ));
        }
        for (name, secs) in [
            ("backoff_secs", self.retries.backoff_secs),
            ("backoff_max_secs", self.retries.backoff_max_secs),
        ] {
            if secs > 86_400 {
                return Err(Error::invalid(
                    field(&format!("retries.{name}")),
                    "must be at most 86400 (a day)",
                ));
            }
        }
        if self.jitter_secs > Self::MAX_JITTER_SECS {
            return Err(Error::invalid(
                field("jitter_secs"),
                format!("must be 0..={} (a day)", Self::MAX_JITTER_SECS),
            ));
        }
        if self
            .pause_after_failures
            .is_some_and(|n| !(1..=1000).contains(&n))
        {
            return Err(Error::invalid(
                field("pause_after_failures"),
                "must be 1..=1000",
            ));
        }
        if !(1..=10_000).contains(&self.history_limit) {
            return Err(Error::invalid(field("history_limit"), "must be 1..=10000"));
        }
        for (name, at) in [("start_at", self.start_at), ("end_at", self.end_at)] {
            if let Some(at) = at {
                crate::schedule::check_instant(at, &field(name))?;
            }
        }
        if let (Some(start), Some(end)) = (self.start_at, self.end_at) {
            if end <= start {
                return Err(Error::invalid(field("end_at"), "must be after start_at"));
            }
        }
        Ok(())
    }
}
