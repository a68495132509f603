//! Per-account quotas: what one tenant may hold and ask for, so that no tenant can fill the store or
//! the cloud bill for everyone. `[quotas]` holds the defaults, `[quotas.accounts.NAME]` any account's
//! own. What a job asks for is checked at the door: over a quota is 429 naming it
//! (`quotas.max_jobs`), and nothing is stored. What its runs use (fires a minute, live instances,
//! HTTP tasks held open) is checked by the provisioner at launch: over a quota, the run ends
//! `provision_failed` with the quota named. Either way the refusal is counted in `/metrics`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::error::{Error, ErrorCode, Result};
use crate::model::ContainerSpec;
use crate::schedule::Schedule;

/// `[quotas]`: the defaults, and each account's own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSettings {
    /// Jobs stored.
    pub max_jobs: u64,
    /// The shortest time between two fires of a recurring job.
    pub min_interval_secs: u64,
    /// The largest disk a container job may ask for.
    pub max_disk_gb: u32,
    /// Instance types a job may name; empty: any.
    pub instance_types: Vec<String>,
    /// Registries a job's image may come from (`docker.io` for Docker Hub); empty: any.
    pub registries: Vec<String>,
    /// Fires that launch something (a container, an HTTP task, an instance action), counted by the
    /// minute they are due in. Light (dummy) fires touch nothing but the store and are not counted.
    pub max_fires_per_minute: u64,
    /// Instances launched for the account's runs and not yet terminated.
    pub max_live_instances: u64,
    /// HTTP tasks whose call is held open, waiting for the worker's answer.
    pub max_open_http_tasks: u64,
    /// Bytes of output over every kept run; past it, output is cut (and the cut counted).
    pub max_history_bytes: u64,
    /// Log follow streams held open.
    pub max_log_streams: usize,
    /// What the account's instances may cost in a calendar month (UTC), in USD; unset: no budget.
    /// Over it, runs end `provision_failed` naming it.
    #[serde(default)]
    pub monthly_budget_usd: Option<f64>,
    /// Past this share of the budget, on-demand fallback is refused (spot only) before everything is.
    #[serde(default = "whole_budget")]
    pub on_demand_budget_fraction: f64,
    #[serde(default)]
    pub accounts: HashMap<String, AccountQuotas>,
}

/// An account's own quotas; each unset one is the default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountQuotas {
    pub max_jobs: Option<u64>,
    pub min_interval_secs: Option<u64>,
    pub max_disk_gb: Option<u32>,
    pub instance_types: Option<Vec<String>>,
    pub registries: Option<Vec<String>>,
    pub max_fires_per_minute: Option<u64>,
    pub max_live_instances: Option<u64>,
    pub max_open_http_tasks: Option<u64>,
    pub max_history_bytes: Option<u64>,
    pub max_log_streams: Option<usize>,
    pub monthly_budget_usd: Option<f64>,
    pub on_demand_budget_fraction: Option<f64>,
}

fn whole_budget() -> f64 {
    1.0
}

/// The quotas that hold for one account.
#[derive(Debug, Clone, PartialEq)]
pub struct Quotas {
    pub max_jobs: u64,
    pub min_interval_secs: u64,
    pub max_disk_gb: u32,
    pub instance_types: Vec<String>,
    pub registries: Vec<String>,
    pub max_fires_per_minute: u64,
    pub max_live_instances: u64,
    pub max_open_http_tasks: u64,
    pub max_history_bytes: u64,
    pub max_log_streams: usize,
    pub monthly_budget_usd: Option<f64>,
    pub on_demand_budget_fraction: f64,
}

/// Fires looked at to find a recurring schedule's shortest interval (a day's pattern shows it).
const FIRES_SAMPLED: usize = 64;

impl QuotaSettings {
    pub fn for_account(&self, account: &str) -> Quotas {
        let own = self.accounts.get(account).cloned().unwrap_or_default();
        Quotas {
            max_jobs: own.max_jobs.unwrap_or(self.max_jobs),
            min_interval_secs: own.min_interval_secs.unwrap_or(self.min_interval_secs),
            max_disk_gb: own.max_disk_gb.unwrap_or(self.max_disk_gb),
            instance_types: own
                .instance_types
                .unwrap_or_else(|| self.instance_types.clone()),
            registries: own.registries.unwrap_or_else(|| self.registries.clone()),
            max_fires_per_minute: own
                .max_fires_per_minute
                .unwrap_or(self.max_fires_per_minute),
            max_live_instances: own.max_live_instances.unwrap_or(self.max_live_instances),
            max_open_http_tasks: own.max_open_http_tasks.unwrap_or(self.max_open_http_tasks),
            max_history_bytes: self.max_history_bytes(account),
            max_log_streams: self.max_log_streams(account),
            monthly_budget_usd: self.monthly_budget_usd(account),
            on_demand_budget_fraction: own
                .on_demand_budget_fraction
                .unwrap_or(self.on_demand_budget_fraction),
        }
    }

    /// The account's monthly budget alone, in USD.
    pub fn monthly_budget_usd(&self, account: &str) -> Option<f64> {
        self.accounts
            .get(account)
            .and_then(|own| own.monthly_budget_usd)
            .or(self.monthly_budget_usd)
    }

    /// The account's cap on follow streams alone.
    pub fn max_log_streams(&self, account: &str) -> usize {
        self.accounts
            .get(account)
            .and_then(|own| own.max_log_streams)
            .unwrap_or(self.max_log_streams)
    }

    /// The account's history quota alone (read on every output append, so without the rest).
    pub fn max_history_bytes(&self, account: &str) -> u64 {
        self.accounts
            .get(account)
            .and_then(|own| own.max_history_bytes)
            .unwrap_or(self.max_history_bytes)
    }
}

/// The refusal of a request over `quota`: 429, the quota named in the field and the message.
pub fn over(quota: &str, message: String) -> Error {
    let mut err = Error::new(ErrorCode::TooManyRequests, message);
    err.field = Some(format!("quotas.{quota}"));
    err
}

impl Quotas {
    /// Whether the account may store one more job, holding `stored` now.
    pub fn check_job_count(&self, stored: u64) -> Result<()> {
        if stored >= self.max_jobs {
            return Err(over(
                "max_jobs",
                format!("the account holds {stored} jobs, its quota"),
            ));
        }
        Ok(())
    }

    /// Whether a recurring schedule fires no more often than the quota allows.
    pub fn check_schedule(&self, schedule: &Schedule, now: DateTime<Utc>) -> Result<()> {
        if !schedule.is_recurring() || self.min_interval_secs == 0 {
            return Ok(());
        }
        let fires = schedule.upcoming(now, FIRES_SAMPLED);
        let shortest = fires.windows(2).map(|w| w[1] - w[0]).min();
        if let Some(shortest) = shortest {
            if shortest.num_milliseconds() < (self.min_interval_secs * 1000) as i64 {
                return Err(over(
                    "min_interval_secs",
                    format!(
                        "fires {} ms apart; the account's quota is {} s",
                        shortest.num_milliseconds(),
                        self.min_interval_secs
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether a fire that came `place`-th among the account's fires of its minute may launch.
    pub fn check_fire_place(&self, place: u64) -> Result<()> {
        if place > self.max_fires_per_minute {
            return Err(over(
                "max_fires_per_minute",
                format!(
                    "fire {place} of its minute; the account's quota is {} a minute",
                    self.max_fires_per_minute
                ),
            ));
        }
        Ok(())
    }

    /// Whether a container job asks only for what the account may have.
    pub fn check_container(&self, spec: &ContainerSpec) -> Result<()> {
        if let Some(gb) = spec.disk_gb.filter(|gb| *gb > self.max_disk_gb) {
            return Err(over(
                "max_disk_gb",
                format!("{gb} GB asked; the account's quota is {}", self.max_disk_gb),
            ));
        }
        if !self.instance_types.is_empty() {
            if let Some(other) = spec
                .instance_types
                .iter()
                .find(|t| !self.instance_types.contains(t))
            {
                return Err(over(
                    "instance_types",
                    format!(
                        "{other} is not among the account's instance types ({})",
                        self.instance_types.join(", ")
                    ),
                ));
            }
        }
        if !self.registries.is_empty() {
            let registry = spec.registry().unwrap_or_default();
            if !self.registries.contains(&registry) {
                return Err(over(
                    "registries",
                    format!(
                        "images from {registry:?} are not among the account's registries ({})",
                        self.registries.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::parse_time_zone;

    fn quotas() -> Quotas {
        Quotas {
            max_jobs: 2,
            min_interval_secs: 60,
            max_disk_gb: 100,
            instance_types: vec!["t3.micro".into()],
            registries: vec!["registry.example.com".into()],
            max_fires_per_minute: 3,
            max_live_instances: 1,
            max_open_http_tasks: 1,
            max_history_bytes: 1024,
            max_log_streams: 1,
            monthly_budget_usd: None,
            on_demand_budget_fraction: 1.0,
        }
    }

    fn schedule(text: &str) -> Schedule {
        Schedule::parse(
            text,
            parse_time_zone("UTC", "tz").unwrap(),
            Utc::now(),
            "schedule",
        )
        .unwrap()
    }

    #[test]
    fn each_quota_names_itself() {
        let q = quotas();
        assert!(q.check_fire_place(3).is_ok());
        let err = q.check_fire_place(4).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("quotas.max_fires_per_minute"));
        assert!(q.check_job_count(1).is_ok());
        let err = q.check_job_count(2).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("quotas.max_jobs"));
        assert_eq!(err.code.http_status(), 429);
        assert!(q.check_schedule(&schedule("* * * * *"), Utc::now()).is_ok());
        assert!(q.check_schedule(&schedule("@hourly"), Utc::now()).is_ok());
        assert!(q
            .check_schedule(&schedule("2030-01-01T00:00:00Z"), Utc::now())
            .is_ok());
        for fast in ["*/30 * * * * *", "@every 10s", "0,30 * * * * *"] {
            let err = q.check_schedule(&schedule(fast), Utc::now()).unwrap_err();
            assert_eq!(
                err.field.as_deref(),
                Some("quotas.min_interval_secs"),
                "{fast}"
            );
        }
        let mut spec = ContainerSpec {
            disk_gb: Some(200),
            ..ContainerSpec::default()
        };
        assert_eq!(
            q.check_container(&spec).unwrap_err().field.as_deref(),
            Some("quotas.max_disk_gb")
        );
        spec.disk_gb = None;
        spec.instance_types = vec!["p5.48xlarge".into()];
        assert_eq!(
            q.check_container(&spec).unwrap_err().field.as_deref(),
            Some("quotas.instance_types")
        );
        spec.instance_types = vec!["t3.micro".into()];
        spec.image = "busybox:1.36".into();
        assert_eq!(
            q.check_container(&spec).unwrap_err().field.as_deref(),
            Some("quotas.registries")
        );
        spec.image = "registry.example.com/team/tool:2".into();
        assert!(q.check_container(&spec).is_ok());
    }

    #[test]
    fn an_account_overrides_only_what_it_names() {
        let settings = QuotaSettings {
            max_jobs: 10,
            min_interval_secs: 1,
            max_disk_gb: 100,
            instance_types: Vec::new(),
            registries: Vec::new(),
            max_fires_per_minute: 60,
            max_live_instances: 5,
            max_open_http_tasks: 5,
            max_history_bytes: 1 << 20,
            max_log_streams: 8,
            monthly_budget_usd: None,
            on_demand_budget_fraction: 1.0,
            accounts: HashMap::from([(
                "acme".to_string(),
                AccountQuotas {
                    max_jobs: Some(3),
                    max_live_instances: Some(1),
                    ..AccountQuotas::default()
                },
            )]),
        };
        assert_eq!(settings.for_account("acme").max_jobs, 3);
        assert_eq!(settings.for_account("acme").max_live_instances, 1);
        assert_eq!(settings.for_account("acme").max_open_http_tasks, 5);
        assert_eq!(settings.for_account("acme").max_disk_gb, 100);
        assert_eq!(settings.for_account("globex").max_jobs, 10);
    }
}
