//! What a job's container may use of its machine: memory (without swap beyond it), CPUs and
//! processes. A job sets any of them (`runner.limits`); the deployment's `[container_limits]` fills in
//! the rest, so that no container runs unbounded and a runaway job cannot starve the agent that
//! watches it (or, on the local provider, the host's other jobs).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, Result};

/// A job's own limits; unset ones come from the deployment's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerLimits {
    /// Memory in MiB; the container gets no swap beyond it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// CPUs, fractions allowed (`0.5`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Processes and threads at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
}

/// `[container_limits]`: the defaults, and what a job may ask for at most.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerLimitSettings {
    pub memory_mb: u32,
    pub cpus: f64,
    pub pids: u32,
}

/// The limits a container runs with, as Docker takes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppliedLimits {
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub pids: i64,
}

pub const MEMORY_MB: std::ops::RangeInclusive<u32> = 16..=4 * 1024 * 1024;
pub const CPUS: std::ops::RangeInclusive<f64> = 0.01..=448.0;
pub const PIDS: std::ops::RangeInclusive<u32> = 16..=4 * 1024 * 1024;

impl ContainerLimits {
    pub fn is_unset(&self) -> bool {
        *self == ContainerLimits::default()
    }

    /// Checks each limit that is set, naming `{prefix}limits.{field}`.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        let field = |name: &str| format!("{prefix}limits.{name}");
        if self.memory_mb.is_some_and(|mb| !MEMORY_MB.contains(&mb)) {
            return Err(Error::invalid(
                field("memory_mb"),
                format!("must be {} to {}", MEMORY_MB.start(), MEMORY_MB.end()),
            ));
        }
        if self
            .cpus
            .is_some_and(|cpus| !cpus.is_finite() || !CPUS.contains(&cpus))
        {
            return Err(Error::invalid(
                field("cpus"),
                format!("must be {} to {}", CPUS.start(), CPUS.end()),
            ));
        }
        if self.pids.is_some_and(|pids| !PIDS.contains(&pids)) {
            return Err(Error::invalid(
                field("pids"),
                format!("must be {} to {}", PIDS.start(), PIDS.end()),
            ));
        }
        Ok(())
    }

    /// These limits with the deployment's defaults for the unset ones.
    pub fn applied(&self, defaults: &ContainerLimitSettings) -> AppliedLimits {
        let memory_mb = self.memory_mb.unwrap_or(defaults.memory_mb);
        let cpus = self.cpus.unwrap_or(defaults.cpus);
        AppliedLimits {
            memory_bytes: i64::from(memory_mb) * 1024 * 1024,
            nano_cpus: (cpus * 1e9).round() as i64,
            pids: i64::from(self.pids.unwrap_or(defaults.pids)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_limits_take_the_defaults() {
        let defaults = ContainerLimitSettings {
            memory_mb: 2048,
            cpus: 2.0,
            pids: 1024,
        };
        let own = ContainerLimits {
            memory_mb: Some(64),
            ..ContainerLimits::default()
        };
        assert_eq!(
            own.applied(&defaults),
            AppliedLimits {
                memory_bytes: 64 * 1024 * 1024,
                nano_cpus: 2_000_000_000,
                pids: 1024
            }
        );
    }

    #[test]
    fn limits_out_of_range_name_their_field() {
        for (limits, field) in [
            (
                ContainerLimits {
                    memory_mb: Some(1),
                    ..Default::default()
                },
                "runner.limits.memory_mb",
            ),
            (
                ContainerLimits {
                    cpus: Some(f64::NAN),
                    ..Default::default()
                },
                "runner.limits.cpus",
            ),
            (
                ContainerLimits {
                    cpus: Some(1000.0),
                    ..Default::default()
                },
                "runner.limits.cpus",
            ),
            (
                ContainerLimits {
                    pids: Some(0),
                    ..Default::default()
                },
                "runner.limits.pids",
            ),
        ] {
            let err = limits.validate("runner.").unwrap_err();
            assert_eq!(err.field.as_deref(), Some(field));
        }
        assert!(ContainerLimits::default().validate("").is_ok());
    }
}
