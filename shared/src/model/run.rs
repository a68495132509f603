//! A run: one execution of a job for one scheduled instant and attempt, and the state machine its
//! state moves along.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, Result};

/// Where a run is. Only moves forward, along [`RunState::can_move_to`].
#[derive(
    Debug,
    Default,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Waiting for the job's run under way to end (`concurrency: queue` or `queue_all`).
    Queued,
    #[default]
    Pending,
    Provisioning,
    Booting,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    /// The spot instance was reclaimed; the run is retried as a new attempt.
    Interrupted,
    Cancelled,
    ProvisionFailed,
}

impl RunState {
    pub const ALL: [RunState; 11] = [
        RunState::Queued,
        RunState::Pending,
        RunState::Provisioning,
        RunState::Booting,
        RunState::Running,
        RunState::Succeeded,
        RunState::Failed,
        RunState::TimedOut,
        RunState::Interrupted,
        RunState::Cancelled,
        RunState::ProvisionFailed,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Succeeded
                | RunState::Failed
                | RunState::TimedOut
                | RunState::Interrupted
                | RunState::Cancelled
                | RunState::ProvisionFailed
        )
    }

    /// The legal transitions. Anything else is a bug or a stale message and is refused.
    pub fn can_move_to(self, next: RunState) -> bool {
        use RunState::*;
        match self {
            // A queued fire starts once the run before it ends, or is cancelled with its job.
            Queued => matches!(next, Pending | Cancelled),
            // Light runners (dummy) need no instance: they go straight to running. A run that never
            // got launched (its message or its provisioner went away) is relaunched by the reaper's
            // sweep, and ends provision_failed when its relaunches run out.
            Pending => matches!(
                next,
                Provisioning | Running | Cancelled | Failed | ProvisionFailed
            ),
            Provisioning => matches!(
                next,
                Booting | ProvisionFailed | Cancelled | TimedOut | Failed
            ),
            // An agent may fail before its container starts (an image that cannot be pulled). An
            // instance that never started the container (never booted, its agent lost, reclaimed
            // first) is terminated and the run relaunched (back to pending), until its relaunches run
            // out (provision_failed).
            Booting => matches!(
                next,
                Running | Failed | TimedOut | Interrupted | Cancelled | Pending | ProvisionFailed
            ),
            // An HTTP action whose provisioner went silent is called again (back to pending), until
            // its relaunches run out (provision_failed).
            Running => matches!(
                next,
                Succeeded | Failed | TimedOut | Interrupted | Cancelled | Pending | ProvisionFailed
            ),
            Succeeded | Failed | TimedOut | Interrupted | Cancelled | ProvisionFailed => false,
        }
    }

    /// Checks a transition, naming both ends when it is illegal.
    pub fn check_move(self, next: RunState) -> Result<()> {
        if self.can_move_to(next) {
            Ok(())
        } else {
            Err(Error::conflict(format!(
                "illegal run transition {self} -> {next}"
            )))
        }
    }

    /// The status word of seed 003's simple API (`scheduled`, `running`, `failed`, `finished`).
    pub fn simple_status(self) -> &'static str {
        use RunState::*;
        match self {
            Queued | Pending => "scheduled",
            // An interrupted run is retried on a new instance, so the job is still under way.
            Provisioning | Booting | Running | Interrupted => "running",
            Succeeded => "finished",
            Failed | TimedOut | Cancelled | ProvisionFailed => "failed",
        }
    }

    pub fn as_str(self) -> &'static str {
        use RunState::*;
        match self {
            Queued => "queued",
            Pending => "pending",
            Provisioning => "provisioning",
            Booting => "booting",
            Running => "running",
            Succeeded => "succeeded",
            Failed => "failed",
            TimedOut => "timed_out",
            Interrupted => "interrupted",
            Cancelled => "cancelled",
            ProvisionFailed => "provision_failed",
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        RunState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| Error::internal(format!("unknown run state {s:?}")))
    }
}

/// One execution of a job, for one scheduled instant and attempt.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct Run {
    pub id: String,
    pub job_id: String,
    pub account: String,
    pub attempt: u32,
    pub scheduled_at: DateTime<Utc>,
    pub state: RunState,
    /// When the run entered each state it has been in.
    #[schema(value_type = Object)]
    pub transitions: BTreeMap<RunState, DateTime<Utc>>,
    pub instance_id: Option<String>,
    pub container_id: Option<String>,
    pub exit_code: Option<i64>,
    /// Why the run failed, when it did without an exit code (a pull error, a launch error).
    pub error: Option<String>,
    pub heartbeat_at: Option<DateTime<Utc>>,
    /// What the worker reported (HRM's `meta`): progress, or the action's `[status] body`.
    pub meta: Option<String>,
    /// How the completion callback went (HRM's `callback_status`).
    pub callback_status: Option<String>,
    /// What the cloud refused on the way to an instance (spot pools without capacity, say).
    pub launch_errors: Option<String>,
    /// How often the run was launched again because a fault of ours kept it from starting (a lost
    /// launch, a provisioner that died); never counted against the job's retries.
    pub relaunches: u32,
    /// Why each relaunch was made, oldest first.
    pub relaunch_reasons: Vec<String>,
    /// Attempts of this instant before this one that spot interruptions ended (counted against
    /// `retries.max_interruptions`, not `retries.max_attempts`).
    pub interruptions: u32,
    /// When the latest relaunch was due.
    pub relaunch_at: Option<DateTime<Utc>>,
    /// The image, command or environment `POST /v1/jobs/{id}/run` gave this run (and its retries)
    /// in place of its job's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overrides: Option<super::RunOverrides>,
    /// When the sweep found the run late (`policies.alert_late_secs`: its code not started yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub late_alert_at: Option<DateTime<Utc>>,
    /// When the sweep found the run long running (`policies.alert_running_secs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub long_running_alert_at: Option<DateTime<Utc>>,
    /// The backfill (`POST /v1/jobs/{id}/backfill`) this run is one of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backfill: Option<String>,
    /// What the run's instance cost, in USD, once it was terminated.
    pub cost_usd: Option<f64>,
    /// Each attempt to notify a webhook of the run's events (`policies.notify`), oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<super::NotificationAttempt>,
    /// SHA-256 of the secret the run's agent presents; never serialised to callers.
    #[serde(skip)]
    pub secret_hash: String,
    /// An array fire's run (its parent) or one of its copies: see [`ArrayPart`].
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub array: Option<ArrayPart>,
    /// The attempt this one follows, when it is not found by its fire (an array copy's retry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_run: Option<String>,
}

/// Where a run stands in an array job (`runner.array_size`): the fire's own run, whose state is
/// derived from its copies', or one copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ArrayPart {
    Parent {
        array_size: u32,
        /// Copies that ended succeeded, and those that ended otherwise for good (retries spent).
        array_succeeded: u32,
        array_failed: u32,
    },
    Child {
        array_size: u32,
        array_index: u32,
        /// The fire's own run.
        array_parent: String,
    },
}

impl Run {
    /// Which fire this is, as the user's code is told it (`SPOT_RUN_ID`, `SPOT_JOB_ID`,
    /// `SPOT_SCHEDULED_AT`, `SPOT_ATTEMPT` in a container's environment, `X-Spot-Run-Id` and so on on
    /// an HTTP action): delivery is at least once, so code that keys its own effects on the run (or
    /// on the job and instant) makes them exactly once.
    pub fn identity(&self) -> [(&'static str, String); 4] {
        [
            ("RUN_ID", self.id.clone()),
            ("JOB_ID", self.job_id.clone()),
            (
                "SCHEDULED_AT",
                self.scheduled_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ),
            ("ATTEMPT", self.attempt.to_string()),
        ]
    }

    /// [`Run::identity`] as environment variables (`SPOT_RUN_ID=...`), and an array copy's index
    /// and size (`SPOT_ARRAY_INDEX`, `SPOT_ARRAY_SIZE`).
    pub fn identity_env(&self) -> Vec<String> {
        let array = match &self.array {
            Some(ArrayPart::Child {
                array_size,
                array_index,
                ..
            }) => vec![
                ("ARRAY_INDEX", array_index.to_string()),
                ("ARRAY_SIZE", array_size.to_string()),
            ],
            _ => Vec::new(),
        };
        self.identity()
            .into_iter()
            .chain(array)
            .map(|(name, value)| format!("SPOT_{name}={value}"))
            .collect()
    }

    /// The fire's own run of an array job (its state derived from its copies').
    pub fn is_array_parent(&self) -> bool {
        matches!(self.array, Some(ArrayPart::Parent { .. }))
    }

    /// An array copy's index.
    pub fn array_index(&self) -> Option<u32> {
        match &self.array {
            Some(ArrayPart::Child { array_index, .. }) => Some(*array_index),
            _ => None,
        }
    }

    /// The parent of an array copy.
    pub fn array_parent(&self) -> Option<&str> {
        match &self.array {
            Some(ArrayPart::Child { array_parent, .. }) => Some(array_parent),
            _ => None,
        }
    }

    /// [`Run::identity`] as HTTP headers (`X-Spot-Run-Id: ...`).
    pub fn identity_headers(&self) -> Vec<(String, String)> {
        self.identity()
            .into_iter()
            .map(|(name, value)| {
                let words: Vec<String> = name
                    .split('_')
                    .map(|word| {
                        let lower = word.to_ascii_lowercase();
                        let mut chars = lower.chars();
                        chars
                            .next()
                            .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                            .unwrap_or_default()
                    })
                    .collect();
                (format!("X-Spot-{}", words.join("-")), value)
            })
            .collect()
    }
}
