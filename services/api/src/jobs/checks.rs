//! The checks of a job that look beyond its spec: the deployment (EC2, secrets, outbound rules,
//! quotas) and the other jobs it chains to. Each refuses with a 4xx naming the field.

use std::collections::{HashMap, HashSet, VecDeque};

use chrono::{DateTime, Utc};
use spot_shared::model::{Job, Policies, Runner};
use spot_shared::{Error, Result};

use super::spec::{fill_placeholders, PLACEHOLDER_HOST};
use crate::state::AppState;

/// Refuses a runner that needs an existing instance on a deployment with no EC2 configured, naming
/// the field, rather than failing every run of it later.
pub(super) fn check_instances_usable(state: &AppState, runner: &Runner) -> Result<()> {
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

/// Refuses, at the door, an HTTP runner whose URLs name an address the outbound policy blocks (an
/// IP, or a name resolving to one). The provisioner checks again at call time, on the addresses it
/// connects to: a name may resolve differently then, and one that does not resolve yet is left to it.
/// URLs naming the task's instance (`{dns_name}`) are checked when the instance is known.
pub(super) async fn check_outbound_targets(state: &AppState, runner: &Runner) -> Result<()> {
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
pub(super) fn check_secrets_readable(state: &AppState, runner: &Runner) -> Result<()> {
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
pub(super) async fn check_notify(
    state: &AppState,
    account: &str,
    policies: &Policies,
) -> Result<()> {
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
pub(super) async fn enforce_quotas(state: &AppState, job: &Job, now: DateTime<Utc>) -> Result<()> {
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

/// Checks the jobs `job` chains to (`policies.on_success`, `on_failure`): each a job of its account,
/// and none whose own chains lead back to it (the cycle is named).
pub(super) async fn check_chains(state: &AppState, job: &Job) -> Result<()> {
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
