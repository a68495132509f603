//! Overrides at trigger time: what `POST /v1/jobs/{id}/run` may change of a container job for that
//! run alone (Cloud Run's job overrides), recorded on the run and applied when its agent asks for
//! its spec.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{limits, ContainerSpec};
use crate::error::{Error, Result};

/// A run's own image, command or environment, in place of its job's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunOverrides {
    /// The image this run runs instead of the job's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "busybox:local")]
    pub image: Option<String>,
    /// The command instead of the job's (split like a shell would; empty: the image's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "sh -c 'echo backfill 2026-12-01'")]
    pub cmd: Option<String>,
    /// `KEY=value` items added to the job's environment, each replacing the job's item of the same
    /// name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
}

impl RunOverrides {
    pub fn is_empty(&self) -> bool {
        self.image.is_none() && self.cmd.is_none() && self.env.is_empty()
    }

    /// `job`'s container as this run runs it.
    pub fn applied_to(&self, job: &ContainerSpec) -> ContainerSpec {
        let name = |item: &str| {
            item.split_once('=')
                .map_or(item, |(key, _)| key)
                .to_string()
        };
        let replaced: Vec<String> = self.env.iter().map(|item| name(item)).collect();
        let env = job
            .env
            .iter()
            .filter(|item| !replaced.contains(&name(item)))
            .chain(&self.env)
            .cloned()
            .collect();
        ContainerSpec {
            image: self.image.clone().unwrap_or_else(|| job.image.clone()),
            cmd: self.cmd.clone().or_else(|| job.cmd.clone()),
            env,
            ..job.clone()
        }
    }

    /// Checks the overrides as a job's fields are checked, naming the first bad one (`image`,
    /// `cmd`, `env[i]`), and that the environment they make stays within a job's bound.
    pub fn validate(&self, job: &ContainerSpec) -> Result<()> {
        let own = ContainerSpec {
            image: self.image.clone().unwrap_or_else(|| job.image.clone()),
            cmd: self.cmd.clone(),
            env: self.env.clone(),
            ..ContainerSpec::default()
        };
        own.validate("").map_err(|err| match err.field.as_deref() {
            Some("docker_image") => Error::invalid("image", err.message),
            _ => err,
        })?;
        if self.applied_to(job).env.len() > limits::ENV_ITEMS {
            return Err(Error::invalid(
                "env",
                format!(
                    "the job's and these make more than {} items",
                    limits::ENV_ITEMS
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> ContainerSpec {
        ContainerSpec {
            image: "busybox:local".into(),
            cmd: Some("echo job".into()),
            env: vec!["MODE=nightly".into(), "REGION=eu".into()],
            ..ContainerSpec::default()
        }
    }

    #[test]
    fn overrides_replace_the_image_and_command_and_variables_by_name() {
        let overrides = RunOverrides {
            image: Some("busybox:other".into()),
            cmd: None,
            env: vec!["MODE=backfill".into(), "DAY=2026-12-01".into()],
        };
        let applied = overrides.applied_to(&job());
        assert_eq!(applied.image, "busybox:other");
        assert_eq!(applied.cmd.as_deref(), Some("echo job"));
        assert_eq!(
            applied.env,
            ["REGION=eu", "MODE=backfill", "DAY=2026-12-01"]
        );
        assert_eq!(RunOverrides::default().applied_to(&job()), job());
    }

    #[test]
    fn bad_overrides_name_their_field() {
        let refused = |overrides: RunOverrides| overrides.validate(&job()).unwrap_err();
        let err = refused(RunOverrides {
            image: Some("not an image".into()),
            ..RunOverrides::default()
        });
        assert_eq!(err.field.as_deref(), Some("image"));
        let err = refused(RunOverrides {
            cmd: Some("echo 'unterminated".into()),
            ..RunOverrides::default()
        });
        assert_eq!(err.field.as_deref(), Some("cmd"));
        let err = refused(RunOverrides {
            env: vec!["OK=1".into(), "no-equals".into()],
            ..RunOverrides::default()
        });
        assert_eq!(err.field.as_deref(), Some("env[1]"));
        let many = (0..=limits::ENV_ITEMS).map(|i| format!("V{i}=x")).collect();
        let err = refused(RunOverrides {
            env: many,
            ..RunOverrides::default()
        });
        assert_eq!(err.field.as_deref(), Some("env"));
    }
}
