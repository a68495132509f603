//! Seed 003's simple API: `POST /schedule`, `GET /list`, `GET /status/{id}`.
//! Its examples work as written; fields beyond the seed's are additions.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use spot_shared::model::{ContainerSpec, Instance, Job, Policies, Run, Runner};
use spot_shared::Error;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::idempotency::IdempotencyKey;
use crate::jobs::{self, JobSpec};
use crate::routes::paging::{ok_paged, PageQuery};
use crate::routes::{parse_json, Query};
use crate::state::AppState;

/// Seed 003's `POST /schedule` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    #[schema(example = "2030-01-01T10:00:00Z")]
    schedule: Option<String>,
    #[schema(example = "busybox:local")]
    docker_image: Option<String>,
    #[serde(default)]
    env: Vec<String>,
    #[schema(example = "echo hello")]
    cmd: Option<String>,
    #[serde(default)]
    instance_types: Vec<String>,
    /// Highest spot price per instance-hour in USD; unset pays up to the on-demand price.
    max_price: Option<String>,
    #[serde(default)]
    subnets: Vec<String>,
    disk_gb: Option<u32>,
    /// Launch on-demand when there is no spot capacity.
    #[serde(default)]
    on_demand_fallback: bool,
    timeout_secs: Option<u64>,
    /// IANA time zone for cron schedules (default UTC).
    timezone: Option<String>,
    /// What the container may use (memory_mb, cpus, pids); the deployment's defaults for any unset.
    #[serde(default)]
    limits: spot_shared::model::ContainerLimits,
}

#[utoipa::path(post, path = "/schedule", tag = "simple", summary = "Schedule a container job (seed 003)", security(("api_key" = [])), request_body = ScheduleRequest, responses((status = 200, description = "`{status: scheduled, message, id}`"), (status = 400), (status = 403)))]
pub async fn schedule(
    caller: Caller,
    state: web::Data<AppState>,
    key: IdempotencyKey,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let request: ScheduleRequest = parse_json(&body)?;
    let schedule = request
        .schedule
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| {
            Error::invalid(
                "schedule",
                "is required (an ISO 8601 date-time or a cron expression)",
            )
        })?;
    let image = request
        .docker_image
        .ok_or_else(|| Error::invalid("docker_image", "is required"))?;
    let spec = JobSpec {
        name: String::new(),
        description: String::new(),
        modified_by: String::new(),
        tags: Vec::new(),
        group: "default".into(),
        schedule,
        timezone: request.timezone.unwrap_or_else(|| "UTC".into()),
        runner: Runner::Container(ContainerSpec {
            image: image.trim().to_string(),
            cmd: request.cmd,
            env: request.env,
            instance_types: request.instance_types,
            files: Vec::new(),
            max_price: request.max_price,
            subnets: request.subnets,
            disk_gb: request.disk_gb,
            on_demand_fallback: request.on_demand_fallback,
            limits: request.limits,
            ..ContainerSpec::default()
        }),
        enabled: true,
        policies: Policies {
            timeout_secs: request
                .timeout_secs
                .unwrap_or(Policies::default().timeout_secs),
            ..Policies::default()
        },
    };
    let job = jobs::create(
        &state,
        &caller.actor(),
        &caller.0.account,
        spec,
        key.job_id(&caller.0.account, "/schedule"),
    )
    .await?;
    Ok(HttpResponse::Ok().json(json!({
        "status": "scheduled",
        "message": "job successfully scheduled",
        "id": job.id,
        "schedule": job.schedule,
        "next_fire_at": job.next_fire_at,
    })))
}

/// Jobs of the index looked at per `/list` page at most, one-shot or not: a page of an account with
/// many cron jobs ends early rather than reading them all, and `X-Next-Offset` goes on from there.
const LIST_SCAN: usize = 20_000;

#[utoipa::path(get, path = "/list", tag = "simple", summary = "The account's one-shot jobs (an ISO instant as schedule, as seed 003's clients parse) and their status words, newest first, paged (`X-Next-Offset`)", security(("api_key" = [])), params(PageQuery), responses((status = 200, description = "`{\"jobs\": [{status, id, schedule}]}`"), (status = 403)))]
pub async fn list(
    caller: Caller,
    state: web::Data<AppState>,
    req: HttpRequest,
    query: Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let window = query.window();
    // Seed 003's clients parse `schedule` as an ISO instant: the one-shot jobs are theirs to list,
    // whatever surface made them; cron jobs of the other surfaces are left out. `X-Next-Offset` is
    // where the next page starts in the account's index.
    let (listed, next) = state
        .store
        .list_jobs_matching(
            &caller.0.account,
            None,
            window.offset,
            window.limit,
            LIST_SCAN,
            |job| spot_shared::schedule::parse_instant(job.schedule.trim()).is_some(),
        )
        .await?;
    let mut jobs = Vec::with_capacity(listed.len());
    for job in listed {
        let run = state.store.latest_run(&job.id).await?;
        jobs.push(json!({
            "status": simple_status(run.as_ref()),
            "id": job.id,
            "schedule": job.schedule,
        }));
    }
    Ok(ok_paged(&req, window, next).json(json!({ "jobs": jobs })))
}

#[utoipa::path(get, path = "/status/{id}", tag = "simple", summary = "A job's status with its aws and docker objects", security(("api_key" = [])), params(("id" = String, Path)), responses((status = 200, description = "Seed 003's status document"), (status = 404)))]
pub async fn status(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let job = jobs::load_owned(&state, &caller, &path).await?;
    let run = state.store.latest_run(&job.id).await?;
    let instance = match run.as_ref().and_then(|r| r.instance_id.as_deref()) {
        Some(instance_id) => state.store.get_instance(instance_id).await?,
        None => None,
    };
    let output = match &run {
        Some(run) => String::from_utf8_lossy(&state.store.get_log(&run.id).await?).into_owned(),
        None => String::new(),
    };
    let mut view = status_view(&job, run.as_ref(), instance.as_ref(), output);
    // An extra object, beside seed 003's: what the run's instance cost (so far, while it lives).
    let min_billed = state.settings.pricing.min_billed_secs;
    view["cost"] = json!(instance
        .as_ref()
        .and_then(|i| spot_shared::pricing::cost_of(i, min_billed, chrono::Utc::now())));
    Ok(HttpResponse::Ok().json(view))
}

fn simple_status(run: Option<&Run>) -> &'static str {
    run.map(|r| r.state.simple_status()).unwrap_or("scheduled")
}

/// Seed 003's status document, with the run's details added.
fn status_view(job: &Job, run: Option<&Run>, instance: Option<&Instance>, output: String) -> Value {
    let empty = ContainerSpec::default();
    let spec = job.container().unwrap_or(&empty);
    let container_status = match run.map(|r| r.state) {
        None => "",
        Some(state)
            if state.is_terminal() && run.and_then(|r| r.container_id.as_ref()).is_some() =>
        {
            "exited"
        }
        Some(spot_shared::model::RunState::Running) => "running",
        Some(_) => "",
    };
    json!({
        "id": job.id,
        "status": simple_status(run),
        "schedule": job.schedule,
        "next_fire_at": job.next_fire_at,
        "aws": {
            "instance_id": instance.map(|i| i.id.as_str()).unwrap_or(""),
            "dns_name": instance.and_then(|i| i.dns_name.as_deref()).unwrap_or(""),
            "ready": instance.map(|i| i.ready).unwrap_or(false),
            "ip_address": instance.and_then(|i| i.ip_address.as_deref()).unwrap_or(""),
            "state": instance.map(|i| i.state.as_str()).unwrap_or(""),
            "instance_type": instance.and_then(|i| i.instance_type.as_deref()).unwrap_or(""),
            "provider": instance.map(|i| i.provider.as_str()).unwrap_or(""),
        },
        "docker": {
            "container_id": run.and_then(|r| r.container_id.as_deref()).unwrap_or(""),
            "container_status": container_status,
            "environment": spec.env,
            "command": spec.cmd.as_deref().unwrap_or(""),
            "docker_image": spec.image,
            "container_exit_code": run.and_then(|r| r.exit_code).map(Value::from).unwrap_or_else(|| Value::from("")),
        },
        "run": run.map(|r| json!({
            "id": r.id,
            "state": r.state,
            "attempt": r.attempt,
            "scheduled_at": r.scheduled_at,
            "transitions": r.transitions,
            "exit_code": r.exit_code,
            "error": r.error,
            "relaunches": r.relaunches,
            "relaunch_reasons": r.relaunch_reasons,
        })),
        // Seed 003's clients read the task id of the run under way here.
        "celery": {"job_parent_id": run.map(|r| r.id.as_str())},
        "output": output,
    })
}
