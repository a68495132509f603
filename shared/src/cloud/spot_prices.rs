//! The spot price of an instance type in a zone, from EC2's `DescribeSpotPriceHistory` (Linux), kept
//! for `pricing.spot_price_cache_secs` so that a burst of launches asks EC2 once per type and zone.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::InstanceType;

use crate::error::Result;
use crate::instance_power::sdk_error;

/// An instance type and a zone (`None`: any zone).
type Pool = (String, Option<String>);

/// Prices read, by pool, with when they were read.
#[derive(Default)]
pub struct SpotPrices {
    cache: Mutex<HashMap<Pool, (f64, Instant)>>,
}

impl SpotPrices {
    /// The current spot price per hour of `instance_type` in `zone` (the lowest over the zones when
    /// none is given); `None` when EC2 lists none.
    pub async fn price(
        &self,
        client: &aws_sdk_ec2::Client,
        instance_type: &str,
        zone: Option<&str>,
        keep_for: Duration,
    ) -> Result<Option<f64>> {
        let key = (instance_type.to_string(), zone.map(str::to_string));
        if let Ok(cache) = self.cache.lock() {
            if let Some((price, at)) = cache.get(&key) {
                if at.elapsed() < keep_for {
                    return Ok(Some(*price));
                }
            }
        }
        let output = client
            .describe_spot_price_history()
            .instance_types(InstanceType::from(instance_type))
            .product_descriptions("Linux/UNIX")
            .product_descriptions("Linux/UNIX (Amazon VPC)")
            .set_availability_zone(zone.map(str::to_string))
            // From now: the latest price of each zone.
            .start_time(aws_sdk_ec2::primitives::DateTime::from(
                std::time::SystemTime::now(),
            ))
            .send()
            .await
            .map_err(|err| sdk_error("DescribeSpotPriceHistory", err))?;
        let prices = output.spot_price_history().iter().filter(|entry| {
            entry.instance_type().map(|t| t.as_str()) == Some(instance_type)
                && zone.is_none_or(|zone| entry.availability_zone() == Some(zone))
        });
        let price = prices
            .filter_map(|entry| entry.spot_price()?.parse::<f64>().ok())
            .filter(|price| price.is_finite() && *price >= 0.0)
            .min_by(f64::total_cmp);
        if let (Some(price), Ok(mut cache)) = (price, self.cache.lock()) {
            cache.insert(key, (price, Instant::now()));
        }
        Ok(price)
    }
}
