//! The domain: jobs, their runs and the instances runs use, with the state machines that say which
//! moves are legal. Every surface of the api and every service speaks these types.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use crate::container_limits::ContainerLimits;
use crate::error::{Error, Result};
use crate::schedule::{parse_time_zone, Schedule};

/// A job: what to run and when. Runs are its executions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: String,
    pub account: String,
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
    pub timezone: String,
    pub runner: Runner,
    pub enabled: bool,
    /// Bumped on every change; a timer armed for an older generation is stale and dropped.
    pub generation: u64,
    #[serde(default)]
    pub policies: Policies,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the next run is due; `None` once a one-shot job has fired, or while disabled.
    /// Kept in the store's timer index, not in the job record.
    #[serde(skip)]
    pub next_fire_at: Option<DateTime<Utc>>,
}

/// A key/value label on a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

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
    /// Attempts in all, the first included; 1 means no retry.
    pub max_attempts: u32,
    pub backoff_secs: u64,
    pub backoff_max_secs: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
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
        }
    }
}

impl Policies {
    pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;
    /// A grace longer than a year means none: larger values are refused rather than overflowing
    /// the time arithmetic they feed.
    pub const MAX_MISFIRE_GRACE_SECS: u64 = 366 * 24 * 3600;

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

/// What a run of a job does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Runner {
    /// A Docker container on a fresh (spot) instance.
    Container(ContainerSpec),
    /// Renders a template with the account's name (minion's dummy runner); needs no instance.
    Dummy(DummySpec),
    /// Calls an HTTP action and holds it until done, then a callback (HRM's tasks); needs no instance.
    Http(HttpSpec),
    /// Starts, stops or reboots an existing instance through the EC2 API (minion's instanceRunner).
    Instance(InstanceSpec),
}

/// Minion's instance runner: an action on an instance the account owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstanceSpec {
    pub instance_id: String,
    pub action: crate::instance_power::PowerAction,
    /// The configured runner this came from (minion's `details.runner`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_name: Option<String>,
}

/// HRM's task: GET `action_url` (with `hrm_task_id` added), held open until the worker is done or the
/// run's timeout passes, then GET `callback_url` (with `hrm_task_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HttpSpec {
    pub action_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// The instance the action runs on: started first if stopped, and stopped again when no task
    /// needs it, if it was started for a task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
}

impl HttpSpec {
    /// The URLs the task calls, each with the name of its field.
    pub fn urls(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("action_url", Some(self.action_url.as_str())),
            ("callback_url", self.callback_url.as_deref()),
        ]
        .into_iter()
        .filter_map(|(field, url)| Some((field, url?)))
    }

    /// Name of the set of instances started for an account's tasks.
    pub fn controlled_set(account: &str) -> String {
        format!("hrm:controlled:{account}")
    }

    /// Name of the set of active runs that need an instance.
    pub fn users_set(instance_id: &str) -> String {
        format!("hrm:instance:{instance_id}:runs")
    }
}

/// Minion's dummy runner: `{{.Account}}` in the template becomes the account's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DummySpec {
    pub template: String,
    /// The configured runner this came from (minion's `details.runner`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_name: Option<String>,
}

impl DummySpec {
    pub fn validate(&self, prefix: &str) -> Result<()> {
        if self.template.trim().is_empty() {
            return Err(Error::invalid(
                format!("{prefix}template"),
                "template cannot be empty",
            ));
        }
        if self.template.len() > limits::TEMPLATE_LEN {
            return Err(Error::invalid(
                format!("{prefix}template"),
                format!("longer than {} bytes", limits::TEMPLATE_LEN),
            ));
        }
        Ok(())
    }

    /// The output of a run for `account`.
    pub fn render(&self, account: &str) -> String {
        ["{{.Account}}", "{{ .Account }}"]
            .iter()
            .fold(self.template.clone(), |text, placeholder| {
                text.replace(placeholder, account)
            })
    }
}

/// A container to run on an instance of its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ContainerSpec {
    pub image: String,
    /// The command, split like a shell would (without running one); `None` keeps the image's default.
    pub cmd: Option<String>,
    /// `KEY=value` items, passed to the container as they are.
    pub env: Vec<String>,
    /// Instance types to ask the cloud for; the provider's default when empty.
    #[serde(default)]
    pub instance_types: Vec<String>,
    /// Files placed in the container before it starts (seed 002's uploaded scripts and binaries).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileSpec>,
    /// Highest spot price per instance-hour in USD (`"0.05"`); unset pays up to the on-demand price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_price: Option<String>,
    /// Subnets to launch in (`subnet-…`); the provider's configured ones when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<String>,
    /// Root volume size in GiB; the image's own when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_gb: Option<u32>,
    /// Launch on-demand when the fleet finds no spot capacity (costs more, but the job runs).
    #[serde(default)]
    pub on_demand_fallback: bool,
    /// What the container may use; the deployment's `[container_limits]` for any unset.
    #[serde(default, skip_serializing_if = "ContainerLimits::is_unset")]
    pub limits: ContainerLimits,
}

/// A file for the container: absolute path, mode, content in base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileSpec {
    pub path: String,
    pub mode: u32,
    pub content_base64: String,
}

impl Job {
    /// The container this job runs, if it runs one.
    pub fn container(&self) -> Option<&ContainerSpec> {
        match &self.runner {
            Runner::Container(spec) => Some(spec),
            Runner::Dummy(_) | Runner::Http(_) | Runner::Instance(_) => None,
        }
    }

    /// The job's schedule, parsed in its time zone; periods count from its creation.
    pub fn parsed_schedule(&self) -> Result<Schedule> {
        let tz = parse_time_zone(&self.timezone, "timezone")?;
        Schedule::parse(&self.schedule, tz, self.created_at, "schedule")
    }

    /// The first fire at or after `now`, inside the job's window. A one-shot's instant even if past.
    pub fn first_fire(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
        let schedule = self.parsed_schedule()?;
        let from = self.policies.start_at.map_or(now, |start| start.max(now));
        let first = match schedule {
            Schedule::Once(at) => Some(at.max(self.policies.start_at.unwrap_or(at))),
            recurring => recurring.first_at_or_after(from),
        };
        Ok(self.within_window(first))
    }

    /// The fire after `after`, inside the job's window.
    pub fn next_fire_after(&self, after: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
        let schedule = self.parsed_schedule()?;
        let next = match self.policies.start_at {
            Some(start) if start > after => schedule.first_at_or_after(start),
            _ => schedule.next_after(after),
        };
        Ok(self.within_window(next))
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

/// Bounds on what a job may carry, so one request cannot fill the store.
pub mod limits {
    pub const IMAGE_LEN: usize = 512;
    pub const CMD_LEN: usize = 16 * 1024;
    pub const ENV_ITEMS: usize = 256;
    pub const ENV_ITEM_LEN: usize = 32 * 1024;
    pub const INSTANCE_TYPES: usize = 16;
    pub const SUBNETS: usize = 16;
    pub const TEMPLATE_LEN: usize = 64 * 1024;
    /// A file's content, base64 as sent (the api's default body limit).
    pub const FILE_BASE64_LEN: usize = 256 * 1024;
}

impl ContainerSpec {
    /// Checks every field, naming the first bad one. `prefix` is prepended to field names
    /// (`""` for seed 003's flat body).
    pub fn validate(&self, prefix: &str) -> Result<()> {
        let field = |name: &str| format!("{prefix}{name}");
        let image = self.image.trim();
        if image.is_empty() {
            return Err(Error::invalid(field("docker_image"), "must not be empty"));
        }
        if image.len() > limits::IMAGE_LEN
            || image.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Error::invalid(
                field("docker_image"),
                format!(
                    "must be an image reference without spaces, at most {} bytes",
                    limits::IMAGE_LEN
                ),
            ));
        }
        if let Err(err) = image.parse::<oci_spec::distribution::Reference>() {
            return Err(Error::invalid(
                field("docker_image"),
                format!(
                    "{image:?} is not an image reference ([registry/]name[:tag][@digest]): {err}"
                ),
            ));
        }
        if let Some(cmd) = &self.cmd {
            if cmd.len() > limits::CMD_LEN {
                return Err(Error::invalid(
                    field("cmd"),
                    format!("longer than {} bytes", limits::CMD_LEN),
                ));
            }
            // Empty (or blank) means the image's default command.
            if !cmd.trim().is_empty() && self.argv().is_none() {
                return Err(Error::invalid(
                    field("cmd"),
                    "has an unterminated quote or escape",
                ));
            }
        }
        if self.env.len() > limits::ENV_ITEMS {
            return Err(Error::invalid(
                field("env"),
                format!("more than {} items", limits::ENV_ITEMS),
            ));
        }
        for (i, item) in self.env.iter().enumerate() {
            let name = field(&format!("env[{i}]"));
            let Some((key, _value)) = item.split_once('=') else {
                return Err(Error::invalid(
                    name,
                    format!("{item:?} is not of the form key=value"),
                ));
            };
            if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(Error::invalid(
                    name,
                    "the key before '=' must be a non-empty name without spaces",
                ));
            }
            if item.len() > limits::ENV_ITEM_LEN || item.contains('\0') {
                return Err(Error::invalid(
                    name,
                    format!(
                        "must be at most {} bytes, without NUL",
                        limits::ENV_ITEM_LEN
                    ),
                ));
            }
        }
        if self.files.len() > 16 {
            return Err(Error::invalid(field("files"), "at most 16 files"));
        }
        for (i, file) in self.files.iter().enumerate() {
            let ok_path = file.path.starts_with('/')
                && !file.path.split('/').any(|part| part == "..")
                && file.path.len() <= 256
                && !file.path.chars().any(char::is_control);
            if !ok_path || file.mode > 0o7777 {
                return Err(Error::invalid(
                    field(&format!("files[{i}]")),
                    "needs an absolute path without '..' and a mode up to 0o7777",
                ));
            }
            let content_ok = file.content_base64.len() <= limits::FILE_BASE64_LEN
                && BASE64.decode(file.content_base64.as_bytes()).is_ok();
            if !content_ok {
                return Err(Error::invalid(
                    field(&format!("files[{i}].content_base64")),
                    format!("must be base64, at most {} bytes", limits::FILE_BASE64_LEN),
                ));
            }
        }
        if self.instance_types.len() > limits::INSTANCE_TYPES
            || self
                .instance_types
                .iter()
                .any(|t| t.is_empty() || t.len() > 64)
        {
            return Err(Error::invalid(
                field("instance_types"),
                "at most 16 non-empty names",
            ));
        }
        if let Some(price) = &self.max_price {
            let valid = price.len() <= 16
                && price.parse::<f64>().is_ok_and(|p| p.is_finite() && p > 0.0)
                && price.chars().all(|c| c.is_ascii_digit() || c == '.');
            if !valid {
                return Err(Error::invalid(
                    field("max_price"),
                    "must be a positive decimal price in USD per hour, like \"0.05\"",
                ));
            }
        }
        let subnet_ok = |s: &String| {
            s.strip_prefix("subnet-").is_some_and(|hex| {
                !hex.is_empty() && hex.len() <= 32 && hex.chars().all(|c| c.is_ascii_hexdigit())
            })
        };
        if self.subnets.len() > limits::SUBNETS || !self.subnets.iter().all(subnet_ok) {
            return Err(Error::invalid(
                field("subnets"),
                format!(
                    "at most {} subnet ids like \"subnet-0abc\"",
                    limits::SUBNETS
                ),
            ));
        }
        if self.disk_gb.is_some_and(|gb| gb == 0 || gb > 16_384) {
            return Err(Error::invalid(field("disk_gb"), "must be 1 to 16384"));
        }
        self.limits.validate(prefix)
    }

    /// The registry the image comes from, as Docker reads its reference (`busybox` is Docker Hub's,
    /// `docker.io`); `None` for a reference that does not parse.
    pub fn registry(&self) -> Option<String> {
        let reference: oci_spec::distribution::Reference = self.image.trim().parse().ok()?;
        Some(reference.registry().to_string())
    }

    /// The command split into arguments the way a shell would, without running a shell.
    /// An empty command means the image's default.
    pub fn argv(&self) -> Option<Vec<String>> {
        let cmd = self.cmd.as_deref()?.trim();
        if cmd.is_empty() {
            return None;
        }
        shlex::split(cmd)
    }
}

/// Where a run is. Only moves forward, along [`RunState::can_move_to`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
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
    pub const ALL: [RunState; 10] = [
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
            // An agent may fail before its container starts (an image that cannot be pulled).
            Booting => matches!(next, Running | Failed | TimedOut | Interrupted | Cancelled),
            Running => matches!(
                next,
                Succeeded | Failed | TimedOut | Interrupted | Cancelled
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
            Pending => "scheduled",
            // An interrupted run is retried on a new instance, so the job is still under way.
            Provisioning | Booting | Running | Interrupted => "running",
            Succeeded => "finished",
            Failed | TimedOut | Cancelled | ProvisionFailed => "failed",
        }
    }

    pub fn as_str(self) -> &'static str {
        use RunState::*;
        match self {
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

/// Where an instance is in its life.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    Requested,
    Running,
    Terminating,
    Terminated,
}

impl InstanceState {
    pub const ALL: [InstanceState; 4] = [
        InstanceState::Requested,
        InstanceState::Running,
        InstanceState::Terminating,
        InstanceState::Terminated,
    ];

    pub fn can_move_to(self, next: InstanceState) -> bool {
        use InstanceState::*;
        match self {
            Requested => matches!(next, Running | Terminating | Terminated),
            Running => matches!(next, Terminating | Terminated),
            Terminating => matches!(next, Terminated),
            Terminated => false,
        }
    }

    pub fn check_move(self, next: InstanceState) -> Result<()> {
        if self.can_move_to(next) {
            Ok(())
        } else {
            Err(Error::conflict(format!(
                "illegal instance transition {self} -> {next}"
            )))
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Requested => "requested",
            InstanceState::Running => "running",
            InstanceState::Terminating => "terminating",
            InstanceState::Terminated => "terminated",
        }
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for InstanceState {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        InstanceState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| Error::internal(format!("unknown instance state {s:?}")))
    }
}

/// One execution of a job, for one scheduled instant and attempt.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
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
    /// When the latest relaunch was due.
    pub relaunch_at: Option<DateTime<Utc>>,
    /// What the run's instance cost, in USD, once it was terminated.
    pub cost_usd: Option<f64>,
    /// SHA-256 of the secret the run's agent presents; never serialised to callers.
    #[serde(skip)]
    pub secret_hash: String,
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

    /// [`Run::identity`] as environment variables (`SPOT_RUN_ID=...`).
    pub fn identity_env(&self) -> Vec<String> {
        self.identity()
            .into_iter()
            .map(|(name, value)| format!("SPOT_{name}={value}"))
            .collect()
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

/// A machine a run executes on: an EC2 instance, or an agent process with the `local` provider.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Instance {
    pub id: String,
    pub run_id: String,
    pub provider: String,
    pub state: InstanceState,
    pub instance_type: Option<String>,
    pub dns_name: Option<String>,
    pub ip_address: Option<String>,
    /// `spot` or `on-demand`.
    pub lifecycle: Option<String>,
    /// The agent has reported in and is running the job.
    pub ready: bool,
    #[schema(value_type = Object)]
    pub transitions: BTreeMap<InstanceState, DateTime<Utc>>,
    /// The availability zone it runs in, when the cloud said.
    pub zone: Option<String>,
    /// The price per hour it pays, fixed at launch (see [`crate::pricing`]).
    pub usd_per_hour: Option<f64>,
    pub price_source: Option<crate::pricing::PriceSource>,
    /// Set once it is terminated: the seconds billed, the cost, and the seconds it lived past its
    /// run's end beyond the allowance.
    pub billed_secs: Option<u64>,
    #[serde(skip)]
    pub cost_nano_usd: Option<u64>,
    pub leaked_secs: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_only_move_forward() {
        use RunState::*;
        let path = [Pending, Provisioning, Booting, Running, Succeeded];
        for pair in path.windows(2) {
            assert!(pair[0].can_move_to(pair[1]), "{} -> {}", pair[0], pair[1]);
            assert!(!pair[1].can_move_to(pair[0]), "{} -> {}", pair[1], pair[0]);
        }
        assert!(Pending.can_move_to(Running), "light runners start at once");
        assert!(!Pending.can_move_to(Booting));
        assert!(!Pending.can_move_to(Succeeded));
        assert!(Booting.can_move_to(Failed));
        assert!(Provisioning.can_move_to(ProvisionFailed));
        assert!(
            Pending.can_move_to(Failed) && Provisioning.can_move_to(Failed),
            "a run lost before its launch fails"
        );
    }

    #[test]
    fn terminal_states_are_final() {
        for from in RunState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in RunState::ALL {
                assert!(!from.can_move_to(to), "{from} -> {to} must be illegal");
                assert!(from.check_move(to).is_err());
            }
        }
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in RunState::ALL {
            assert_eq!(state.as_str().parse::<RunState>().unwrap(), state);
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
        for state in InstanceState::ALL {
            assert_eq!(state.as_str().parse::<InstanceState>().unwrap(), state);
        }
    }

    fn spec(cmd: Option<&str>, env: &[&str]) -> ContainerSpec {
        ContainerSpec {
            image: "busybox:latest".into(),
            cmd: cmd.map(str::to_string),
            env: env.iter().map(|s| s.to_string()).collect(),
            instance_types: vec![],
            ..ContainerSpec::default()
        }
    }

    #[test]
    fn container_specs_are_validated_field_by_field() {
        assert!(
            spec(Some("sleep 60"), &["key=value", "key1=value=1", "EMPTY="])
                .validate("")
                .is_ok()
        );
        let err = spec(None, &["ok=1", "novalue"]).validate("").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("env[1]"));
        let err = spec(None, &["=value"]).validate("").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("env[0]"));
        let err = spec(Some("echo 'unterminated"), &[])
            .validate("")
            .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("cmd"));
        // An empty command is the image's default, as `argv` reads it.
        assert!(spec(Some(""), &[]).validate("").is_ok());
        assert!(spec(Some("  "), &[]).validate("").is_ok());
        let mut empty_image = spec(None, &[]);
        empty_image.image = "  ".into();
        assert_eq!(
            empty_image.validate("").unwrap_err().field.as_deref(),
            Some("docker_image")
        );
    }

    #[test]
    fn commands_split_like_a_shell_without_one() {
        let argv = spec(Some(r#"sh -c 'echo "$HOME"; exit 3'"#), &[])
            .argv()
            .unwrap();
        assert_eq!(argv, vec!["sh", "-c", r#"echo "$HOME"; exit 3"#]);
        assert_eq!(spec(Some("   "), &[]).argv(), None);
        assert_eq!(spec(None, &[]).argv(), None);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let retry = RetryPolicy {
            max_attempts: 5,
            backoff_secs: 10,
            backoff_max_secs: 60,
        };
        let ceilings: Vec<u64> = (2..=6)
            .map(|n| retry.backoff_ceiling(n).as_secs())
            .collect();
        assert_eq!(ceilings, vec![10, 20, 40, 60, 60]);
    }

    #[test]
    fn windows_bound_the_fires() {
        use chrono::TimeZone;
        let at = |h: u32| Utc.with_ymd_and_hms(2026, 5, 1, h, 0, 0).unwrap();
        let job = Job {
            id: "j".into(),
            account: "a".into(),
            group: "g".into(),
            name: String::new(),
            description: String::new(),
            modified_by: String::new(),
            tags: vec![],
            schedule: "@hourly".into(),
            timezone: "UTC".into(),
            runner: Runner::Container(spec(None, &[])),
            enabled: true,
            generation: 1,
            policies: Policies {
                start_at: Some(at(5)),
                end_at: Some(at(7)),
                ..Policies::default()
            },
            created_at: at(0),
            updated_at: at(0),
            next_fire_at: None,
        };
        assert_eq!(job.first_fire(at(1)).unwrap(), Some(at(5)));
        assert_eq!(job.upcoming(at(0), 10).unwrap(), vec![at(5), at(6), at(7)]);
        assert_eq!(job.next_fire_after(at(7)).unwrap(), None);
    }

    #[test]
    fn simple_status_words_follow_seed_003() {
        assert_eq!(RunState::Pending.simple_status(), "scheduled");
        assert_eq!(RunState::Running.simple_status(), "running");
        assert_eq!(RunState::Succeeded.simple_status(), "finished");
        assert_eq!(RunState::Failed.simple_status(), "failed");
        assert_eq!(RunState::ProvisionFailed.simple_status(), "failed");
    }

    #[test]
    fn instances_never_come_back_from_terminated() {
        use InstanceState::*;
        assert!(Requested.can_move_to(Running));
        assert!(Running.can_move_to(Terminating));
        assert!(Terminating.can_move_to(Terminated));
        for to in InstanceState::ALL {
            assert!(!Terminated.can_move_to(to));
        }
        assert!(!Terminating.can_move_to(Running));
    }
}
