//! A job's stored record: the JSON under `p:job:{id}`, written lean because a million waiting jobs
//! are mostly defaults, and read back whole.
//!
//! What reading it back restores anyway is left out: `null`s, empty texts and tags, default
//! policies, the default zone and group, its id (its key holds it), and `updated_at` while it is
//! `created_at`. `created_at` is milliseconds since the epoch (13 digits where RFC 3339 with
//! nanoseconds takes 30 characters). `enabled` and `generation` lead, where the light-fire script
//! reads them without decoding.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::Result;
use crate::model::{Job, Pause, Policies, Tag, DEFAULT_GROUP, DEFAULT_TIME_ZONE};

/// A job as its record holds it, borrowed from the job and written straight out: the create path
/// writes one per job, and building a JSON tree first took a seventh of the api's CPU a create.
#[derive(Serialize)]
struct StoredJob<'a> {
    enabled: bool,
    generation: u64,
    account: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    description: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    modified_by: &'a str,
    #[serde(skip_serializing_if = "<[Tag]>::is_empty")]
    tags: &'a [Tag],
    schedule: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    timezone: Option<&'a str>,
    /// The runner's and the policies' optional fields are many and `null` when unset in the
    /// api's answers, so these two go through a tree that leaves the `null`s out.
    runner: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    paused: Option<&'a Pause>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policies: Option<serde_json::Value>,
    created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    updated_at: Option<DateTime<Utc>>,
}

/// `value` without the `null`s of its objects, at every depth.
fn without_nulls(mut value: serde_json::Value) -> serde_json::Value {
    fn strip(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.retain(|_, v| !v.is_null());
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut value);
    value
}

/// The record of `job` (see the module's doc); [`decode_stored_job`] reads it back.
pub(super) fn stored_job_json(job: &Job) -> Result<String> {
    let record = StoredJob {
        enabled: job.enabled,
        generation: job.generation,
        account: &job.account,
        group: (job.group != DEFAULT_GROUP).then_some(job.group.as_str()),
        name: &job.name,
        description: &job.description,
        modified_by: &job.modified_by,
        tags: &job.tags,
        schedule: &job.schedule,
        timezone: (job.timezone != DEFAULT_TIME_ZONE).then_some(job.timezone.as_str()),
        runner: without_nulls(serde_json::to_value(&job.runner)?),
        paused: job.paused.as_ref(),
        policies: if job.policies == Policies::default() {
            None
        } else {
            Some(without_nulls(serde_json::to_value(&job.policies)?))
        },
        created_at: job.created_at.timestamp_millis(),
        updated_at: (job.updated_at != job.created_at).then_some(job.updated_at),
    };
    Ok(serde_json::to_string(&record)?)
}

/// Reads back a job stored by [`stored_job_json`] (or by an earlier version, which kept every field)
/// under the key of job `id`.
pub(super) fn decode_stored_job(id: &str, raw: &str) -> serde_json::Result<Job> {
    let mut job: Job = serde_json::from_str(raw)?;
    if job.id.is_empty() {
        job.id = id.to_string();
    }
    if job.updated_at == DateTime::<Utc>::default() {
        job.updated_at = job.created_at;
    }
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ContainerSpec, DummySpec, Runner};

    fn job(runner: Runner, policies: Policies) -> Job {
        Job::for_tests(runner, policies)
    }

    #[test]
    fn stored_jobs_read_back_the_same_and_leave_defaults_out() {
        let dummy = job(
            Runner::Dummy(DummySpec {
                template: "x".into(),
                runner_name: None,
            }),
            Policies::default(),
        );
        let text = stored_job_json(&dummy).unwrap();
        for left_out in [
            "policies",
            "null",
            "\"id\"",
            "timezone",
            "updated_at",
            "group",
        ] {
            assert!(!text.contains(left_out), "{left_out} in {text}");
        }
        let created = format!("\"created_at\":{}", dummy.created_at.timestamp_millis());
        assert!(text.contains(&created), "{text}");
        assert_eq!(decode_stored_job(&dummy.id, &text).unwrap(), dummy);
        // As an earlier version stored it, every field written out.
        let full = serde_json::to_string(&dummy).unwrap();
        assert_eq!(decode_stored_job(&dummy.id, &full).unwrap(), dummy);

        let mut container = job(
            Runner::Container(ContainerSpec {
                image: "busybox".into(),
                cmd: Some("echo hi".into()),
                env: vec!["A=1".into()],
                max_price: Some("0.05".into()),
                ..ContainerSpec::default()
            }),
            Policies {
                misfire_grace_secs: Some(30),
                timeout_secs: 60,
                ..Policies::default()
            },
        );
        container.name = "nightly".into();
        container.tags = vec![Tag {
            key: "team".into(),
            value: "data".into(),
        }];
        container.timezone = "Europe/Berlin".into();
        container.updated_at = container.created_at + chrono::Duration::seconds(5);
        let text = stored_job_json(&container).unwrap();
        assert_eq!(decode_stored_job(&container.id, &text).unwrap(), container);
    }

    /// The light-fire script matches `^{"enabled":(%a+),"generation":(%d+)` on the stored text.
    #[test]
    fn stored_jobs_lead_with_enabled_and_generation() {
        let mut disabled = job(
            Runner::Dummy(DummySpec {
                template: r#"{"enabled":true,"generation":1}"#.into(),
                runner_name: None,
            }),
            Policies::default(),
        );
        disabled.enabled = false;
        disabled.generation = 12;
        let text = stored_job_json(&disabled).unwrap();
        assert!(
            text.starts_with(r#"{"enabled":false,"generation":12,"#),
            "{text}"
        );
        assert_eq!(decode_stored_job(&disabled.id, &text).unwrap(), disabled);
    }

    /// The record as the previous version built it (the job as a JSON tree, trimmed): the
    /// direct writer must hold the same fields and values.
    fn stored_as_a_tree(job: &Job) -> Result<String> {
        let mut value = serde_json::to_value(job)?;
        if let Some(map) = value.as_object_mut() {
            for field in ["name", "description", "modified_by"] {
                if map.get(field).and_then(|v| v.as_str()) == Some("") {
                    map.remove(field);
                }
            }
            map.remove("id");
            if job.timezone == DEFAULT_TIME_ZONE {
                map.remove("timezone");
            }
            if job.group == DEFAULT_GROUP {
                map.remove("group");
            }
            // 13 digits where RFC 3339 with nanoseconds takes 30 characters.
            map.insert(
                "created_at".into(),
                job.created_at.timestamp_millis().into(),
            );
            if job.updated_at == job.created_at {
                map.remove("updated_at");
            }
            if map
                .get("tags")
                .and_then(|v| v.as_array())
                .is_some_and(Vec::is_empty)
            {
                map.remove("tags");
            }
            if job.policies == Policies::default() {
                map.remove("policies");
            }
        }
        value = without_nulls(value);
        if let serde_json::Value::Object(mut rest) = value {
            let mut ordered = serde_json::Map::with_capacity(rest.len());
            for field in ["enabled", "generation"] {
                if let Some(v) = rest.remove(field) {
                    ordered.insert(field.to_string(), v);
                }
            }
            ordered.extend(rest);
            value = serde_json::Value::Object(ordered);
        }
        Ok(serde_json::to_string(&value)?)
    }

    #[test]
    fn the_record_holds_what_the_tree_built_record_held() {
        let mut jobs = vec![
            job(
                Runner::Dummy(DummySpec {
                    template: "x".into(),
                    runner_name: Some("runner-1".into()),
                }),
                Policies::default(),
            ),
            job(
                Runner::Container(ContainerSpec {
                    image: "busybox".into(),
                    cmd: Some("echo hi".into()),
                    env: vec!["A=1".into()],
                    ..ContainerSpec::default()
                }),
                Policies {
                    misfire_grace_secs: Some(30),
                    timeout_secs: 60,
                    ..Policies::default()
                },
            ),
        ];
        let mut everything = jobs[1].clone();
        everything.group = "nightly".into();
        everything.name = "n".into();
        everything.description = "d \"quoted\" \u{e9}".into();
        everything.modified_by = "m".into();
        everything.tags = vec![Tag {
            key: "team".into(),
            value: "data".into(),
        }];
        everything.timezone = "Europe/Berlin".into();
        everything.enabled = false;
        everything.generation = 7;
        everything.paused = Some(crate::model::Pause {
            note: "maintenance".into(),
            at: everything.created_at,
        });
        everything.updated_at = everything.created_at + chrono::Duration::seconds(5);
        jobs.push(everything);
        for job in &jobs {
            let direct = stored_job_json(job).unwrap();
            let tree = stored_as_a_tree(job).unwrap();
            let as_value = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
            assert_eq!(as_value(&direct), as_value(&tree), "{direct}\n{tree}");
            assert_eq!(direct.len(), tree.len());
            assert_eq!(decode_stored_job(&job.id, &direct).unwrap(), *job);
        }
    }
}
