//! What an instance costs. At launch it is given the price per hour it pays: spot, the zone's spot
//! price for its type (`DescribeSpotPriceHistory`, cached per type and zone); on demand, the
//! configured table (`[pricing.on_demand_usd_per_hour]`, documented defaults for common types); the
//! local provider, `pricing.local_usd_per_hour` (0 by default). When it is terminated, EC2's billing
//! gives the seconds (per second, one minute at least for Linux) and so the cost. Amounts are summed
//! in whole nano-dollars, so that totals are exact however many runs they add up.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::{Instance, InstanceState};

/// `[pricing]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingSettings {
    /// What an instance of the local provider costs an hour.
    pub local_usd_per_hour: f64,
    /// On-demand prices per instance type (Linux, us-east-1 by default; set your region's).
    pub on_demand_usd_per_hour: BTreeMap<String, f64>,
    /// How long a spot price read from EC2 is used before it is read again.
    pub spot_price_cache_secs: u64,
    /// The least EC2 bills a Linux instance for.
    pub min_billed_secs: u64,
}

pub use crate::model::PriceSource;

/// The price an instance pays, per hour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub usd_per_hour: f64,
    pub source: PriceSource,
}

impl PricingSettings {
    /// The on-demand price of a type from the table (`Unknown`, 0, for a type it lacks).
    pub fn on_demand(&self, instance_type: Option<&str>) -> Price {
        match instance_type.and_then(|t| self.on_demand_usd_per_hour.get(t)) {
            Some(&usd_per_hour) => Price {
                usd_per_hour,
                source: PriceSource::OnDemandTable,
            },
            None => Price {
                usd_per_hour: 0.0,
                source: PriceSource::Unknown,
            },
        }
    }

    pub fn local(&self) -> Price {
        Price {
            usd_per_hour: self.local_usd_per_hour,
            source: PriceSource::Local,
        }
    }
}

/// The seconds EC2 bills for an instance from its launch to its termination: whole seconds, rounded
/// up, and never fewer than `min_billed_secs`.
pub fn billed_secs(launched: DateTime<Utc>, ended: DateTime<Utc>, min_billed_secs: u64) -> u64 {
    let ms = u64::try_from((ended - launched).num_milliseconds()).unwrap_or(0);
    ms.div_ceil(1000).max(min_billed_secs)
}

/// The cost of `secs` at `usd_per_hour`, in nano-dollars.
pub fn nano_usd(usd_per_hour: f64, secs: u64) -> u64 {
    let nano = usd_per_hour * secs as f64 / 3600.0 * 1e9;
    if nano.is_finite() && nano > 0.0 {
        nano.round() as u64
    } else {
        0
    }
}

/// Nano-dollars as dollars.
pub fn usd(nano: u64) -> f64 {
    nano as f64 / 1e9
}

/// What an instance cost (or has cost so far, while it lives), as `/status`, `/v1/runs` and the
/// dashboard show it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RunCost {
    /// `spot`, `on-demand` or `local`.
    pub market: Option<String>,
    pub instance_type: Option<String>,
    pub zone: Option<String>,
    pub usd_per_hour: f64,
    pub price_source: PriceSource,
    /// From launch to termination as EC2 bills it (to now while the instance lives).
    pub billed_seconds: u64,
    pub usd: f64,
    /// Seconds the instance lived past its run's end beyond the allowance: time its provider could
    /// not be reached to end it, counted against the run.
    pub leaked_seconds: u64,
    /// `false` while the instance lives: the figures grow until it is terminated.
    pub terminated: bool,
}

/// The cost of a priced instance (`None` for one launched before prices were recorded).
pub fn cost_of(instance: &Instance, min_billed_secs: u64, now: DateTime<Utc>) -> Option<RunCost> {
    let usd_per_hour = instance.usd_per_hour?;
    let launched = *instance.transitions.get(&InstanceState::Requested)?;
    let ended = instance
        .transitions
        .get(&InstanceState::Terminated)
        .copied();
    let billed_seconds = instance
        .billed_secs
        .unwrap_or_else(|| billed_secs(launched, ended.unwrap_or(now), min_billed_secs));
    let nano = instance
        .cost_nano_usd
        .unwrap_or_else(|| nano_usd(usd_per_hour, billed_seconds));
    Some(RunCost {
        market: instance.lifecycle.clone(),
        instance_type: instance.instance_type.clone(),
        zone: instance.zone.clone(),
        usd_per_hour,
        price_source: instance.price_source.unwrap_or(PriceSource::Unknown),
        billed_seconds,
        usd: usd(nano),
        leaked_seconds: instance.leaked_secs.unwrap_or(0),
        terminated: ended.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    #[test]
    fn ec2_bills_whole_seconds_and_a_minute_at_least() {
        assert_eq!(billed_secs(at(0), at(3_400), 60), 60);
        assert_eq!(billed_secs(at(0), at(60_000), 60), 60);
        assert_eq!(billed_secs(at(0), at(60_001), 60), 61);
        assert_eq!(billed_secs(at(0), at(125_500), 60), 126);
        assert_eq!(billed_secs(at(0), at(1_500), 0), 2);
        assert_eq!(
            billed_secs(at(5), at(0), 60),
            60,
            "a clock step back bills the minimum"
        );
    }

    #[test]
    fn costs_are_price_times_billed_time_in_nano_dollars() {
        // t3.micro on demand for an hour: $0.0104.
        assert_eq!(nano_usd(0.0104, 3600), 10_400_000);
        // A minute at moto's spot price of $0.00001/h.
        assert_eq!(nano_usd(0.00001, 60), 167);
        assert_eq!(nano_usd(0.0, 600), 0);
        assert_eq!(nano_usd(f64::NAN, 600), 0);
        assert_eq!(nano_usd(-1.0, 600), 0);
        assert!((usd(10_400_000) - 0.0104).abs() < 1e-12);
    }

    #[test]
    fn the_table_prices_on_demand_and_knows_what_it_lacks() {
        let settings = PricingSettings {
            local_usd_per_hour: 0.0,
            on_demand_usd_per_hour: [("t3.micro".to_string(), 0.0104)].into(),
            spot_price_cache_secs: 300,
            min_billed_secs: 60,
        };
        assert_eq!(
            settings.on_demand(Some("t3.micro")),
            Price {
                usd_per_hour: 0.0104,
                source: PriceSource::OnDemandTable
            }
        );
        assert_eq!(
            settings.on_demand(Some("x9.huge")).source,
            PriceSource::Unknown
        );
        assert_eq!(settings.on_demand(None).usd_per_hour, 0.0);
        assert_eq!(settings.local().source, PriceSource::Local);
        for source in [
            PriceSource::SpotPriceHistory,
            PriceSource::OnDemandTable,
            PriceSource::Local,
            PriceSource::Unknown,
        ] {
            assert_eq!(PriceSource::parse(source.as_str()), Some(source));
        }
    }
}
