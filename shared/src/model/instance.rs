//! An instance: the machine a run executes on, its state machine, and where its price came from.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, Result};

/// Where an instance is in its life.
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
pub enum InstanceState {
    #[default]
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

/// Where an instance's price came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PriceSource {
    /// The zone's spot price for the type, from `DescribeSpotPriceHistory`.
    SpotPriceHistory,
    /// `pricing.on_demand_usd_per_hour`.
    OnDemandTable,
    /// `pricing.local_usd_per_hour`.
    Local,
    /// No price known for the type: counted as 0.
    Unknown,
}

impl PriceSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PriceSource::SpotPriceHistory => "spot-price-history",
            PriceSource::OnDemandTable => "on-demand-table",
            PriceSource::Local => "local",
            PriceSource::Unknown => "unknown",
        }
    }

    pub fn parse(text: &str) -> Option<PriceSource> {
        [
            PriceSource::SpotPriceHistory,
            PriceSource::OnDemandTable,
            PriceSource::Local,
            PriceSource::Unknown,
        ]
        .into_iter()
        .find(|source| source.as_str() == text)
    }
}

/// A machine a run executes on: an EC2 instance, or an agent process with the `local` provider.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
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
