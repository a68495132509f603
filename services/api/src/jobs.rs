//! The job operations every API surface shares: create, replace, enable, disable, delete, run now.
//! Each keeps Redis (the truth) and the timers on RabbitMQ in step: a change bumps the job's
//! generation, so timers armed before it are dropped when they arrive.

use std::collections::{HashMap, HashSet, VecDeque};

use chrono::{DateTime, Utc};
use spot_shared::messages::FireMessage;
use spot_shared::model::{ContainerSpec, Job, Policies, RunOverrides, Runner, Tag};
use spot_shared::schedule::{parse_time_zone, Exclusions};
use spot_shared::store::Created;
use spot_shared::{ids, Error, Result};

use crate::audit::Actor;
use crate::auth::Caller;
use crate::state::AppState;

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

/// Refuses, at the door, an HTTP runner whose URLs name an address the outbound policy blocks (an
/// IP, or a name resolving to one). The provisioner checks again at call time, on the addresses it
/// connects to: a name may resolve differently then, and one that does not resolve yet is left to it.
/// URLs naming the task's instance (`{dns_name}`) are checked when the instance is known.
/// Refuses a runner that needs an existing instance on a deployment with no EC2 configured, naming
/// the field, rather than failing every run of it later.
fn check_instances_usable(state: &AppState, runner: &Runner) -> Result<()> {
    let needs_instance = match runner {
        Runner::Instance(_) => true,
        Runner::Http(spec) => spec.instance_id.is_some(),
        _ => false,
    };
    if needs_instance && !state.ec2.is_configured() {
        return Err(Error::invalid(
            "runner.instance_id",
            spot_shared::instance_power::NO_EC2,
        ));
    }
    Ok(())
}

async fn check_outbound_targets(state: &AppState, runner: &Runner) -> Result<()> {
    match runner {
        Runner::Http(spec) => {
            for (field, url) in spec.urls() {
                let filled = fill_placeholders(url);
                let Ok(parsed) = spot_shared::outbound::check_url(&filled) else {
                    continue;
                };
                if parsed.host_str() == Some(PLACEHOLDER_HOST) {
                    continue;
                }
                check_target(state, &parsed, field).await?;
            }
        }
        Runner::Container(spec) => {
            for (i, file) in spec.files.iter().enumerate() {
                if let Some(source) = &file.source {
                    check_source_target(state, source, &format!("runner.files[{i}].source"))
                        .await?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Refuses secrets (`runner.secrets`) where nothing could read them: without AWS configured (the
/// `ec2` provider, or an `[ec2]` endpoint), as instance runners are refused.
fn check_secrets_readable(state: &AppState, runner: &Runner) -> Result<()> {
    let named = matches!(runner, Runner::Container(spec) if !spec.secrets.is_empty());
    if named && spot_shared::secrets::SecretResolver::for_deployment(&state.settings).is_none() {
        return Err(Error::invalid(
            "runner.secrets",
            "this deployment reads no secrets: AWS is not configured (the ec2 provider, or an [ec2] endpoint_url)",
        ));
    }
    Ok(())
}

/// Refuses notifications (`policies.notify`) the account cannot sign (it has no `notify_secret`) or
/// whose hosts the outbound rules block (the notifier checks again at each attempt).
async fn check_notify(state: &AppState, account: &str, policies: &Policies) -> Result<()> {
    if policies.notify.is_empty() {
        return Ok(());
    }
    let signs = state
        .settings
        .auth
        .accounts
        .iter()
        .any(|a| a.name == account && a.notify_secret().is_some());
    if !signs {
        return Err(Error::invalid(
            "policies.notify",
            format!(
                "account {account} has no notify_secret to sign notifications with (auth.accounts)"
            ),
        ));
    }
    for (i, target) in policies.notify.iter().enumerate() {
        if let Ok(url) = spot_shared::outbound::check_url(&target.url) {
            check_target(state, &url, &format!("policies.notify[{i}].url")).await?;
        }
    }
    Ok(())
}

/// Refuses a file source on an HTTPS host the outbound rules block (the agent checks again when it
/// fetches). S3 objects go to the deployment's S3 endpoint, never to a host the user names.
pub async fn check_source_target(
    state: &AppState,
    source: &spot_shared::file_source::FileSource,
    field: &str,
) -> Result<()> {
    match spot_shared::file_source::Location::parse(&source.url) {
        Ok(spot_shared::file_source::Location::Https(url)) => {
            check_target(state, &url, field).await
        }
        _ => Ok(()),
    }
}

async fn check_target(state: &AppState, url: &url::Url, field: &str) -> Result<()> {
    match spot_shared::outbound::checked_addresses(url, &state.settings.outbound).await {
        Ok(_) => Ok(()),
        Err(err) if err.code == spot_shared::ErrorCode::Forbidden => {
            Err(Error::invalid(field, err.message))
        }
        // Not resolvable from here now: it is resolved and checked again at call time.
        Err(_) => Ok(()),
    }
}

/// Refuses a job over its account's schedule and container quotas (429 naming the quota), counting
/// the refusal in `/metrics`. The job count quota is the create's to check: in the same step as its
/// save ([`spot_shared::store::Store::create_job`]), or once for a batch.
async fn enforce_quotas(state: &AppState, job: &Job, now: DateTime<Utc>) -> Result<()> {
    let quotas = state.settings.quotas.for_account(&job.account);
    let mut checked = quotas.check_schedule(&job.parsed_schedule()?, now);
    if let (Ok(()), Runner::Container(spec)) = (&checked, &job.runner) {
        checked = quotas.check_container(spec);
    }
    if let Err(err) = &checked {
        let quota = err.field.as_deref().unwrap_or_default();
        let quota = quota.strip_prefix("quotas.").unwrap_or(quota);
        state.store.note_quota_refusal(quota, &job.account).await;
        tracing::info!(account = %job.account, quota, "over a quota");
    }
    checked
}

/// A job the caller owns, or 404 (also for jobs of other accounts: their existence is not revealed).
pub async fn load_owned(state: &AppState, caller: &Caller, id: &str) -> Result<Job> {
    state
        .store
        .get_job(id)
        .await?
        .filter(|job| caller.owns(&job.account))
        .ok_or_else(|| Error::not_found(format!("no job {id}")))
}

/// Creates a job for `account` and arms its first timer. `id` is the id derived from the request's
/// idempotency key ([`crate::idempotency::IdempotencyKey::job_id`]), if it had one: a job of the
/// account with that id already is the one this create made before (its answer was lost), and is
/// returned as it is instead of making a second.
pub async fn create(
    state: &AppState,
    actor: &Actor,
    account: &str,
    spec: JobSpec,
    id: Option<String>,
) -> Result<Job> {
    let now = Utc::now();
    let job = match prepare(state, account, spec, id, now).await? {
        Prepared::MadeBefore(job) => return Ok(job),
        Prepared::New(job) => job,
    };
    // The job count quota is checked by the save itself, in the same step.
    let quotas = state.settings.quotas.for_account(account);
    let (job, created) = state.creates.create(job, quotas.max_jobs).await?;
    if let Created::OverQuota(held) = created {
        state.store.note_quota_refusal("max_jobs", account).await;
        tracing::info!(account, quota = "max_jobs", "over a quota");
        return Err(quotas
            .check_job_count(held)
            .err()
            .unwrap_or_else(|| Error::internal("refused under the job quota")));
    }
    tracing::info!(job_id = %job.id, account, next = ?job.next_fire_at, "job created");
    actor
        .record(state, "create", (None, Some(&job)), None)
        .await;
    Ok(job)
}

/// A create's job, checked and ready to save, or the one an earlier sending of the same request
/// made (its answer was lost), to answer as it is.
enum Prepared {
    New(Job),
    MadeBefore(Job),
}

/// Checks `spec` (fields, outbound targets, instances, the schedule and container quotas) and
/// makes its job, with its first fire. `id` is the id the request's idempotency key gives it: a job
/// of the account with that id already is the one this create made before.
async fn prepare(
    state: &AppState,
    account: &str,
    spec: JobSpec,
    id: Option<String>,
    now: DateTime<Utc>,
) -> Result<Prepared> {
    spec.validate("")?;
    if let Some(id) = &id {
        if let Some(made) = state.store.get_job(id).await? {
            if made.account == account {
                tracing::info!(job_id = %id, "create retried with its idempotency key: the job it made");
                return Ok(Prepared::MadeBefore(made));
            }
        }
    }
    check_outbound_targets(state, &spec.runner).await?;
    check_secrets_readable(state, &spec.runner)?;
    check_notify(state, account, &spec.policies).await?;
    check_instances_usable(state, &spec.runner)?;
    let mut job = new_job(account, spec, id, now);
    check_chains(state, &job).await?;
    // Parse once more in the job's own terms (periods count from its creation) and reject a schedule
    // that has no fire left in its window.
    job.next_fire_at = if job.enabled {
        first_fire(&job, now)?
    } else {
        None
    };
    enforce_quotas(state, &job, now).await?;
    Ok(Prepared::New(job))
}

/// Checks the jobs `job` chains to (`policies.on_success`, `on_failure`): each a job of its account,
/// and none whose own chains lead back to it (the cycle is named).
async fn check_chains(state: &AppState, job: &Job) -> Result<()> {
    let policies = &job.policies;
    for (name, ids) in [
        ("on_success", &policies.on_success),
        ("on_failure", &policies.on_failure),
    ] {
        for (i, id) in ids.iter().enumerate() {
            let field = format!("policies.{name}[{i}]");
            if *id == job.id {
                return Err(Error::invalid(
                    field,
                    format!("the chain loops back: {id} → {id}"),
                ));
            }
            match state.store.get_job(id).await? {
                Some(child) if child.account == job.account => {}
                _ => {
                    return Err(Error::invalid(
                        field,
                        format!("no job {id} of this account"),
                    ))
                }
            }
            if let Some(path) = chain_path(state, id, &job.id).await? {
                return Err(Error::invalid(
                    field,
                    format!("the chain loops back: {} → {}", job.id, path.join(" → ")),
                ));
            }
        }
    }
    Ok(())
}

/// The jobs most this many are followed when a chain is checked for a loop.
const MAX_CHAIN_WALK: usize = 1000;

/// A chain of stored jobs from `from` that reaches `to` (the ids from `from` to `to`), if any.
async fn chain_path(state: &AppState, from: &str, to: &str) -> Result<Option<Vec<String>>> {
    let mut came_from: HashMap<String, String> = HashMap::new();
    let mut queue = VecDeque::from([from.to_string()]);
    let mut seen = HashSet::from([from.to_string()]);
    while let Some(id) = queue.pop_front() {
        if seen.len() > MAX_CHAIN_WALK {
            break;
        }
        let Some(job) = state.store.get_job(&id).await? else {
            continue;
        };
        for next in job
            .policies
            .on_success
            .iter()
            .chain(&job.policies.on_failure)
        {
            if next == to {
                let mut path = vec![to.to_string(), id.clone()];
                let mut at = id.clone();
                while let Some(before) = came_from.get(&at) {
                    path.push(before.clone());
                    at = before.clone();
                }
                path.reverse();
                return Ok(Some(path));
            }
            if seen.insert(next.clone()) {
                came_from.insert(next.clone(), id.clone());
                queue.push_back(next.clone());
            }
        }
    }
    Ok(None)
}

/// The most jobs one `POST /v1/jobs:batch` may create.
pub const MAX_BATCH: usize = 1000;

/// Creates many jobs for `account` at once, each valid or refused on its own: the answer has one
/// result per spec, in order. Each spec comes with the id its idempotency key gives it (see
/// [`create`]). The accepted jobs are saved together ([`spot_shared::store::Store::save_new_jobs`]);
/// if that save fails, the whole request fails and none is kept.
pub async fn create_many(
    state: &AppState,
    actor: &Actor,
    account: &str,
    specs: Vec<(Result<JobSpec>, Option<String>)>,
) -> Result<Vec<Result<Job>>> {
    let now = Utc::now();
    let mut results: Vec<Result<Job>> = Vec::with_capacity(specs.len());
    // Jobs an earlier sending of the same batch made: answered as they are, not saved again.
    let mut made_before = vec![false; specs.len()];
    for (index, (spec, id)) in specs.into_iter().enumerate() {
        let job = match spec {
            Ok(spec) => prepare(state, account, spec, id, now).await,
            Err(err) => Err(err),
        };
        let job = job.map(|prepared| match prepared {
            Prepared::MadeBefore(job) => {
                made_before[index] = true;
                job
            }
            Prepared::New(job) => job,
        });
        results.push(job);
    }
    // The job count quota, read once: the batch's jobs count against it in order.
    let quotas = state.settings.quotas.for_account(account);
    let mut stored = state.store.count_jobs(account).await?;
    for (index, result) in results.iter_mut().enumerate() {
        if made_before[index] || result.is_err() {
            continue;
        }
        if let Err(err) = quotas.check_job_count(stored) {
            state.store.note_quota_refusal("max_jobs", account).await;
            *result = Err(err);
        } else {
            stored += 1;
        }
    }
    let new_jobs: Vec<Job> = results
        .iter()
        .enumerate()
        .filter(|(index, _)| !made_before[*index])
        .filter_map(|(_, result)| result.as_ref().ok().cloned())
        .collect();
    // A failed save keeps nothing of the batch and fails the whole request (503 or 500), so that
    // the client sends it again rather than reading half an answer.
    state.store.save_new_jobs(&new_jobs).await?;
    tracing::info!(account, created = new_jobs.len(), "jobs created in a batch");
    for job in &new_jobs {
        actor.record(state, "create", (None, Some(job)), None).await;
    }
    Ok(results)
}

/// A new job (generation 1) from `spec`, with no next fire yet.
fn new_job(account: &str, spec: JobSpec, id: Option<String>, now: DateTime<Utc>) -> Job {
    Job {
        id: id.unwrap_or_else(ids::new_id),
        account: account.to_string(),
        group: spec.group,
        name: spec.name,
        description: spec.description,
        modified_by: spec.modified_by,
        tags: spec.tags,
        schedule: spec.schedule.trim().to_string(),
        timezone: spec.timezone,
        runner: spec.runner,
        enabled: spec.enabled,
        generation: 1,
        paused: None,
        policies: spec.policies,
        created_at: spot_shared::model::whole_millis(now),
        updated_at: spot_shared::model::whole_millis(now),
        next_fire_at: None,
    }
}

/// Replaces a job's specification, keeping its id, account and history.
pub async fn replace(state: &AppState, actor: &Actor, current: Job, spec: JobSpec) -> Result<Job> {
    spec.validate("")?;
    check_outbound_targets(state, &spec.runner).await?;
    check_secrets_readable(state, &spec.runner)?;
    check_notify(state, &current.account, &spec.policies).await?;
    check_instances_usable(state, &spec.runner)?;
    let now = Utc::now();
    let mut job = Job {
        group: spec.group,
        name: spec.name,
        description: spec.description,
        modified_by: spec.modified_by,
        tags: spec.tags,
        schedule: spec.schedule.trim().to_string(),
        timezone: spec.timezone,
        runner: spec.runner,
        enabled: spec.enabled,
        policies: spec.policies,
        generation: current.generation + 1,
        // Saved enabled, it is resumed; saved disabled, it keeps its note.
        paused: current.paused.clone().filter(|_| !spec.enabled),
        updated_at: now,
        next_fire_at: None,
        ..current.clone()
    };
    check_chains(state, &job).await?;
    job.next_fire_at = if job.enabled {
        first_fire(&job, now)?
    } else {
        None
    };
    // A finite schedule whose runs are used up stays over (raise max_runs to go on).
    if remaining_runs(state, &job).await? == Some(0) {
        job.next_fire_at = None;
    }
    // An edit never re-fires the past: a one-shot whose instant has come is armed again only if the
    // job never fired (a past instant runs at once for a job that has not run).
    if let Some(next) = job.next_fire_at {
        let once = !job.parsed_schedule()?.is_recurring();
        if once && next <= now && !state.store.job_run_ids(&job.id, 1).await?.is_empty() {
            job.next_fire_at = None;
        }
    }
    enforce_quotas(state, &job, now).await?;
    // A job moved to another group leaves the old one's index in the same step.
    state
        .store
        .save_job_from_group(&job, Some(&current.group))
        .await?;
    actor
        .record(state, "edit", (Some(&current), Some(&job)), None)
        .await;
    Ok(job)
}

/// Enables or disables a job. Disabling drops its timer; enabling arms the next fire from now.
pub async fn set_enabled(
    state: &AppState,
    actor: &Actor,
    current: Job,
    enabled: bool,
) -> Result<Job> {
    if current.enabled == enabled {
        return Ok(current);
    }
    let action = match (enabled, current.paused.is_some()) {
        (true, true) => "resume",
        (true, false) => "enable",
        (false, _) => "disable",
    };
    let before = current.clone();
    let now = Utc::now();
    let mut job = Job {
        enabled,
        generation: current.generation + 1,
        // Enabled, a paused job is resumed; disabled, it keeps its note.
        paused: current.paused.clone().filter(|_| !enabled),
        updated_at: now,
        next_fire_at: None,
        ..current
    };
    if enabled {
        // A one-shot that already ran stays done, as does a schedule whose max_runs are used up.
        let ran = !job.parsed_schedule()?.is_recurring()
            && !state.store.job_run_ids(&job.id, 1).await?.is_empty();
        if !ran && remaining_runs(state, &job).await? != Some(0) {
            job.next_fire_at = job.first_fire(now)?;
        }
    }
    state.store.save_job(&job).await?;
    actor
        .record(state, action, (Some(&before), Some(&job)), None)
        .await;
    Ok(job)
}

/// How many scheduled fires the job's `max_runs` has left, if it has one.
pub async fn remaining_runs(state: &AppState, job: &Job) -> Result<Option<u64>> {
    let Some(max) = job.policies.max_runs else {
        return Ok(None);
    };
    let fired = state.store.scheduled_fire_count(&job.id).await?;
    Ok(Some(u64::from(max).saturating_sub(fired)))
}

/// The longest pause note kept, in bytes.
pub const MAX_PAUSE_NOTE: usize = 1024;

/// Pauses a job with `note`: disabled (its timer dropped) and marked with why and since when. A
/// paused job paused again keeps its first time and takes the new note. [`set_enabled`] resumes it.
pub async fn pause(state: &AppState, actor: &Actor, current: Job, note: String) -> Result<Job> {
    if note.len() > MAX_PAUSE_NOTE || note.chars().any(|c| c.is_control() && c != '\n') {
        return Err(Error::invalid(
            "note",
            format!("at most {MAX_PAUSE_NOTE} bytes, no control characters but line breaks"),
        ));
    }
    let job = current.clone().paused_with(note, Utc::now());
    state.store.save_job(&job).await?;
    tracing::info!(job_id = %job.id, "job paused");
    actor
        .record(state, "pause", (Some(&current), Some(&job)), None)
        .await;
    Ok(job)
}

pub async fn delete(state: &AppState, actor: &Actor, job: &Job) -> Result<()> {
    state.store.delete_job(job).await?;
    tracing::info!(job_id = %job.id, "job deleted");
    actor.record(state, "delete", (Some(job), None), None).await;
    Ok(())
}

/// Fires the job now, outside its schedule (which is not moved). Returns the fire's instant. A
/// request with an idempotency key fires at its first sending's instant however often it is sent,
/// so the fire's marker makes it one run even past the key's lease.
pub async fn run_now(
    state: &AppState,
    actor: &Actor,
    job: &Job,
    key: &crate::idempotency::IdempotencyKey,
) -> Result<DateTime<Utc>> {
    run_now_with(state, actor, job, key, &RunOverrides::default()).await
}

/// [`run_now`] with `overrides` (image, command, environment) for that run alone: checked like a
/// job's fields, kept with the fire before it is scheduled, so its run (and every retry of it) is
/// recorded with them.
pub async fn run_now_with(
    state: &AppState,
    actor: &Actor,
    job: &Job,
    key: &crate::idempotency::IdempotencyKey,
    overrides: &RunOverrides,
) -> Result<DateTime<Utc>> {
    if !job.enabled {
        return Err(Error::conflict("the job is disabled; enable it first"));
    }
    if !overrides.is_empty() {
        let Some(container) = job.container() else {
            return Err(Error::invalid(
                "overrides",
                "image, cmd and env apply to container jobs only",
            ));
        };
        overrides.validate(container)?;
    }
    // Millisecond instants: two clicks in one millisecond are one fire.
    let mut now =
        DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap_or_else(Utc::now);
    if let Some(key) = key.key() {
        let ttl = std::time::Duration::from_secs(state.settings.api.idempotency_ttl_secs);
        now = state
            .store
            .keyed_instant(&job.account, &job.id, key, now, ttl)
            .await?;
    }
    if !overrides.is_empty() {
        state
            .store
            .set_fire_overrides(&job.id, now, overrides)
            .await?;
    }
    let fire = FireMessage {
        manual: true,
        relaunch: false,
        ..FireMessage::scheduled(&job.id, job.generation, now)
    };
    // Recorded in Redis, handed to RabbitMQ by the pump: a run-now survives a broker outage.
    state.store.schedule_fire(&fire, now).await?;
    let mut detail = serde_json::json!({ "instant": now });
    if !overrides.is_empty() {
        detail["overrides"] = serde_json::to_value(overrides).unwrap_or_default();
    }
    actor
        .record(state, "run_now", (Some(job), Some(job)), Some(detail))
        .await;
    Ok(now)
}

fn first_fire(job: &Job, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
    let next = job.first_fire(now)?;
    if next.is_none() {
        return Err(Error::invalid(
            "schedule",
            "has no fire between start_at and end_at",
        ));
    }
    Ok(next)
}

/// An HRM URL with its instance placeholders (`{dns_name}`, `{private_dns_name}`) filled with a
/// stand-in host, so that its form can be checked before the instance is known.
pub fn fill_placeholders(url: &str) -> String {
    url.replace("{dns_name}", PLACEHOLDER_HOST)
        .replace("{private_dns_name}", PLACEHOLDER_HOST)
        .replace("{ip_address}", PLACEHOLDER_HOST)
}

/// What an instance placeholder stands for when a URL is checked before its instance is known.
const PLACEHOLDER_HOST: &str = "instance.invalid";

/// Marks a run's instance terminating and asks the reaper to terminate it, its container given
/// `stop_grace_secs` after its stop signal (0: at once).
pub async fn terminate_instance(
    state: &AppState,
    run: &spot_shared::model::Run,
    reason: &str,
    stop_grace_secs: u64,
) -> Result<()> {
    use spot_shared::model::InstanceState;
    let Some(instance_id) = &run.instance_id else {
        return Ok(());
    };
    if let Some(instance) = state.store.get_instance(instance_id).await? {
        if matches!(
            instance.state,
            InstanceState::Requested | InstanceState::Running
        ) {
            state
                .store
                .advance_instance(instance_id, InstanceState::Terminating, &[])
                .await?;
        }
    }
    state
        .broker
        .request_terminate(&spot_shared::messages::TerminateRequest {
            instance_id: instance_id.clone(),
            run_id: run.id.clone(),
            reason: reason.to_string(),
            stop_grace_secs,
        })
        .await
}
