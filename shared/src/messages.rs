//! The messages that travel on RabbitMQ between the services.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A timer firing: the job named is due at `scheduled_at`, if it is still at `generation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FireMessage {
    pub job_id: String,
    pub generation: u64,
    pub scheduled_at: DateTime<Utc>,
    /// 1 for a scheduled fire; more for a retry of the run of that instant.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// Asked for by a user ("run now"): it does not move the job's schedule on.
    #[serde(default)]
    pub manual: bool,
    /// Launches again the run already recorded for this instant and attempt, which never started
    /// (its launch was lost); never records a new run.
    #[serde(default, skip_serializing_if = "is_false")]
    pub relaunch: bool,
    /// Attempts of this instant before this one that spot interruptions ended: they count against
    /// `retries.max_interruptions`, not `retries.max_attempts`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interruptions: u32,
    /// Launches this recorded run (one a backfill started), found by its id rather than by its
    /// fire's marker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

fn is_false(value: &bool) -> bool {
    !value
}

fn first_attempt() -> u32 {
    1
}

impl FireMessage {
    /// The scheduled fire of `job` at `at`.
    pub fn scheduled(job_id: &str, generation: u64, at: DateTime<Utc>) -> FireMessage {
        FireMessage {
            job_id: job_id.to_string(),
            generation,
            scheduled_at: at,
            attempt: 1,
            manual: false,
            relaunch: false,
            interruptions: 0,
            run_id: None,
        }
    }
}

/// Fires handed to RabbitMQ together by the timer pump: one message for many timers due close together
/// (RabbitMQ's cost is per message, and a busy minute has thousands of fires due at once). The consumer
/// holds each fire until its own instant; a batch redelivered fires nothing twice (fires are recorded once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FireBatch {
    pub fires: Vec<FireMessage>,
}

/// A message that carries fires through the timer levels: one, or a batch.
pub trait CarriesFires: Serialize {
    fn fires(&self) -> &[FireMessage];
}

impl CarriesFires for FireMessage {
    fn fires(&self) -> &[FireMessage] {
        std::slice::from_ref(self)
    }
}

impl CarriesFires for FireBatch {
    fn fires(&self) -> &[FireMessage] {
        &self.fires
    }
}

/// What a timer message carries, said in its AMQP headers so that "Get messages" in the RabbitMQ
/// management UI is readable without decoding the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FireLabel {
    /// `scheduled`, `retry`, `run-now`, `relaunch`, `backfill`, or `mixed` for a batch of several
    /// kinds.
    pub kind: &'static str,
    pub count: usize,
    /// The earliest and the latest instant among the fires.
    pub first_due: Option<DateTime<Utc>>,
    pub last_due: Option<DateTime<Utc>>,
    /// The jobs fired, comma-separated, in the body's order.
    pub job_ids: String,
}

impl FireLabel {
    pub fn of(fires: &[FireMessage]) -> FireLabel {
        let kind_of = |fire: &FireMessage| match (fire.manual, fire.attempt) {
            _ if fire.run_id.is_some() => "backfill",
            _ if fire.relaunch => "relaunch",
            (true, _) => "run-now",
            (false, 1) => "scheduled",
            (false, _) => "retry",
        };
        let mut kinds = fires.iter().map(kind_of);
        let first = kinds.next();
        let kind = match first {
            Some(first) if kinds.all(|k| k == first) => first,
            Some(_) => "mixed",
            None => "none",
        };
        FireLabel {
            kind,
            count: fires.len(),
            first_due: fires.iter().map(|f| f.scheduled_at).min(),
            last_due: fires.iter().map(|f| f.scheduled_at).max(),
            job_ids: fires
                .iter()
                .map(|f| f.job_id.as_str())
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

/// What the fires queue carries: one fire, or a batch of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FireDelivery {
    Batch(FireBatch),
    One(FireMessage),
}

/// Ask the reaper to terminate an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminateRequest {
    pub instance_id: String,
    pub run_id: String,
    pub reason: String,
    /// How long the instance's agent may take to stop its container gracefully (the job's stop
    /// signal, then this) before the instance is killed: the job's `stop_grace_secs` for a run
    /// cancelled under way (a `replace`, a backfill cancelled), 0 for at once.
    #[serde(default)]
    pub stop_grace_secs: u64,
}

/// What an agent fetches from the api to run its job (`GET /agent/runs/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunSpec {
    pub run_id: String,
    pub job_id: String,
    pub attempt: u32,
    pub instance_id: Option<String>,
    pub image: String,
    /// The command as arguments; `None` keeps the image's default.
    pub argv: Option<Vec<String>>,
    pub env: Vec<String>,
    pub timeout_secs: u64,
    /// Files to place in the container before it starts.
    #[serde(default)]
    pub files: Vec<crate::model::FileSpec>,
    /// What the container may use (zeros: no limit, as from an api older than limits).
    #[serde(default)]
    pub limits: crate::container_limits::AppliedLimits,
    /// How to fetch the files that name a source.
    #[serde(default)]
    pub fetch: crate::file_source::FetchSpec,
    /// The signal a stop sends first, then the grace before the kill (see `ContainerSpec`).
    #[serde(default = "default_stop_signal")]
    pub stop_signal: String,
    #[serde(default = "default_stop_grace")]
    pub stop_grace_secs: u64,
    /// Environment variables the agent reads from AWS before the container starts, by name: the
    /// ARN of an SSM parameter or a Secrets Manager secret ([`crate::secrets`]). Names and ARNs
    /// only; a value never passes through the api.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub secrets: std::collections::BTreeMap<String, String>,
    /// The AWS endpoint to read them at (`[ec2] endpoint_url`); empty: each service's own.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub aws_endpoint_url: String,
}

fn default_stop_signal() -> String {
    "SIGTERM".into()
}

fn default_stop_grace() -> u64 {
    crate::model::DEFAULT_STOP_GRACE_SECS
}

/// What `POST /callback` takes: seed 003's body (`action`, `job_id`, `instance_id`) plus what the agent
/// reports. The caller proves itself with the run's secret in the `X-Run-Secret` header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallbackRequest {
    pub action: String,
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// Why the run ended without an exit code (an image that could not be pulled, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The agent stopped the container because the run's timeout passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timed_out: Option<bool>,
    /// The cloud reclaimed the spot instance: the agent stopped the container on the notice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<bool>,
}

/// The header an agent sends its run's secret in.
pub const RUN_SECRET_HEADER: &str = "X-Run-Secret";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_says_what_a_timer_message_carries() {
        let at = |s: i64| DateTime::from_timestamp(1_900_000_000 + s, 0).unwrap();
        let mut retry = FireMessage::scheduled("b", 1, at(5));
        retry.attempt = 2;
        let batch = FireBatch {
            fires: vec![FireMessage::scheduled("a", 3, at(9)), retry],
        };
        let label = FireLabel::of(batch.fires());
        assert_eq!(label.kind, "mixed");
        assert_eq!(label.count, 2);
        assert_eq!(
            (label.first_due, label.last_due),
            (Some(at(5)), Some(at(9)))
        );
        assert_eq!(label.job_ids, "a,b");
        let one = FireMessage::scheduled("c", 1, at(1));
        assert_eq!(FireLabel::of(one.fires()).kind, "scheduled");
    }
}
