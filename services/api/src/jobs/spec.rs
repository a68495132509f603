//! What a user specifies of a job ([`JobSpec`]), and the checks that need nothing but the spec.

use spot_shared::model::{ContainerSpec, Policies, Runner, Tag};
use spot_shared::schedule::{parse_time_zone, Exclusions};
use spot_shared::{Error, Result};

/// What a user specifies of a job; the rest (id, account, generation, times) is the system's.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub name: String,
    pub description: String,
    pub modified_by: String,
    pub tags: Vec<Tag>,
    pub group: String,
    pub schedule: String,
    pub timezone: String,
    pub runner: Runner,
    pub enabled: bool,
    pub policies: Policies,
}

/// An array job keeps `history_limit` fires with all their copies: each is a run in Redis (about
/// 670 bytes), so the two together are bounded, or one job could hold gigabytes.
fn check_kept_copies(spec: &ContainerSpec, policies: &Policies, prefix: &str) -> Result<()> {
    let Some((size, _)) = spec.array() else {
        return Ok(());
    };
    let kept = u64::from(size) * policies.history_limit as u64;
    if kept > MAX_KEPT_COPIES {
        return Err(Error::invalid(
            format!("{prefix}policies.history_limit"),
            format!(
                "an array job keeps history_limit ({}) fires of array_size ({size}) copies: \
                 {kept} copies, more than {MAX_KEPT_COPIES}; lower either",
                policies.history_limit
            ),
        ));
    }
    Ok(())
}

/// The most copies an array job keeps in its history (`history_limit` × `array_size`).
pub const MAX_KEPT_COPIES: u64 = 200_000;

impl JobSpec {
    /// A job in `group` on `schedule` (UTC) running `runner`, enabled, with default policies and no
    /// name, description or tags: what the compatibility surfaces start from.
    pub fn new(group: &str, schedule: String, runner: Runner) -> JobSpec {
        JobSpec {
            name: String::new(),
            description: String::new(),
            modified_by: String::new(),
            tags: Vec::new(),
            group: group.to_string(),
            schedule,
            timezone: "UTC".into(),
            runner,
            enabled: true,
            policies: Policies::default(),
        }
    }

    /// Checks every field; `prefix` is prepended to field names in errors.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        let field = |name: &str| format!("{prefix}{name}");
        check_name(&self.group, &field("group"))?;
        if self.name.len() > 256 || self.name.chars().any(char::is_control) {
            return Err(Error::invalid(
                field("name"),
                "at most 256 bytes, no control characters",
            ));
        }
        if self.description.len() > 4096 || self.modified_by.len() > 256 {
            return Err(Error::invalid(
                field("description"),
                "description at most 4096 bytes, modified_by 256",
            ));
        }
        if self.tags.len() > 64
            || self
                .tags
                .iter()
                .any(|t| t.key.is_empty() || t.key.len() > 128 || t.value.len() > 256)
        {
            return Err(Error::invalid(
                field("tags"),
                "at most 64 tags, keys 1..=128 bytes, values up to 256",
            ));
        }
        parse_time_zone(&self.timezone, &field("timezone"))?;
        match &self.runner {
            Runner::Container(spec) => spec.validate(prefix)?,
            Runner::Dummy(spec) => spec.validate(prefix)?,
            Runner::Instance(spec) => {
                let id = &spec.instance_id;
                if !id.starts_with("i-")
                    || id.len() > 32
                    || !id[2..].chars().all(|c| c.is_ascii_alphanumeric())
                {
                    return Err(Error::invalid(
                        field("instance_id"),
                        "must be an EC2 instance id such as i-0123456789abcdef0",
                    ));
                }
            }
            Runner::Http(spec) => {
                for (name, url) in spec.urls() {
                    if url.len() > 2048
                        || spot_shared::outbound::check_url(&fill_placeholders(url)).is_err()
                    {
                        return Err(Error::invalid(field(name), "malformed_url"));
                    }
                }
            }
        }
        self.policies.validate(&format!("{prefix}policies."))?;
        if let Runner::Container(spec) = &self.runner {
            check_kept_copies(spec, &self.policies, prefix)?;
        }
        let tz = parse_time_zone(&self.timezone, &field("timezone"))?;
        Exclusions::parse(&self.policies.exclude, tz, &field("policies.exclude"))?;
        Ok(())
    }
}

fn check_name(value: &str, field: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            "must be 1 to 64 of A-Z a-z 0-9 - _ .",
        ))
    }
}

/// An HRM URL with its instance placeholders (`{dns_name}`, `{private_dns_name}`) filled with a
/// stand-in host, so that its form can be checked before the instance is known.
pub fn fill_placeholders(url: &str) -> String {
    url.replace("{dns_name}", PLACEHOLDER_HOST)
        .replace("{private_dns_name}", PLACEHOLDER_HOST)
        .replace("{ip_address}", PLACEHOLDER_HOST)
}

/// What an instance placeholder stands for when a URL is checked before its instance is known.
pub(super) const PLACEHOLDER_HOST: &str = "instance.invalid";
