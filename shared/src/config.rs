//! The one typed configuration of every service, layered: built-in defaults
//! (`shared/config/default.toml`), then an optional file, then `SPOT__SECTION__KEY` environment variables.
//! Unknown keys are refused, and secrets are held in [`SecretString`] so they never reach a log.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

const DEFAULTS: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub redis: RedisSettings,
    pub rabbitmq: RabbitSettings,
    pub api: ApiSettings,
    pub auth: AuthSettings,
    pub provisioner: ProvisionerSettings,
    pub reaper: ReaperSettings,
    pub cloud: CloudSettings,
    pub log: LogSettings,
    #[serde(default)]
    pub minion: MinionSettings,
    pub cronjob: CronjobSettings,
    pub fetch: crate::file_source::FetchSettings,
    #[serde(default)]
    pub outbound: crate::outbound::OutboundSettings,
    pub ec2: Ec2Settings,
    pub container_limits: crate::container_limits::ContainerLimitSettings,
    pub quotas: crate::quotas::QuotaSettings,
    pub pricing: crate::pricing::PricingSettings,
    pub notify: NotifySettings,
    pub audit: AuditSettings,
}

/// The audit log of state-changing requests (`GET /v1/audit`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// Entries are kept this many days,
    pub retention_days: u32,
    /// and at most this many per account (the oldest go first).
    pub max_entries: usize,
}

impl AuditSettings {
    pub fn retention(&self) -> chrono::Duration {
        chrono::Duration::days(i64::from(self.retention_days.max(1)))
    }
}

/// Seed 002's surface (`/jobs`): its jobs name no image, so they run in this one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CronjobSettings {
    pub image: String,
}

/// Minion's compatibility surface (`/v1/minion`): its accounts, each with the runners it may use, and
/// the runners by name, as minion's own configuration has them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinionSettings {
    #[serde(default)]
    pub accounts: std::collections::BTreeMap<String, MinionAccount>,
    #[serde(default)]
    pub runners: std::collections::BTreeMap<String, MinionRunner>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinionAccount {
    pub runners: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum MinionRunner {
    /// Renders `template` with the account's name.
    Dummy { template: String },
    /// Starts, stops or reboots the job's `instance_id` through the EC2 API.
    Instance {},
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// May carry a password, so it is a secret.
    pub url: SecretString,
    pub key_prefix: String,
    /// Redis Cluster: `url` and `other_urls` are seed nodes, the store follows the slot map from
    /// them (failovers included), and every key carries the prefix as its hash tag.
    #[serde(default)]
    pub cluster: bool,
    /// More seed nodes of a cluster; a single Redis (`cluster = false`) has none.
    #[serde(default)]
    pub other_urls: Vec<SecretString>,
    /// Replicas that must hold an acknowledged write (a job saved, a fire recorded, a run-now
    /// asked) before it is acknowledged: `WAIT n` after the write. 0: none waited for.
    #[serde(default)]
    pub wait_replicas: u8,
    /// How long a write waits for its replicas; past it the write stands and is counted as
    /// `writes_unreplicated` (a replica down must not stop the service).
    #[serde(default = "default_wait_timeout_ms")]
    pub wait_timeout_ms: u64,
    /// How many shards a deployment's jobs (with their timers and runs) are split over, each
    /// pumped by the provisioner holding its lease; on a cluster they spread over the slots. Fixed
    /// for a deployment's life: the store refuses another count than the one it was created with.
    #[serde(default = "default_timer_shards")]
    pub timer_shards: u16,
}

/// The most timer shards a deployment may have (each costs the pump a lease and a query per round).
pub const MAX_SHARDS: u16 = 1024;

fn default_timer_shards() -> u16 {
    1
}

fn default_wait_timeout_ms() -> u64 {
    1000
}

impl RedisSettings {
    /// Every seed node, `url` first.
    pub fn nodes(&self) -> Vec<&SecretString> {
        std::iter::once(&self.url).chain(&self.other_urls).collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitSettings {
    pub url: SecretString,
    /// The other nodes of a RabbitMQ cluster: a service whose node does not answer, or goes away,
    /// tries the next in turn (every queue is a quorum queue, served from any node).
    #[serde(default)]
    pub other_urls: Vec<SecretString>,
    pub namespace: String,
    pub timer_levels: u8,
    pub timer_unit_ms: u64,
    pub timer_lead_ms: u64,
    /// The level through which the pump hands timers to RabbitMQ: 2^level units (plus one) before they
    /// are due, each then waits in that one level (one dead-letter hop). -1: in their last unit, straight
    /// to the fires queue (no hop).
    pub timer_pump_level: i8,
}

impl RabbitSettings {
    /// Every node to connect to, `url` first.
    pub fn nodes(&self) -> Vec<&SecretString> {
        std::iter::once(&self.url).chain(&self.other_urls).collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    pub host: String,
    pub port: u16,
    pub public_url: String,
    pub max_body_bytes: usize,
    pub max_log_bytes: usize,
    /// Label `/metrics` series with account names (every caller with a key sees them); off, the
    /// series are totals.
    pub metrics_by_account: bool,
    /// Log follow streams open at once per account, and in all.
    pub follow_streams_total: usize,
    /// How long a request's `Idempotency-Key` and its answer are kept: a retry within this answers
    /// the first answer again.
    pub idempotency_ttl_secs: u64,
    /// How long a request with a key may be in flight before a retry with the same key may run it
    /// again (an api that died mid-request does not hold its key for the whole TTL).
    pub idempotency_lease_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub accounts: Vec<AccountSettings>,
    pub admin_keys: Vec<SecretString>,
    /// bcrypt-hashed keys (minion's clients) of a higher cost are refused without being tried.
    pub max_bcrypt_cost: u32,
    /// bcrypt verifications at once, off the request threads; more wait their turn.
    pub bcrypt_concurrency: usize,
    /// Failed bcrypt tokens per client address per minute; past it, 429 without trying more.
    pub bcrypt_failures_per_minute: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountSettings {
    pub name: String,
    pub keys: Vec<SecretString>,
    /// The key every notification of the account is signed with (`X-Spot-Signature`, HMAC-SHA256
    /// of the body). Without it the account's jobs may not ask for notifications.
    #[serde(default)]
    pub notify_secret: Option<SecretString>,
    /// Webhooks told of every run of the account, besides each job's own `policies.notify`.
    #[serde(default)]
    pub notify: Vec<crate::model::NotifyTarget>,
}

impl AccountSettings {
    /// The account's notify secret, when one is set and not empty.
    pub fn notify_secret(&self) -> Option<&SecretString> {
        self.notify_secret
            .as_ref()
            .filter(|secret| !secret.expose_secret().is_empty())
    }
}

/// How notifications are delivered (see [`crate::notify`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySettings {
    /// Attempts per notification and target before it is given up (each kept on the run).
    pub max_attempts: u32,
    /// The wait before the second attempt; it doubles each attempt after, up to `backoff_max_secs`.
    pub backoff_secs: u64,
    pub backoff_max_secs: u64,
    /// How long one attempt may take, connecting included.
    pub timeout_secs: u64,
    /// How long a notifier holds the notifications it took: one that died holding them lets
    /// another deliver them after this.
    pub lease_secs: u64,
    /// How often the notifier looks for notifications due when it found none.
    pub poll_interval_ms: u64,
    /// Notifications taken per round, and delivered at once.
    pub batch: usize,
    pub concurrency: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionerSettings {
    pub prefetch: u16,
    /// How often the timer pump looks for timers coming due, when it found none last time.
    pub pump_interval_ms: u64,
    /// Timers the pump takes per round.
    pub pump_batch: usize,
    /// Timers per message the pump publishes (RabbitMQ's cost is per message).
    pub pump_message_fires: usize,
    /// How long one launch may hold its run: past this a crashed launcher no longer blocks a retry.
    pub launch_lease_secs: u64,
    /// After a launch call whose answer was lost, how long to wait for EC2's eventually consistent
    /// listings to show the instance before launching again.
    pub launch_settle_secs: u64,
    /// How often one provisioner (a lease) hands overdue fires back to the pump.
    pub reconcile_interval_secs: u64,
    /// A fire this late without its run recorded is taken as lost.
    pub reconcile_grace_secs: u64,
    /// On SIGTERM: how long fires in hand may take to finish before the rest are handed back.
    pub shutdown_grace_secs: u64,
    /// How often a run that never started (its launch lost, its provisioner dead) is launched again,
    /// as the same attempt, before it ends `provision_failed`. Never counted against its retries.
    pub max_relaunches: u32,
    /// Timers due further ahead than this are parked in compact buckets (about a hundred bytes a
    /// job less) and brought into `timers` as they come within it (see `store::far_timers`).
    pub far_timer_horizon_secs: u64,
    /// How often each shard's pump brings the parked timers that came within the horizon in.
    pub far_timer_promote_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReaperSettings {
    pub prefetch: u16,
    /// Seconds between sweeps (orphans, timeouts, lost heartbeats, stale spot requests).
    pub sweep_interval_secs: u64,
    /// An instance younger than this whose run does not name it yet may still be being recorded.
    pub orphan_grace_secs: u64,
    /// A run still going this long past its timeout is ended as timed out.
    pub timeout_grace_secs: u64,
    /// A running run whose agent has not heartbeated for this long is lost.
    pub heartbeat_timeout_secs: u64,
    /// How often agents heartbeat (told at launch); shorter than `heartbeat_timeout_secs`.
    pub agent_heartbeat_secs: u64,
    /// A booting run whose agent never reported in within this long is lost.
    pub boot_timeout_secs: u64,
    /// Spot requests and fleets left open longer than this are cancelled.
    pub stale_request_secs: u64,
    /// A run still `pending` or `provisioning` this long after it was recorded (or last relaunched),
    /// with no launch under way, never started (its message or its provisioner went away): it is
    /// launched again, up to `provisioner.max_relaunches`.
    pub pending_timeout_secs: u64,
    /// On SIGTERM: how long terminations in hand may take to finish before the rest are handed back.
    pub shutdown_grace_secs: u64,
    /// On a cluster, an account index entry noted this long ago whose job does not exist was left by
    /// a crash between a save's or a delete's two steps, and is removed.
    pub index_grace_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Local,
    Ec2,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudSettings {
    pub provider: ProviderKind,
    pub local: LocalCloudSettings,
    pub ec2: Ec2CloudSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalCloudSettings {
    pub agent_bin: String,
    pub log_dir: PathBuf,
}

/// `[cloud.ec2]`: where and how instances are launched.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ec2CloudSettings {
    /// Names this deployment in the tags of everything it launches; sweeps touch only these.
    pub cluster: String,
    /// The AMI: ideally with Docker and `spot-agent` installed.
    pub image_id: String,
    /// Instance profile name or ARN (the agent needs no AWS permissions; empty for none).
    pub instance_profile: String,
    pub security_group_ids: Vec<String>,
    pub key_name: String,
    /// Subnets to spread over when a job names none; empty lets EC2 pick the default VPC's.
    pub subnet_ids: Vec<String>,
    /// Instance types when a job names none; several make spot capacity likely.
    pub instance_types: Vec<String>,
    /// The root device of the AMI, for jobs that ask for a disk size.
    pub root_device_name: String,
    /// Where the boot script downloads the agent when the AMI lacks it; empty when it has it.
    pub agent_download_url: String,
}

/// `[ec2]`: the EC2 API (the `ec2` provider and the instance runner both use it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ec2Settings {
    /// Empty: the standard endpoint of the region.
    pub endpoint_url: String,
    pub region: String,
    /// The tag whose value names the account an instance belongs to.
    pub account_tag: String,
    /// Let accounts act on instances that carry no account tag (never on another account's).
    pub allow_untagged: bool,
    /// Attempts per call; throttling and 5xx answers are retried with exponential backoff and jitter.
    pub max_attempts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

impl Settings {
    /// Defaults, then `file` (or the file named by `SPOT_CONFIG`), then TOML text in
    /// `SPOT_CONFIG_TOML`, then the environment. The text form is for places that can set variables
    /// but not mount files, such as every Compose version (`configs.content` needs Compose 2.23).
    pub fn load(file: Option<&Path>) -> Result<Settings, config::ConfigError> {
        let env_file = std::env::var_os("SPOT_CONFIG").map(PathBuf::from);
        let file = file.map(Path::to_path_buf).or(env_file);
        let text = std::env::var("SPOT_CONFIG_TOML").ok();
        Self::layered(file.as_deref(), text.as_deref(), Self::environment())
    }

    /// `SPOT__SECTION__KEY` variables (`SPOT_CONFIG*` have one underscore and are not among them).
    fn environment() -> config::Environment {
        config::Environment::with_prefix("SPOT")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
    }

    fn layered(
        file: Option<&Path>,
        text: Option<&str>,
        environment: config::Environment,
    ) -> Result<Settings, config::ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        if let Some(text) = text {
            builder = builder.add_source(config::File::from_str(text, config::FileFormat::Toml));
        }
        builder
            .add_source(environment)
            .build()?
            .try_deserialize::<Settings>()?
            .checked()
    }

    /// Rules one field cannot say alone: account names are unique and none is `admin` (the name
    /// admin keys act under), and the bcrypt knobs are in range.
    fn checked(self) -> Result<Settings, config::ConfigError> {
        let refuse = |message: String| Err(config::ConfigError::Message(message));
        let mut names = std::collections::HashSet::new();
        for account in &self.auth.accounts {
            let name = account.name.to_ascii_lowercase();
            if name == "admin" {
                return refuse("auth.accounts: `admin` is reserved for admin keys".into());
            }
            if !names.insert(name) {
                return refuse(format!("auth.accounts: {:?} is named twice", account.name));
            }
            let field = format!("auth.accounts.{}.notify", account.name);
            if let Err(err) = crate::model::NotifyTarget::validate_all(&account.notify, &field) {
                return refuse(err.to_string());
            }
            if !account.notify.is_empty() && account.notify_secret().is_none() {
                return refuse(format!(
                    "{field}: the account has no notify_secret to sign its notifications with"
                ));
            }
        }
        for name in self.quotas.accounts.keys() {
            if !names.contains(&name.to_ascii_lowercase()) {
                return refuse(format!(
                    "quotas.accounts.{name}: no such account in auth.accounts"
                ));
            }
        }
        if !self.redis.cluster && !self.redis.other_urls.is_empty() {
            return refuse(
                "redis.other_urls: only a cluster (redis.cluster = true) has them".into(),
            );
        }
        if self.redis.key_prefix.contains(['{', '}']) {
            return refuse(
                "redis.key_prefix: no braces; on a cluster the prefix becomes the hash tag itself"
                    .into(),
            );
        }
        if !(1..=MAX_SHARDS).contains(&self.redis.timer_shards) {
            return refuse(format!("redis.timer_shards must be 1 to {}", MAX_SHARDS));
        }
        if self.reaper.agent_heartbeat_secs == 0
            || self.reaper.agent_heartbeat_secs >= self.reaper.heartbeat_timeout_secs
        {
            return refuse(
                "reaper.agent_heartbeat_secs must be at least 1 and below reaper.heartbeat_timeout_secs"
                    .into(),
            );
        }
        if !(1..=3650).contains(&self.audit.retention_days) || self.audit.max_entries == 0 {
            return refuse(
                "audit.retention_days must be 1 to 3650, audit.max_entries at least 1".into(),
            );
        }
        if self.notify.max_attempts == 0
            || self.notify.batch == 0
            || self.notify.concurrency == 0
            || self.notify.timeout_secs == 0
        {
            return refuse(
                "notify.max_attempts, batch, concurrency and timeout_secs must be at least 1"
                    .into(),
            );
        }
        if !(4..=31).contains(&self.auth.max_bcrypt_cost) {
            return refuse("auth.max_bcrypt_cost must be 4 to 31".into());
        }
        let provisioner = &self.provisioner;
        if provisioner.far_timer_promote_secs == 0
            || provisioner.far_timer_horizon_secs < 2 * provisioner.far_timer_promote_secs
        {
            // A parked timer must be brought in well before the pump needs it: a promotion missed
            // (a provisioner restarting) still leaves one more before the timer is due.
            return refuse(
                "provisioner.far_timer_promote_secs must be at least 1 and at most half of \
                 far_timer_horizon_secs"
                    .into(),
            );
        }
        if self.auth.bcrypt_concurrency == 0 || self.auth.bcrypt_failures_per_minute == 0 {
            return refuse(
                "auth.bcrypt_concurrency and bcrypt_failures_per_minute must be at least 1".into(),
            );
        }
        Ok(self)
    }

    /// The built-in defaults alone, ignoring files and environment (for tests).
    pub fn defaults() -> Settings {
        config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .expect("built-in defaults are valid")
    }

    /// Defaults overlaid with a TOML text (for tests and tools).
    pub fn from_toml(text: &str) -> Result<Settings, config::ConfigError> {
        config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()?
            .try_deserialize::<Settings>()?
            .checked()
    }

    pub fn timer_levels(&self) -> crate::timer::TimerLevels {
        crate::timer::TimerLevels::new(
            &self.rabbitmq.namespace,
            self.rabbitmq.timer_levels,
            self.rabbitmq.timer_unit_ms,
            self.rabbitmq.timer_lead_ms,
        )
    }
}

/// The value of `--config PATH` (or `--config=PATH`) on the command line, if given.
pub fn config_path_from_args() -> Option<PathBuf> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_is_no_account_name_and_names_are_unique() {
        for accounts in [
            r#"[{name = "Admin", keys = ["k1"]}]"#,
            r#"[{name = "acme", keys = ["k1"]}, {name = "acme", keys = ["k2"]}]"#,
        ] {
            let err = Settings::from_toml(&format!("[auth]\naccounts = {accounts}")).unwrap_err();
            assert!(err.to_string().contains("auth.accounts"), "{err}");
        }
        assert!(Settings::from_toml("[auth]\nmax_bcrypt_cost = 40").is_err());
    }

    #[test]
    fn redis_cluster_settings_are_checked() {
        let err = Settings::from_toml("[redis]\nother_urls = [\"redis://b:6379\"]").unwrap_err();
        assert!(err.to_string().contains("only a cluster"), "{err}");
        let err = Settings::from_toml("[redis]\nkey_prefix = \"{spot}\"").unwrap_err();
        assert!(err.to_string().contains("no braces"), "{err}");
        let settings = Settings::from_toml(
            "[redis]\ncluster = true\nother_urls = [\"redis://b:6379\"]\nwait_replicas = 1",
        )
        .unwrap();
        assert_eq!(settings.redis.nodes().len(), 2);
        assert_eq!(settings.redis.wait_timeout_ms, 1000);
    }

    #[test]
    fn defaults_load() {
        let settings = Settings::defaults();
        assert_eq!(settings.api.port, 8080);
        assert_eq!(settings.cloud.provider, ProviderKind::Local);
        assert_eq!(settings.rabbitmq.timer_levels, 28);
    }

    #[test]
    fn files_override_and_unknown_keys_are_refused() {
        let settings = Settings::from_toml(
            "[api]\nport = 9090\n[[auth.accounts]]\nname = \"acme\"\nkeys = [\"k1\"]\n",
        )
        .unwrap();
        assert_eq!(settings.api.port, 9090);
        assert_eq!(settings.auth.accounts[0].keys[0].expose_secret(), "k1");
        let err = Settings::from_toml("[api]\nprot = 9090\n").unwrap_err();
        assert!(err.to_string().contains("prot"), "{err}");
    }

    #[test]
    fn layers_apply_file_then_text_then_environment() {
        let dir = std::env::temp_dir().join(format!("spot-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("spot.toml");
        std::fs::write(&file, "[api]\nport = 9001\nhost = \"0.0.0.0\"\n").unwrap();
        let text = "[api]\nport = 9002\n[[auth.accounts]]\nname = \"acme\"\nkeys = [\"k1\"]\n";
        let environment = |vars: &[(&str, &str)]| {
            let map = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Settings::environment().source(Some(map))
        };

        let settings = Settings::layered(Some(&file), Some(text), environment(&[])).unwrap();
        assert_eq!(
            (settings.api.host.as_str(), settings.api.port),
            ("0.0.0.0", 9002)
        );
        assert_eq!(settings.auth.accounts[0].name, "acme");
        let env = environment(&[("SPOT__API__PORT", "9003"), ("SPOT_CONFIG_TOML", "ignored")]);
        let settings = Settings::layered(Some(&file), Some(text), env).unwrap();
        assert_eq!(settings.api.port, 9003);
        // The text is checked like a file: an unknown key is refused, by name.
        let err = Settings::layered(None, Some("[api]\nprot = 1\n"), environment(&[])).unwrap_err();
        assert!(err.to_string().contains("prot"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let settings = Settings::from_toml(
            "[[auth.accounts]]\nname = \"acme\"\nkeys = [\"super-secret-key\"]\n",
        )
        .unwrap();
        assert!(!format!("{settings:?}").contains("super-secret-key"));
    }
}
