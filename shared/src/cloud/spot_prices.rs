//! The spot price of an instance type in a zone, from EC2's `DescribeSpotPriceHistory` (Linux), kept
//! for `pricing.spot_price_cache_secs` so that a burst of launches asks EC2 once per type and zone.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::aws::{Params, QueryClient};
use crate::error::Result;

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
        client: &QueryClient,
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
        let params = Params::new()
            .list("InstanceType", [instance_type])
            .list(
                "ProductDescription",
                ["Linux/UNIX", "Linux/UNIX (Amazon VPC)"],
            )
            .set_some("AvailabilityZone", zone)
            // From now: the latest price of each zone.
            .set(
                "StartTime",
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            );
        let answer = client
            .call("DescribeSpotPriceHistory", &params)
            .await
            .map_err(|err| err.into_error("DescribeSpotPriceHistory"))?;
        let prices = answer.items(&["spotPriceHistorySet"]).filter(|entry| {
            entry.text_at(&["instanceType"]) == Some(instance_type)
                && zone.is_none_or(|zone| entry.text_at(&["availabilityZone"]) == Some(zone))
        });
        let price = prices
            .filter_map(|entry| entry.text_at(&["spotPrice"])?.parse::<f64>().ok())
            .filter(|price| price.is_finite() && *price >= 0.0)
            .min_by(f64::total_cmp);
        if let (Some(price), Ok(mut cache)) = (price, self.cache.lock()) {
            cache.insert(key, (price, Instant::now()));
        }
        Ok(price)
    }
}
