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
    /// Wait, as a `queued` run, for the active run to end, then start; at most one waits (a later
    /// fire is skipped and counted).
    Queue,
    /// Wait in order behind the active run and those queued before, up to `max_queued`.
    #[serde(rename = "queue_all")]
    QueueAll,
}

impl Concurrency {
    /// As the record-fire script takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Concurrency::Allow => "allow",
            Concurrency::Forbid => "forbid",
            Concurrency::Replace => "replace",
            Concurrency::Queue => "queue",
            Concurrency::QueueAll => "queue_all",
        }
    }

    /// The most fires that may wait under this policy with `max_queued`; 0 when fires never wait.
    pub fn queue_bound(self, max_queued: u32) -> u32 {
        match self {
            Concurrency::Queue => 1,
            Concurrency::QueueAll => max_queued,
            _ => 0,
        }
    }
}

/// What a recurring job does with the instants it missed (our downtime, a broker wiped, a backlog):
/// see [`crate::catch_up`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// One run for all that was missed, then on schedule.
    #[default]
    Latest,
    /// A run for each missed instant, oldest first: the newest `max_catch_up` of them.
    All,
    /// None of them: a fire handled after its next instant has come is skipped.
    #[serde(rename = "none")]
    Skip,
}

/// What becomes of a job once its schedule is over (its last fire by `max_runs`, `end_at` or a
/// one-shot's instant) and the last of its runs has ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnLastRun {
    /// Left as it is: enabled, with no fire to come.
    #[default]
    Keep,
    /// Disabled.
    Disable,
    /// Deleted; its runs stay readable by id for a week.
    Delete,
}

/// Retry of a failed run: attempts in all, exponential backoff with full jitter between them, and
/// which endings are retried at all (see [`RetryPolicy::retries_ending`]).
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
    /// A run that exits with one of these codes is never retried (the code says retrying is
    /// pointless: bad input, say). Checked first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub never_on_exit_codes: Vec<i64>,
    /// A run that exits with one of these codes is retried. Checked second. Given alone, a failure
    /// with any other code is not retried (`on_reasons` then leaves `failed` out by default).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub on_exit_codes: Vec<i64>,
    /// The endings retried when no exit-code rule matched. Checked last. Unset: all of them, but
    /// `failed` only if `on_exit_codes` is empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_reasons: Option<Vec<RetryReason>>,
}

/// How a run ended, as retry rules name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RetryReason {
    /// The container exited non-zero, or could not start (an image that could not be pulled).
    Failed,
    /// It ran past `timeout_secs`.
    TimedOut,
    /// Its spot instance was reclaimed (bounded by `max_interruptions`, not `max_attempts`).
    Interrupted,
    /// No instance could be had for it.
    ProvisionFailed,
}

impl RetryReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::Failed => "failed",
            RetryReason::TimedOut => "timed_out",
            RetryReason::Interrupted => "interrupted",
            RetryReason::ProvisionFailed => "provision_failed",
        }
    }

    /// The reason of a run that ended in `state`; `None` for endings never retried.
    pub fn of(state: crate::model::RunState) -> Option<RetryReason> {
        use crate::model::RunState;
        match state {
            RunState::Failed => Some(RetryReason::Failed),
            RunState::TimedOut => Some(RetryReason::TimedOut),
            RunState::Interrupted => Some(RetryReason::Interrupted),
            RunState::ProvisionFailed => Some(RetryReason::ProvisionFailed),
            _ => None,
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            max_interruptions: 3,
            backoff_secs: 10,
            backoff_max_secs: 600,
            never_on_exit_codes: Vec::new(),
            on_exit_codes: Vec::new(),
            on_reasons: None,
        }
    }
}

impl RetryPolicy {
    /// The most codes a list of exit codes may hold.
    pub const MAX_EXIT_CODES: usize = 256;

    /// Whether the rules retry a run that ended `reason` with `exit_code` (the attempt bounds aside).
    /// The first rule that matches decides: `never_on_exit_codes`, then `on_exit_codes`, then
    /// `on_reasons`.
    pub fn retries_ending(&self, reason: RetryReason, exit_code: Option<i64>) -> bool {
        if let Some(code) = exit_code {
            if self.never_on_exit_codes.contains(&code) {
                return false;
            }
            if self.on_exit_codes.contains(&code) {
                return true;
            }
        }
        match &self.on_reasons {
            Some(reasons) => reasons.contains(&reason),
            None => reason != RetryReason::Failed || self.on_exit_codes.is_empty(),
        }
    }

    fn validate(&self, field: impl Fn(&str) -> String) -> Result<()> {
        if !(1..=20).contains(&self.max_attempts) {
            return Err(Error::invalid(field("max_attempts"), "must be 1..=20"));
        }
        if self.max_interruptions > 20 {
            return Err(Error::invalid(field("max_interruptions"), "must be 0..=20"));
        }
        for (name, secs) in [
            ("backoff_secs", self.backoff_secs),
            ("backoff_max_secs", self.backoff_max_secs),
        ] {
            if secs > 86_400 {
                return Err(Error::invalid(field(name), "must be at most 86400 (a day)"));
            }
        }
        for (name, codes) in [
            ("never_on_exit_codes", &self.never_on_exit_codes),
            ("on_exit_codes", &self.on_exit_codes),
        ] {
            if codes.len() > Self::MAX_EXIT_CODES {
                return Err(Error::invalid(
                    field(name),
                    format!("at most {} codes", Self::MAX_EXIT_CODES),
                ));
            }
            if let Some(code) = codes.iter().find(|code| !(1..=255).contains(*code)) {
                return Err(Error::invalid(
                    field(name),
                    format!("{code} is not a failing exit code (1..=255)"),
                ));
            }
        }
        if let Some(code) = self
            .on_exit_codes
            .iter()
            .find(|code| self.never_on_exit_codes.contains(code))
        {
            return Err(Error::invalid(
                field("on_exit_codes"),
                format!("{code} is also in never_on_exit_codes"),
            ));
        }
        if let Some(reasons) = &self.on_reasons {
            for (i, reason) in reasons.iter().enumerate() {
                if reasons[..i].contains(reason) {
                    return Err(Error::invalid(
                        field("on_reasons"),
                        format!("names {} twice", reason.as_str()),
                    ));
                }
            }
        }
        Ok(())
    }

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
    /// Under `concurrency: queue_all`, the most fires that may wait; a fire beyond is skipped.
    pub max_queued: u32,
    /// A fire later than this is skipped (the next one is armed). `None`: late fires still run.
    /// Also the catch-up window (`catch_up_window_secs`): no missed instant older than this runs.
    #[serde(alias = "catch_up_window_secs")]
    pub misfire_grace_secs: Option<u64>,
    /// What a recurring job does with the instants it missed.
    pub catch_up: CatchUp,
    /// Under `catch_up: all`, the most missed instants run (the newest ones).
    pub max_catch_up: u32,
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
    /// The schedule ends after this many scheduled fires have made a run (each counted once however
    /// often it is delivered; retries, run-nows and skipped fires do not count). `None`: no end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_runs: Option<u32>,
    /// What becomes of the job once its schedule is over and its last run has ended.
    pub on_last_run: OnLastRun,
    /// Mark a run `late` (an event, a counter) whose user code has not started this long after its
    /// instant. `None`: never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert_late_secs: Option<u64>,
    /// Mark a run `long_running` still running this long after it started. `None`: never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert_running_secs: Option<u64>,
    /// Jobs of the same account run (each once per ending, told `SPOT_PARENT_RUN_ID`) when a run of
    /// this one succeeds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub on_success: Vec<String>,
    /// The same when a run ends failed, timed out, interrupted or provision-failed with no retry
    /// left.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub on_failure: Vec<String>,
    /// Webhooks told of this job's runs (besides its account's default ones): see
    /// [`super::NotifyTarget`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<super::NotifyTarget>,
}

impl Default for Policies {
    fn default() -> Self {
        Policies {
            concurrency: Concurrency::Allow,
            max_queued: 100,
            misfire_grace_secs: None,
            catch_up: CatchUp::Latest,
            max_catch_up: 10,
            retries: RetryPolicy::default(),
            timeout_secs: 30 * 60,
            history_limit: 100,
            start_at: None,
            end_at: None,
            jitter_secs: 0,
            pause_after_failures: None,
            exclude: Vec::new(),
            max_runs: None,
            on_last_run: OnLastRun::Keep,
            alert_late_secs: None,
            alert_running_secs: None,
            on_success: Vec::new(),
            on_failure: Vec::new(),
            notify: Vec::new(),
        }
    }
}

impl Policies {
    pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;
    /// A grace longer than a year means none: larger values are refused rather than overflowing
    /// the time arithmetic they feed.
    pub const MAX_MISFIRE_GRACE_SECS: u64 = 366 * 24 * 3600;
    /// The most jobs one ending may start.
    pub const MAX_CHAINED: usize = 16;
    /// The most fires `max_runs` may allow.
    pub const MAX_RUNS: u32 = 1_000_000;
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
        self.retries
            .validate(|name| format!("{prefix}retries.{name}"))?;
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
        for (name, secs) in [
            ("alert_late_secs", self.alert_late_secs),
            ("alert_running_secs", self.alert_running_secs),
        ] {
            if secs.is_some_and(|secs| !(1..=Self::MAX_TIMEOUT_SECS).contains(&secs)) {
                return Err(Error::invalid(
                    field(name),
                    format!("must be 1..={} (a week)", Self::MAX_TIMEOUT_SECS),
                ));
            }
        }
        for (name, ids) in [
            ("on_success", &self.on_success),
            ("on_failure", &self.on_failure),
        ] {
            if ids.len() > Self::MAX_CHAINED {
                return Err(Error::invalid(
                    field(name),
                    format!("at most {} jobs", Self::MAX_CHAINED),
                ));
            }
            for (i, id) in ids.iter().enumerate() {
                if !crate::ids::is_id(id) {
                    return Err(Error::invalid(
                        field(&format!("{name}[{i}]")),
                        format!("{id:?} is not a job id"),
                    ));
                }
                if ids[..i].contains(id) {
                    return Err(Error::invalid(
                        field(&format!("{name}[{i}]")),
                        format!("names {id} twice"),
                    ));
                }
            }
        }
        super::NotifyTarget::validate_all(&self.notify, &field("notify"))?;
        if !(1..=10_000).contains(&self.max_queued) {
            return Err(Error::invalid(field("max_queued"), "must be 1..=10000"));
        }
        if !(1..=1000).contains(&self.max_catch_up) {
            return Err(Error::invalid(field("max_catch_up"), "must be 1..=1000"));
        }
        if self
            .max_runs
            .is_some_and(|n| !(1..=Self::MAX_RUNS).contains(&n))
        {
            return Err(Error::invalid(
                field("max_runs"),
                format!("must be 1..={}", Self::MAX_RUNS),
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
