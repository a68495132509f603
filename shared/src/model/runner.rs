//! What a run does: the runners (container, instance action, HTTP action, template) with their specs,
//! and the bounds on what a spec may carry.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, Result};

use super::*;

/// What a run of a job does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
// Nearly every job is a container: boxing that variant would save nothing where it counts.
#[allow(clippy::large_enum_variant)]
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
    /// The signal a container being stopped (its timeout, a spot interruption) gets first
    /// (`SIGTERM` unless set), so it can checkpoint before the kill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// How long after that signal the container is killed (30 s unless set; on a spot interruption at
    /// most 100, inside the two-minute notice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_secs: Option<u64>,
    /// Environment variables whose values are read at launch from AWS, by name: the ARN of an SSM
    /// parameter or a Secrets Manager secret (see [`crate::secrets`]). The values are never stored.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub secrets: std::collections::BTreeMap<String, String>,
    /// An array job: each fire runs this many copies, each on its own instance, told its
    /// `SPOT_ARRAY_INDEX` (0 to N-1); at most [`MAX_ARRAY_SIZE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array_size: Option<u32>,
    /// At most this many copies of an array fire under way at once
    /// ([`DEFAULT_ARRAY_PARALLELISM`] unless set, never more than `array_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array_parallelism: Option<u32>,
}

/// The most copies one array fire makes (`runner.array_size`).
pub const MAX_ARRAY_SIZE: u32 = 10_000;

/// How many copies of an array fire are under way at once unless `runner.array_parallelism` says.
pub const DEFAULT_ARRAY_PARALLELISM: u32 = 100;

/// The signals a container may be asked to stop with.
pub const STOP_SIGNALS: [&str; 6] = [
    "SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2",
];

/// The grace after the stop signal unless a job sets one.
pub const DEFAULT_STOP_GRACE_SECS: u64 = 30;

/// The longest grace a spot interruption allows, inside its two-minute notice.
pub const MAX_SPOT_STOP_GRACE_SECS: u64 = 100;

/// A file for the container: absolute path, mode, and its content in base64 or where the agent fetches
/// it from (one of the two).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileSpec {
    pub path: String,
    pub mode: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub content_base64: String,
    /// Fetched on the instance before the container starts; a failed fetch ends the run with why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<crate::file_source::FileSource>,
}

/// What the instance runner can do to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PowerAction {
    Start,
    Stop,
    Reboot,
}

impl PowerAction {
    pub fn parse(text: &str) -> Option<PowerAction> {
        match text {
            "start" => Some(PowerAction::Start),
            "stop" => Some(PowerAction::Stop),
            "reboot" => Some(PowerAction::Reboot),
            _ => None,
        }
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
    /// The array a fire of this container makes: its size and how many of it run at once; `None`
    /// for a container run once a fire.
    pub fn array(&self) -> Option<(u32, u32)> {
        self.array_size.map(|size| {
            let parallelism = self
                .array_parallelism
                .unwrap_or(DEFAULT_ARRAY_PARALLELISM)
                .min(size);
            (size, parallelism)
        })
    }

    fn validate_array(&self, prefix: &str) -> Result<()> {
        match (self.array_size, self.array_parallelism) {
            (Some(size), _) if !(1..=MAX_ARRAY_SIZE).contains(&size) => Err(Error::invalid(
                format!("{prefix}array_size"),
                format!("must be 1 to {MAX_ARRAY_SIZE}, not {size}"),
            )),
            (None, Some(_)) => Err(Error::invalid(
                format!("{prefix}array_parallelism"),
                "only an array job (runner.array_size) has one",
            )),
            (Some(size), Some(parallelism)) if parallelism == 0 || parallelism > size => {
                Err(Error::invalid(
                    format!("{prefix}array_parallelism"),
                    format!("must be 1 to array_size ({size}), not {parallelism}"),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Checks every field, naming the first bad one. `prefix` is prepended to field names
    /// (`""` for seed 003's flat body).
    pub fn validate(&self, prefix: &str) -> Result<()> {
        let field = |name: &str| format!("{prefix}{name}");
        crate::secrets::validate(&self.secrets, &field("secrets"))?;
        self.validate_array(prefix)?;
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
            if let Some(source) = &file.source {
                if !file.content_base64.is_empty() {
                    return Err(Error::invalid(
                        field(&format!("files[{i}]")),
                        "either content_base64 or source, not both",
                    ));
                }
                if let Some(problem) = source.problem() {
                    return Err(Error::invalid(
                        field(&format!("files[{i}].source")),
                        problem,
                    ));
                }
                continue;
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
        if let Some(signal) = &self.stop_signal {
            if !STOP_SIGNALS.contains(&signal.as_str()) {
                return Err(Error::invalid(
                    field("stop_signal"),
                    format!("must be one of {}", STOP_SIGNALS.join(", ")),
                ));
            }
        }
        if self.stop_grace_secs.is_some_and(|secs| secs > 3600) {
            return Err(Error::invalid(field("stop_grace_secs"), "must be 0..=3600"));
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
