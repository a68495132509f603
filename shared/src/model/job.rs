//! A job: what to run and when, for which account and group, and the one place its schedule is
//! read in its own terms (its zone, its window).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::Result;
use crate::schedule::{parse_time_zone, Exclusions, Schedule};

use super::*;

/// A job: what to run and when. Runs are its executions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    /// Left out of the stored record, whose key names it (see `store::job_record`), and put
    /// back by the store as it reads the record.
    #[serde(default)]
    #[schema(required = true)]
    pub id: String,
    pub account: String,
    /// `default` is left out of the stored record and read back as it.
    #[serde(default = "default_group")]
    #[schema(required = true)]
    pub group: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Who last changed the job, as the client says (minion's `modified_by`).
    #[serde(default)]
    pub modified_by: String,
    /// Free key/value labels of the job.
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// The schedule as the user wrote it; see [`crate::schedule`].
    pub schedule: String,
    /// IANA time zone the schedule is read in.
    #[serde(default = "utc_zone")]
    #[schema(required = true)]
    pub timezone: String,
    pub runner: Runner,
    pub enabled: bool,
    /// Bumped on every change; a timer armed for an older generation is stale and dropped.
    pub generation: u64,
    /// Set while the job is paused (it is then disabled): why, and since when.
    #[serde(default)]
    pub paused: Option<Pause>,
    #[serde(default)]
    pub policies: Policies,
    /// Whole milliseconds (a job is made so); stored as milliseconds since the epoch, read back
    /// from that or from RFC 3339 (records of earlier versions).
    #[serde(deserialize_with = "millis_or_rfc3339")]
    pub created_at: DateTime<Utc>,
    /// Left out of the stored record while it equals `created_at`; read back as the epoch, which
    /// the store replaces with `created_at`.
    #[serde(default)]
    #[schema(required = true)]
    pub updated_at: DateTime<Utc>,
    /// When the next run is due; `None` once a one-shot job has fired, or while disabled.
    /// Kept in the store's timer index, not in the job record.
    #[serde(skip)]
    pub next_fire_at: Option<DateTime<Utc>>,
}

/// Why and since when a job is paused (`POST /v1/jobs/{id}/pause`): a paused job fires nothing until
/// it is resumed, and every listing shows the note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Pause {
    pub note: String,
    pub at: DateTime<Utc>,
}

/// The most instants in a row exclusions may skip before a schedule counts as ending (a
/// every-second job excluded for a whole day skips 86,400).
pub const MAX_SKIPPED: usize = 100_000;

/// The zone a job's schedule is read in unless it names one.
pub const DEFAULT_TIME_ZONE: &str = "UTC";

fn utc_zone() -> String {
    DEFAULT_TIME_ZONE.to_string()
}

/// The group a job is in unless it names one.
pub const DEFAULT_GROUP: &str = "default";

fn default_group() -> String {
    DEFAULT_GROUP.to_string()
}

/// An instant given as milliseconds since the epoch or as RFC 3339 text.
fn millis_or_rfc3339<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<DateTime<Utc>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stamp {
        Millis(i64),
        Text(DateTime<Utc>),
    }
    match Stamp::deserialize(deserializer)? {
        Stamp::Millis(ms) => DateTime::from_timestamp_millis(ms)
            .ok_or_else(|| serde::de::Error::custom(format!("{ms} ms is out of range"))),
        Stamp::Text(at) => Ok(at),
    }
}

/// `at` to the whole millisecond: the precision a job's times are kept in.
pub fn whole_millis(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at)
}

/// A key/value label on a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

impl Job {
    /// [`Job::for_tests`] with the dummy runner, for tests whose runner does not matter.
    #[cfg(test)]
    pub(crate) fn dummy_for_tests(policies: Policies) -> Job {
        let runner = Runner::Dummy(super::DummySpec {
            template: "x".into(),
            runner_name: None,
        });
        Job::for_tests(runner, policies)
    }

    /// A job of account `acme` every minute with this runner and these policies, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests(runner: Runner, policies: Policies) -> Job {
        let now = whole_millis(Utc::now());
        Job {
            id: "j1".into(),
            account: "acme".into(),
            group: "default".into(),
            name: String::new(),
            description: String::new(),
            modified_by: String::new(),
            tags: Vec::new(),
            schedule: "* * * * *".into(),
            timezone: "UTC".into(),
            runner,
            enabled: true,
            generation: 1,
            policies,
            paused: None,
            created_at: now,
            updated_at: now,
            next_fire_at: None,
        }
    }

    /// The container this job runs, if it runs one.
    /// How long a container of this job is given to stop after its stop signal (`runner.stop_grace_secs`,
    /// 30 s unless set); 0 for a job that runs no container.
    pub fn stop_grace_secs(&self) -> u64 {
        self.container().map_or(0, |spec| {
            spec.stop_grace_secs
                .unwrap_or(super::DEFAULT_STOP_GRACE_SECS)
        })
    }

    /// The array each fire of this job makes (`runner.array_size`): its size and parallelism.
    pub fn array(&self) -> Option<(u32, u32)> {
        self.container().and_then(ContainerSpec::array)
    }

    pub fn container(&self) -> Option<&ContainerSpec> {
        match &self.runner {
            Runner::Container(spec) => Some(spec),
            Runner::Dummy(_) | Runner::Http(_) | Runner::Instance(_) => None,
        }
    }

    /// This job paused with `note` at `now`: disabled, its timer dropped, marked with why. A job
    /// paused already keeps the time it was first paused and takes the new note.
    pub fn paused_with(self, note: String, now: DateTime<Utc>) -> Job {
        let since = self.paused.as_ref().map_or(now, |pause| pause.at);
        Job {
            enabled: false,
            generation: self.generation + 1,
            paused: Some(Pause { note, at: since }),
            updated_at: now,
            next_fire_at: None,
            ..self
        }
    }

    /// The job's schedule, parsed in its time zone; periods count from its creation.
    pub fn parsed_schedule(&self) -> Result<Schedule> {
        let tz = parse_time_zone(&self.timezone, "timezone")?;
        Schedule::parse(&self.schedule, tz, self.created_at, "schedule")
    }

    /// The first fire at or after `now`, inside the job's window. A one-shot's instant even if past.
    /// With jitter, the instant plus its delay (see [`Job::jittered`]).
    pub fn first_fire(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
        let schedule = self.parsed_schedule()?;
        let from = self.policies.start_at.map_or(now, |start| start.max(now));
        let first = match &schedule {
            Schedule::Once(at) => Some((*at).max(self.policies.start_at.unwrap_or(*at))),
            recurring => recurring.first_at_or_after(from),
        };
        let first = self.skip_excluded(&schedule, first)?;
        Ok(self.jittered(&schedule, self.within_window(first)))
    }

    /// The fire after `after` (a fire's time, jittered or not), inside the job's window.
    pub fn next_fire_after(&self, after: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
        let schedule = self.parsed_schedule()?;
        let next = match self.policies.start_at {
            Some(start) if start > after => schedule.first_at_or_after(start),
            _ => schedule.next_after(after),
        };
        let next = self.skip_excluded(&schedule, next)?;
        Ok(self.jittered(&schedule, self.within_window(next)))
    }

    /// The job's exclusions, parsed in its zone.
    pub fn exclusions(&self) -> Result<Exclusions> {
        let tz = parse_time_zone(&self.timezone, "timezone")?;
        Exclusions::parse(&self.policies.exclude, tz, "policies.exclude")
    }

    /// `next`, or the first instant after it that no exclusion skips. A schedule excluded for
    /// [`MAX_SKIPPED`] instants in a row has no next fire.
    fn skip_excluded(
        &self,
        schedule: &Schedule,
        mut next: Option<DateTime<Utc>>,
    ) -> Result<Option<DateTime<Utc>>> {
        if self.policies.exclude.is_empty() {
            return Ok(next);
        }
        let exclusions = self.exclusions()?;
        for _ in 0..MAX_SKIPPED {
            match next {
                Some(at) if exclusions.excludes(at) => next = schedule.next_after(at),
                _ => return Ok(next),
            }
        }
        Ok(None)
    }

    /// The instants after `after` and up to `until` that an exclusion skips, `limit` at most (what
    /// `GET /v1/jobs/{id}/next` shows as skipped).
    pub fn skipped_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<DateTime<Utc>>> {
        if self.policies.exclude.is_empty() {
            return Ok(Vec::new());
        }
        let (schedule, exclusions) = (self.parsed_schedule()?, self.exclusions()?);
        let mut skipped = Vec::new();
        let mut cursor = after;
        for _ in 0..MAX_SKIPPED {
            match schedule.next_after(cursor) {
                Some(at) if at <= until && skipped.len() < limit => {
                    if exclusions.excludes(at) {
                        skipped.push(at);
                    }
                    cursor = at;
                }
                _ => break,
            }
        }
        Ok(skipped)
    }

    /// The time the fire of `instant` starts: the instant plus the job's jitter delay, short of the
    /// schedule's next instant. The window applies to the instant, the jitter after it.
    fn jittered(
        &self,
        schedule: &Schedule,
        instant: Option<DateTime<Utc>>,
    ) -> Option<DateTime<Utc>> {
        let instant = instant?;
        let max = i64::try_from(self.policies.jitter_secs)
            .ok()
            .and_then(chrono::Duration::try_seconds)
            .unwrap_or_default();
        if max.is_zero() {
            return Some(instant);
        }
        let room = schedule.next_after(instant).map(|next| next - instant);
        Some(instant + crate::schedule::jitter::delay(&self.id, instant, max, room))
    }

    /// The instants of the schedule from `from` to `to`, both included, that no exclusion skips,
    /// without jitter (what a backfill runs); `Ok(None)` if there are more than `limit`.
    pub fn instants_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: usize,
    ) -> Result<Option<Vec<DateTime<Utc>>>> {
        let schedule = self.parsed_schedule()?;
        let exclusions = self.exclusions()?;
        let mut instants = Vec::new();
        let mut next = schedule.first_at_or_after(from);
        // Exclusions may skip many in a row; the walk is bounded like theirs.
        for _ in 0..limit.saturating_add(MAX_SKIPPED) {
            let Some(at) = next.filter(|at| *at <= to) else {
                return Ok(Some(instants));
            };
            if !exclusions.excludes(at) {
                if instants.len() == limit {
                    return Ok(None);
                }
                instants.push(at);
            }
            next = schedule.next_after(at);
        }
        Ok(None)
    }

    /// The next `count` fires after `after`, inside the window.
    pub fn upcoming(&self, after: DateTime<Utc>, count: usize) -> Result<Vec<DateTime<Utc>>> {
        let mut fires = Vec::with_capacity(count);
        let mut cursor = after;
        while fires.len() < count {
            match self.next_fire_after(cursor)? {
                Some(next) => {
                    fires.push(next);
                    cursor = next;
                }
                None => break,
            }
        }
        Ok(fires)
    }

    fn within_window(&self, fire: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        fire.filter(|at| self.policies.end_at.is_none_or(|end| *at <= end))
    }
}
