//! Cloud providers: how an instance for a run is launched, found again, listed, and terminated.
//!
//! - [`local`]: the default; an "instance" is an agent process on this host.
//! - [`ec2_fleet`] (provider `ec2`): EC2 spot capacity through an `instant` EC2 Fleet, booted by user data.
//!
//! Every launch is keyed by the run and its attempt, so a repeated launch (a redelivered message, a
//! provisioner that crashed after calling the cloud) finds the instance instead of starting another.

pub mod ec2_fleet;
pub mod local;
pub mod spot_prices;
pub mod user_data;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{ProviderKind, Settings};
use crate::error::{Error, Result};
use crate::model::ContainerSpec;
use crate::pricing::{Price, PriceSource, PricingSettings};

/// Docker label carrying the instance id on every container an agent starts.
pub const INSTANCE_LABEL: &str = "spot-scheduler.instance";
/// Docker label carrying the run id.
pub const RUN_LABEL: &str = "spot-scheduler.run";

/// What an agent needs to know, handed to the instance at launch (env locally, user data on EC2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentBoot {
    pub run_id: String,
    pub api_url: String,
    pub secret: String,
    /// Seconds between the agent's heartbeats (`reaper.agent_heartbeat_secs`); 0: the agent's own.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub heartbeat_secs: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// One launch: a run's attempt, what it runs on, and what its agent is told.
#[derive(Debug, Clone)]
pub struct LaunchRequest<'a> {
    pub run_id: &'a str,
    pub attempt: u32,
    /// How often the attempt was launched again before (a new incarnation for the local provider).
    pub relaunches: u32,
    pub account: &'a str,
    pub job_id: &'a str,
    pub spec: &'a ContainerSpec,
    pub boot: &'a AgentBoot,
    /// The values of the container's `secrets`, when the provisioner read them (the local
    /// provider): given to the agent's process and written nowhere. An EC2 instance's agent reads
    /// its own with the instance's role.
    pub secret_values: &'a [(String, secrecy::SecretString)],
}

/// What a launch produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Launched {
    pub instance_id: String,
    pub instance_type: Option<String>,
    /// `spot` or `on-demand`.
    pub lifecycle: Option<String>,
    pub dns_name: Option<String>,
    pub ip_address: Option<String>,
    /// The availability zone, when the cloud said.
    pub zone: Option<String>,
    /// What the cloud refused on the way (a spot pool without capacity, say), one line each.
    pub pool_errors: Vec<String>,
}

/// A launch that did not produce an instance.
#[derive(Debug, Clone)]
pub struct LaunchFailure {
    pub error: Error,
    /// The call may have launched an instance we never heard of (a timeout after sending it): the
    /// next attempt must look before it launches again.
    pub may_have_launched: bool,
    /// What the cloud refused, per pool, before giving up.
    pub pool_errors: Vec<String>,
}

impl From<Error> for LaunchFailure {
    fn from(error: Error) -> Self {
        LaunchFailure {
            error,
            may_have_launched: false,
            pool_errors: Vec::new(),
        }
    }
}

/// An instance of this deployment as the cloud lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudInstance {
    pub id: String,
    /// The run its tags name.
    pub run_id: Option<String>,
    /// `None` when the provider does not know (then it is never taken for a launch in progress).
    pub launched_at: Option<DateTime<Utc>>,
}

/// The configured provider.
pub enum Cloud {
    Local(local::LocalCloud),
    Ec2(ec2_fleet::Ec2Cloud),
}

impl Cloud {
    pub async fn from_settings(settings: &Settings) -> Result<Cloud> {
        match settings.cloud.provider {
            ProviderKind::Local => Ok(Cloud::Local(local::LocalCloud::new(
                &settings.cloud.local,
                &settings.redis.key_prefix,
            )?)),
            ProviderKind::Ec2 => Ok(Cloud::Ec2(
                ec2_fleet::Ec2Cloud::new(&settings.ec2, &settings.cloud.ec2).await?,
            )),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Cloud::Local(_) => "local",
            Cloud::Ec2(_) => "ec2",
        }
    }

    /// The instance a run's attempt was given, if the cloud shows it alive.
    pub async fn find_launch(&self, run_id: &str, attempt: u32) -> Result<Option<Launched>> {
        match self {
            Cloud::Local(local) => Ok(local.find_launch(run_id, attempt)),
            Cloud::Ec2(ec2) => ec2.find_launch(run_id, attempt).await,
        }
    }

    pub async fn launch(&self, request: &LaunchRequest<'_>) -> Result<Launched, LaunchFailure> {
        match self {
            Cloud::Local(local) => Ok(local
                .launch(
                    request.run_id,
                    (request.attempt, request.relaunches),
                    request.boot,
                    request.secret_values,
                )
                .await?),
            Cloud::Ec2(ec2) => ec2.launch(request).await,
        }
    }

    /// The price per hour a launched instance pays (see [`crate::pricing`]): the local price, the
    /// spot price of its type in its zone, or the on-demand table's. A spot price EC2 will not tell
    /// falls back to the table (logged): the run is priced high rather than not at all.
    pub async fn price(&self, launched: &Launched, pricing: &PricingSettings) -> Price {
        match self {
            Cloud::Local(_) => pricing.local(),
            Cloud::Ec2(ec2) if launched.lifecycle.as_deref() == Some("spot") => {
                let instance_type = launched.instance_type.as_deref().unwrap_or_default();
                match ec2
                    .spot_price(instance_type, launched.zone.as_deref(), pricing)
                    .await
                {
                    Ok(Some(usd_per_hour)) => Price {
                        usd_per_hour,
                        source: PriceSource::SpotPriceHistory,
                    },
                    Ok(None) => pricing.on_demand(launched.instance_type.as_deref()),
                    Err(err) => {
                        tracing::warn!(instance_id = %launched.instance_id, error = %err,
                            "no spot price; priced from the on-demand table");
                        pricing.on_demand(launched.instance_type.as_deref())
                    }
                }
            }
            Cloud::Ec2(_) => pricing.on_demand(launched.instance_type.as_deref()),
        }
    }

    /// Terminates the instance; succeeds if it is already gone.
    /// Terminates an instance. The local provider first gives its agent `stop_grace` (at most
    /// [`local::MAX_TERMINATE_GRACE`]) to stop its container with the job's stop signal; on EC2 the
    /// instance's own shutdown signals the agent, and how long it has is the instance's.
    pub async fn terminate(
        &self,
        instance_id: &str,
        stop_grace: std::time::Duration,
    ) -> Result<()> {
        match self {
            Cloud::Local(local) => local.terminate(instance_id, stop_grace).await,
            Cloud::Ec2(ec2) => ec2.terminate(instance_id).await,
        }
    }

    /// Whether instances are agents on this host (the local provider).
    pub fn is_local(&self) -> bool {
        matches!(self, Cloud::Local(_))
    }

    /// Every live instance of this deployment (the EC2 cluster's, or the local agents).
    pub async fn instances(&self) -> Result<Vec<CloudInstance>> {
        match self {
            Cloud::Local(local) => Ok(local.instances()),
            Cloud::Ec2(ec2) => ec2.instances().await,
        }
    }

    /// Cancels spot requests (and deletes fleets) of this deployment left open longer than `max_age`.
    pub async fn cancel_stale_requests(&self, max_age: chrono::Duration) -> Result<usize> {
        match self {
            Cloud::Local(_) => Ok(0),
            Cloud::Ec2(ec2) => ec2.cancel_stale_requests(max_age).await,
        }
    }
}
