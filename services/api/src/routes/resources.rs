//! The project's own resource API under `/v1`: jobs per account and group, their runs, logs and
//! upcoming fire times. The account is the caller's (admins may name another with `?account=`).

use actix_web::{web, HttpResponse};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::json;
use spot_shared::model::{
    ContainerSpec, DummySpec, Job, OnLastRun, Policies, Run, RunOverrides, Runner, Tag,
};
use spot_shared::Error;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::idempotency::IdempotencyKey;
use crate::jobs::{self, JobSpec};
use crate::routes::paging::Window;
use crate::routes::{parse_json, Query};
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/jobs", web::post().to(create_job))
        .route("/v1/jobs", web::get().to(list_jobs))
        .route("/v1/jobs/{id}", web::get().to(get_job))
        .route("/v1/jobs/{id}", web::put().to(replace_job))
        .route("/v1/jobs/{id}", web::delete().to(delete_job))
        .route("/v1/jobs/{id}/enable", web::post().to(enable_job))
        .route("/v1/jobs/{id}/disable", web::post().to(disable_job))
        .route("/v1/jobs/{id}/pause", web::post().to(pause_job))
        .route("/v1/jobs/{id}/resume", web::post().to(resume_job))
        .route("/v1/jobs/{id}/run", web::post().to(run_job_now))
        .route("/v1/jobs/{id}/next", web::get().to(next_fires))
        .route("/v1/jobs/{id}/runs", web::get().to(list_runs))
        .route("/v1/runs/{id}", web::get().to(get_run))
        .route("/v1/runs/{id}/logs", web::get().to(run_logs))
        .route("/v1/instances/{id}", web::get().to(get_instance));
}

/// A job as clients send it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<Tag>,
    #[serde(default = "default_group")]
    pub group: String,
    #[schema(example = "30 2 * * mon-fri")]
    pub schedule: String,
    #[serde(default = "default_timezone")]
    #[schema(example = "Europe/Berlin")]
    pub timezone: String,
    pub runner: RunnerRequest,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    #[serde(default)]
    pub policies: Policies,
    /// EventBridge Scheduler's form of `policies.jitter_secs`: `{"mode": "FLEXIBLE",
    /// "maximum_window_in_minutes": 15}` starts each fire within 15 minutes after its instant.
    pub flexible_time_window: Option<FlexibleTimeWindow>,
    /// EventBridge Scheduler's `ActionAfterCompletion`: `DELETE` deletes the job once its schedule
    /// is over and its last run has ended (`policies.on_last_run: delete`); `NONE` keeps it.
    #[schema(example = "DELETE")]
    pub action_after_completion: Option<String>,
}

/// EventBridge Scheduler's `FlexibleTimeWindow`, read as `policies.jitter_secs`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlexibleTimeWindow {
    /// `OFF` or `FLEXIBLE`.
    #[schema(example = "FLEXIBLE")]
    pub mode: String,
    /// 1 to 1440, with `FLEXIBLE`.
    pub maximum_window_in_minutes: Option<u64>,
}

impl FlexibleTimeWindow {
    /// The jitter it means, in seconds; `prefix` goes before field names in errors.
    fn jitter_secs(&self, prefix: &str) -> Result<u64, Error> {
        let field = format!("{prefix}flexible_time_window.maximum_window_in_minutes");
        match (self.mode.as_str(), self.maximum_window_in_minutes) {
            ("OFF", None) => Ok(0),
            ("OFF", Some(_)) => Err(Error::invalid(field, "not allowed with mode OFF")),
            ("FLEXIBLE", Some(minutes @ 1..=1440)) => Ok(minutes * 60),
            ("FLEXIBLE", _) => Err(Error::invalid(field, "1 to 1440 with mode FLEXIBLE")),
            _ => Err(Error::invalid(
                format!("{prefix}flexible_time_window.mode"),
                "must be OFF or FLEXIBLE",
            )),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
// A request body read once and turned into a `Runner`: its size is nobody's concern.
#[allow(clippy::large_enum_variant)]
pub enum RunnerRequest {
    /// A template rendered with the account's name; needs no instance.
    Dummy { template: String },
    /// Start, stop or reboot an instance tagged as the account's.
    Instance {
        instance_id: String,
        action: spot_shared::instance_power::PowerAction,
    },
    Container {
        #[schema(example = "busybox:local")]
        image: String,
        #[schema(example = "sh -c 'echo hello'")]
        cmd: Option<String>,
        #[serde(default)]
        env: Vec<String>,
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
        /// What the container may use; the deployment's defaults for any unset.
        #[serde(default)]
        limits: spot_shared::model::ContainerLimits,
        /// The signal a stop (timeout, spot interruption) sends first (`SIGTERM`).
        #[schema(example = "SIGTERM")]
        stop_signal: Option<String>,
        /// Seconds from that signal to the kill (30; at most 100 on a spot interruption).
        stop_grace_secs: Option<u64>,
        /// Environment variables read at launch from AWS: name → the ARN of an SSM parameter or
        /// a Secrets Manager secret. Their values are never stored or shown.
        #[serde(default)]
        #[schema(example = json!({"DB_PASSWORD": "arn:aws:ssm:us-east-1:123456789012:parameter/prod/db/password"}))]
        secrets: std::collections::BTreeMap<String, String>,
        /// An array job: each fire runs this many copies (1 to 10,000), each on its own instance
        /// with `SPOT_ARRAY_INDEX` (0 to N-1) and `SPOT_ARRAY_SIZE`, its own retries and cost.
        array_size: Option<u32>,
        /// At most this many copies of a fire under way at once (100 unless set, at most
        /// `array_size`).
        array_parallelism: Option<u32>,
    },
}

fn default_group() -> String {
    "default".into()
}

fn default_timezone() -> String {
    "UTC".into()
}

fn enabled_by_default() -> bool {
    true
}

impl JobRequest {
    /// The job it asks for; `prefix` goes before field names in errors (a batch's `jobs[i].`).
    pub fn into_spec(self, prefix: &str) -> Result<JobSpec, Error> {
        let mut policies = self.policies;
        if let Some(window) = &self.flexible_time_window {
            let jitter = window.jitter_secs(prefix)?;
            if policies.jitter_secs != 0 && policies.jitter_secs != jitter {
                return Err(Error::invalid(
                    format!("{prefix}flexible_time_window"),
                    "says otherwise than policies.jitter_secs: give one of them",
                ));
            }
            policies.jitter_secs = jitter;
        }
        if let Some(action) = &self.action_after_completion {
            let field = format!("{prefix}action_after_completion");
            let on_last_run = match action.as_str() {
                "NONE" => OnLastRun::Keep,
                "DELETE" => OnLastRun::Delete,
                _ => return Err(Error::invalid(field, "must be NONE or DELETE")),
            };
            if policies.on_last_run != OnLastRun::Keep && policies.on_last_run != on_last_run {
                return Err(Error::invalid(
                    field,
                    "says otherwise than policies.on_last_run: give one of them",
                ));
            }
            policies.on_last_run = on_last_run;
        }
        Ok(JobSpec::from(JobRequest {
            policies,
            flexible_time_window: None,
            action_after_completion: None,
            ..self
        }))
    }
}

impl From<JobRequest> for JobSpec {
    fn from(request: JobRequest) -> JobSpec {
        let runner = match request.runner {
            RunnerRequest::Dummy { template } => Runner::Dummy(DummySpec {
                template,
                runner_name: None,
            }),
            RunnerRequest::Instance {
                instance_id,
                action,
            } => Runner::Instance(spot_shared::model::InstanceSpec {
                instance_id,
                action,
                runner_name: None,
            }),
            RunnerRequest::Container {
                image,
                cmd,
                env,
                instance_types,
                max_price,
                subnets,
                disk_gb,
                on_demand_fallback,
                limits,
                stop_signal,
                stop_grace_secs,
                secrets,
                array_size,
                array_parallelism,
            } => Runner::Container(ContainerSpec {
                image: image.trim().to_string(),
                cmd,
                env,
                instance_types,
                files: Vec::new(),
                max_price,
                subnets,
                disk_gb,
                on_demand_fallback,
                limits,
                stop_signal,
                stop_grace_secs,
                secrets,
                array_size,
                array_parallelism,
            }),
        };
        JobSpec {
            name: request.name,
            description: request.description,
            modified_by: String::new(),
            tags: request.tags,
            group: request.group,
            schedule: request.schedule,
            timezone: request.timezone,
            runner,
            enabled: request.enabled,
            policies: request.policies,
        }
    }
}

/// A job as the API shows it: the job and its next fire time.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    #[serde(flatten)]
    pub job: Job,
    pub next_fire_at: Option<chrono::DateTime<Utc>>,
}

impl JobView {
    pub fn of(job: Job) -> JobView {
        JobView {
            next_fire_at: job.next_fire_at,
            job,
        }
    }
}

fn view(job: &Job) -> serde_json::Value {
    json!(JobView {
        job: job.clone(),
        next_fire_at: job.next_fire_at,
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    group: Option<String>,
    /// At most this many (1 to 1000, default 100).
    limit: Option<usize>,
    /// Skip this many, newest first: the `next_offset` of the page before.
    offset: Option<usize>,
    account: Option<String>,
    /// Include each job's latest runs (newest first, up to 25) as `last_runs`: the dashboard's grid.
    last_runs: Option<usize>,
}

/// The most runs of each job `GET /v1/jobs?last_runs=` includes.
const MAX_LAST_RUNS: usize = 25;

/// The account a request acts for: the caller's, or any for an admin naming one.
fn account_for(caller: &Caller, requested: Option<&str>) -> Result<String, Error> {
    match requested {
        Some(account) if caller.owns(account) => Ok(account.to_string()),
        Some(_) => Err(Error::not_found("no such account")),
        None => Ok(caller.0.account.clone()),
    }
}

#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", summary = "Create a job", security(("api_key" = [])), request_body = JobRequest, responses((status = 201, body = JobView), (status = 400, description = "Invalid input, naming the field"), (status = 403, description = "Missing or unknown key")))]
pub async fn create_job(
    caller: Caller,
    state: web::Data<AppState>,
    key: IdempotencyKey,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let request: JobRequest = parse_json(&body)?;
    let id = key.job_id(&caller.0.account, "/v1/jobs");
    let job = jobs::create(
        &state,
        &caller.actor(),
        &caller.0.account,
        request.into_spec("")?,
        id,
    )
    .await?;
    // Serialised straight from the job: the hottest answer, with no JSON tree built on the way.
    Ok(HttpResponse::Created().json(JobView::of(job)))
}

#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", summary = "List the account's jobs, newest first", security(("api_key" = [])), params(ListQuery), responses((status = 200, description = "`{\"jobs\": [JobView]}`"), (status = 403)))]
pub async fn list_jobs(
    caller: Caller,
    state: web::Data<AppState>,
    query: Query<ListQuery>,
) -> ApiResult<HttpResponse> {
    let account = account_for(&caller, query.account.as_deref())?;
    let window = Window::new(query.offset, query.limit.or(Some(100)), 1000);
    let listed = state
        .store
        .list_jobs_from(
            &account,
            query.group.as_deref(),
            window.offset,
            window.to_read(),
        )
        .await?;
    let last_runs = query.last_runs.unwrap_or(0);
    if last_runs > MAX_LAST_RUNS {
        return Err(Error::invalid("last_runs", format!("must be 0..={MAX_LAST_RUNS}")).into());
    }
    let (jobs, next_offset) = window.cut(listed);
    let mut views = Vec::with_capacity(jobs.len());
    for job in &jobs {
        let mut shown = view(job);
        if let Some(left) = jobs::remaining_runs(&state, job).await? {
            shown["remaining_runs"] = json!(left);
        }
        if last_runs > 0 {
            shown["last_runs"] = json!(state.store.job_runs_from(&job.id, 0, last_runs).await?);
        }
        views.push(shown);
    }
    Ok(HttpResponse::Ok().json(json!({ "jobs": views, "next_offset": next_offset })))
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", summary = "One job", security(("api_key" = [])), params(("id" = String, Path)), responses((status = 200, body = JobView), (status = 404)))]
pub async fn get_job(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let job = jobs::load_owned(&state, &caller, &path).await?;
    // The cost of its kept runs' instances (those terminated).
    let total = state.store.job_cost_usd(&job).await?;
    let mut shown = view(&job);
    shown["cost_usd_total"] = json!(total);
    if let Some(left) = jobs::remaining_runs(&state, &job).await? {
        shown["remaining_runs"] = json!(left);
    }
    Ok(HttpResponse::Ok().json(shown))
}

#[utoipa::path(put, path = "/v1/jobs/{id}", tag = "jobs", summary = "Replace a job's specification; older timers are dropped", security(("api_key" = [])), params(("id" = String, Path)), request_body = JobRequest, responses((status = 200, body = JobView), (status = 400), (status = 404)))]
pub async fn replace_job(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let current = jobs::load_owned(&state, &caller, &path).await?;
    let request: JobRequest = parse_json(&body)?;
    let job = jobs::replace(&state, &caller.actor(), current, request.into_spec("")?).await?;
    Ok(HttpResponse::Ok().json(view(&job)))
}

#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs", summary = "Delete a job with its runs", security(("api_key" = [])), params(("id" = String, Path)), responses((status = 204), (status = 404)))]
pub async fn delete_job(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let job = jobs::load_owned(&state, &caller, &path).await?;
    jobs::delete(&state, &caller.actor(), &job).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(post, path = "/v1/jobs/{id}/enable", tag = "jobs", summary = "Enable a job and arm its next fire", security(("api_key" = [])), params(("id" = String, Path)), responses((status = 200, body = JobView), (status = 404)))]
pub async fn enable_job(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let job = jobs::load_owned(&state, &caller, &path).await?;
    let job = jobs::set_enabled(&state, &caller.actor(), job, true).await?;
    Ok(HttpResponse::Ok().json(view(&job)))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/disable", tag = "jobs", summary = "Disable a job; armed timers are dropped", security(("api_key" = [])), params(("id" = String, Path)), responses((status = 200, body = JobView), (status = 404)))]
pub async fn disable_job(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let job = jobs::load_owned(&state, &caller, &path).await?;
    let job = jobs::set_enabled(&state, &caller.actor(), job, false).await?;
    Ok(HttpResponse::Ok().json(view(&job)))
}

/// Why a job is paused.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PauseRequest {
    /// Shown wherever the job is listed, until it is resumed (at most 1,024 bytes).
    #[schema(example = "upstream API down, see INC-1234")]
    pub note: String,
}

#[utoipa::path(post, path = "/v1/jobs/{id}/pause", tag = "jobs", summary = "Pause a job with a note: it fires nothing until resumed; the note shows wherever it is listed", security(("api_key" = [])), params(("id" = String, Path)), request_body = PauseRequest, responses((status = 200, body = JobView), (status = 400), (status = 404)))]
pub async fn pause_job(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let request: PauseRequest = if body.is_empty() {
        PauseRequest::default()
    } else {
        parse_json(&body)?
    };
    let job = jobs::load_owned(&state, &caller, &path).await?;
    let job = jobs::pause(&state, &caller.actor(), job, request.note).await?;
    Ok(HttpResponse::Ok().json(view(&job)))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/resume", tag = "jobs", summary = "Resume a paused job (as enable does): its note is cleared and its next fire armed from now", security(("api_key" = [])), params(("id" = String, Path)), responses((status = 200, body = JobView), (status = 404)))]
pub async fn resume_job(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    enable_job(caller, state, path).await
}

#[utoipa::path(post, path = "/v1/jobs/{id}/run", tag = "jobs", summary = "Run the job now, outside its schedule; a container job's image, cmd and env may be overridden for that run alone", security(("api_key" = [])), params(("id" = String, Path)), request_body(content = Option<RunOverrides>, description = "Optional: `{image, cmd, env}` for this run (and its retries), recorded on the run"), responses((status = 202, description = "`{job_id, scheduled_at}`"), (status = 400, description = "A bad override, naming the field"), (status = 404), (status = 409, description = "The job is disabled")))]
pub async fn run_job_now(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    key: crate::idempotency::IdempotencyKey,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    // No body (or an empty one): the job as it is.
    let overrides: RunOverrides = if body.iter().all(u8::is_ascii_whitespace) {
        RunOverrides::default()
    } else {
        parse_json(&body)?
    };
    let job = jobs::load_owned(&state, &caller, &path).await?;
    let at = jobs::run_now_with(&state, &caller.actor(), &job, &key, &overrides).await?;
    Ok(HttpResponse::Accepted().json(json!({ "job_id": job.id, "scheduled_at": at })))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct NextQuery {
    count: Option<usize>,
}

#[utoipa::path(get, path = "/v1/jobs/{id}/next", tag = "jobs", summary = "The next N fire times (with jitter, when each fire starts)", security(("api_key" = [])), params(("id" = String, Path), NextQuery), responses((status = 200, description = "`{job_id, timezone, jitter_secs, remaining_runs, next: [instant], skipped: [instant]}`: `skipped`, the instants up to the last shown that `policies.exclude` skips; `remaining_runs` (null without `max_runs`) caps `next`"), (status = 400), (status = 404)))]
pub async fn next_fires(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: Query<NextQuery>,
) -> ApiResult<HttpResponse> {
    let job = jobs::load_owned(&state, &caller, &path).await?;
    let count = query.count.unwrap_or(10);
    if !(1..=1000).contains(&count) {
        return Err(Error::invalid("count", "must be 1..=1000").into());
    }
    // A finite schedule shows only the fires it has left (a skipped fire would leave one more).
    let remaining = jobs::remaining_runs(&state, &job).await?;
    let count = remaining.map_or(count, |left| count.min(left as usize));
    let fires = match job.next_fire_at {
        Some(next) if count > 0 => {
            let mut fires = vec![next];
            fires.extend(job.upcoming(next, count - 1)?);
            fires
        }
        _ => Vec::new(),
    };
    // The instants an exclusion skips, from now to the last fire shown.
    let skipped = match fires.last() {
        Some(last) => job.skipped_between(Utc::now(), *last, count)?,
        None => Vec::new(),
    };
    // With jitter, each time is its instant plus the job's delay for it: when the fire starts.
    Ok(HttpResponse::Ok().json(json!({
        "job_id": job.id,
        "timezone": job.timezone,
        "jitter_secs": job.policies.jitter_secs,
        "remaining_runs": remaining,
        "next": fires,
        "skipped": skipped,
    })))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    /// At most this many (1 to 1000, default 50).
    limit: Option<usize>,
    /// Skip this many, newest first: the `next_offset` of the page before.
    offset: Option<usize>,
}

#[utoipa::path(get, path = "/v1/jobs/{id}/runs", tag = "jobs", summary = "A job's runs, newest first", security(("api_key" = [])), params(("id" = String, Path), RunsQuery), responses((status = 200, description = "`{\"runs\": [Run]}`"), (status = 404)))]
pub async fn list_runs(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: Query<RunsQuery>,
) -> ApiResult<HttpResponse> {
    let job = jobs::load_owned(&state, &caller, &path).await?;
    let window = Window::new(query.offset, query.limit.or(Some(50)), 1000);
    let listed = state
        .store
        .job_runs_from(&job.id, window.offset, window.to_read())
        .await?;
    let (runs, next_offset) = window.cut(listed);
    let runs: Vec<_> = runs.iter().map(|run| run_view(run, Some(&job))).collect();
    Ok(HttpResponse::Ok().json(json!({ "runs": runs, "next_offset": next_offset })))
}

/// A run as `/v1` shows it: with `will_retry`, whether its job's policy gives an ended run another
/// attempt (a new run of the same instant, once its backoff is over).
fn run_view(run: &Run, job: Option<&Job>) -> serde_json::Value {
    let will_retry = run.state.is_terminal()
        && job.is_some_and(|job| {
            spot_shared::policy::should_retry(job, run, run.state, run.exit_code)
        });
    let mut view = json!(run);
    view["will_retry"] = json!(will_retry);
    view
}

pub(crate) async fn load_run(state: &AppState, caller: &Caller, id: &str) -> Result<Run, Error> {
    state
        .store
        .get_run(id)
        .await?
        .filter(|run| caller.owns(&run.account))
        .ok_or_else(|| Error::not_found(format!("no run {id}")))
}

#[utoipa::path(get, path = "/v1/runs/{id}", tag = "jobs", summary = "One run", security(("api_key" = [])), params(("id" = String, Path)), responses((status = 200, body = Run), (status = 404)))]
pub async fn get_run(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let run = load_run(&state, &caller, &path).await?;
    let instance = match run.instance_id.as_deref() {
        Some(id) => state.store.get_instance(id).await?,
        None => None,
    };
    let job = state.store.get_job(&run.job_id).await?;
    let min_billed = state.settings.pricing.min_billed_secs;
    let mut view = run_view(&run, job.as_ref());
    view["cost"] = json!(instance
        .as_ref()
        .and_then(|i| spot_shared::pricing::cost_of(i, min_billed, Utc::now())));
    Ok(HttpResponse::Ok().json(view))
}

/// An instance a run of the caller's ran on: its provider, type, lifecycle and state history.
#[utoipa::path(get, path = "/v1/instances/{id}", tag = "jobs", summary = "An instance of one of the caller's runs", security(("api_key" = [])), params(("id" = String, Path)), responses((status = 200, body = spot_shared::model::Instance), (status = 404)))]
pub async fn get_instance(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let not_found = || Error::not_found(format!("no instance {}", path.as_str()));
    let instance = state
        .store
        .get_instance(&path)
        .await?
        .ok_or_else(not_found)?;
    // Another account's instance is as good as absent.
    load_run(&state, &caller, &instance.run_id)
        .await
        .map_err(|err| match err.code {
            spot_shared::ErrorCode::NotFound => not_found(),
            _ => err,
        })?;
    Ok(HttpResponse::Ok().json(instance))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

/// The run's output; with `follow=true`, a stream that goes on until the run ends.
#[utoipa::path(get, path = "/v1/runs/{id}/logs", tag = "jobs", summary = "A run's output; `follow=true` streams it until the run ends", security(("api_key" = [])), params(("id" = String, Path), LogsQuery), responses((status = 200, content_type = "text/plain", description = "The output"), (status = 404)))]
pub async fn run_logs(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: Query<LogsQuery>,
) -> ApiResult<HttpResponse> {
    let run = load_run(&state, &caller, &path).await?;
    if !query.follow || run.state.is_terminal() {
        let log = state.store.get_log(&run.id).await?;
        return Ok(HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body(log));
    }
    // What was written so far, then what comes, until the run ends.
    let per_account = state.settings.quotas.max_log_streams(&run.account);
    let slot = match state.follow_slots.take(&run.account, per_account) {
        Ok(slot) => slot,
        Err(err) => {
            if err.field.as_deref() == Some("quotas.max_log_streams") {
                state
                    .store
                    .note_quota_refusal("max_log_streams", &run.account)
                    .await;
            }
            return Err(err.into());
        }
    };
    let body = crate::follow::output_stream(state.store.clone(), run.id.clone(), 0, slot);
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .streaming(body))
}
