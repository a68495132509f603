//! Seed 004's operation API: `POST /JobScheduler` with `{"operation", "payload"}`. A job is named by
//! its image and date, as the seed's DynamoDB table keyed it; status words Scheduled, Requested,
//! FinishedOK, FinishedNOK, TerminatedOK, TerminatedNOK. Unlike the seed: every call needs a key;
//! scheduling the same image and instant again does not reset (and re-run) a finished job; and a
//! callback must carry its run's secret, so nobody can terminate anybody's instance.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use spot_shared::ids::{hash_secret, secret_matches};
use spot_shared::model::{ContainerSpec, InstanceState, Job, RunState, Runner};
use spot_shared::schedule::parse_instant;
use spot_shared::Error;
use utoipa::ToSchema;

use crate::audit::Actor;
use crate::auth::{presented_secret, Caller};
use crate::error::ApiResult;
use crate::jobs::{self, JobSpec};
use crate::routes::paging::{ok_paged, PageQuery, Window};
use crate::routes::parse_json;
use crate::state::AppState;

/// Jobs of this surface live in this group, and their names in this alias scope.
const GROUP: &str = "jobscheduler";

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct OperationRequest {
    /// `schedule`, `list`, `status` or `callback`.
    #[schema(example = "schedule")]
    operation: String,
    /// The job's key; `list` takes `{"limit", "offset"}` or nothing (the newest 1,000, the rest by
    /// the `X-Next-Offset` header).
    #[serde(default)]
    #[schema(value_type = Option<JobKey>)]
    payload: Value,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct JobKey {
    #[schema(example = "busybox:local")]
    image_name: String,
    #[schema(example = "2030-01-01T10:00:00Z")]
    date_to_run: String,
    #[serde(default)]
    environment_variables_list: Vec<String>,
}

fn error_message(status: u16, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap_or_default())
        .json(json!({ "errorMessage": message.into() }))
}

#[utoipa::path(post, path = "/JobScheduler", tag = "jobscheduler", summary = "Seed 004's operations: schedule, list, status, callback", security(("api_key" = [])), params(("X-Run-Secret" = Option<String>, Header, description = "The run's secret (callback only)")), request_body = OperationRequest, responses((status = 200, description = "`{status, mensagem}`, a job item or a list of them"), (status = 400, description = "`{field, message}` or `{errorMessage}`"), (status = 403), (status = 404, description = "`{errorMessage}`"), (status = 429, description = "Over a quota")))]
pub async fn operation(
    req: HttpRequest,
    caller: Caller,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let request: OperationRequest = parse_json(&body)?;
    let account = caller.0.account.clone();
    match request.operation.as_str() {
        "schedule" => {
            let key = job_key(&request.payload)?;
            schedule(&state, &caller.actor(), &account, key).await?;
            Ok(HttpResponse::Ok()
                .json(json!({"status": "OK", "mensagem": "Job agendado com sucesso"})))
        }
        "list" => list_page(&req, &state, &account, list_window(&request.payload)?).await,
        "status" => {
            let key = job_key(&request.payload)?;
            match find(&state, &account, &key).await? {
                Some(job) => Ok(HttpResponse::Ok().json(item(&state, &job).await?)),
                None => Ok(error_message(404, "Job não encontrado")),
            }
        }
        "callback" => {
            let key = job_key(&request.payload)?;
            let job = find(&state, &account, &key).await?;
            let run = match &job {
                Some(job) => state.store.latest_run(&job.id).await?,
                None => None,
            };
            // Only the run's own agent (its secret) may end it.
            let Some(run) = run.filter(|run| {
                !run.secret_hash.is_empty()
                    && secret_matches(presented_secret(&req), &run.secret_hash)
            }) else {
                return Err(Error::forbidden("the run's secret (X-Run-Secret) is required").into());
            };
            jobs::terminate_instance(&state, &run, "callback (operation API)", 0).await?;
            Ok(HttpResponse::Ok()
                .json(json!({"status": "OK", "mensagem": "Finalização do Job requisitada"})))
        }
        // The seed's body, with the field named as every other refusal of this api names it.
        other => Ok(HttpResponse::BadRequest().json(json!({
            "errorMessage": format!("Operação desconhecida: {other}"),
            "field": "operation",
        }))),
    }
}

/// One page of the surface's jobs as `list` answers it; `X-Next-Offset` and a `Link` to
/// [`list`] (`GET /JobScheduler?offset=&limit=`) lead to the next.
async fn list_page(
    req: &HttpRequest,
    state: &AppState,
    account: &str,
    window: Window,
) -> ApiResult<HttpResponse> {
    let listed = state
        .store
        .list_jobs_from(account, Some(GROUP), window.offset, window.to_read())
        .await?;
    let (listed, next) = window.cut(listed);
    let mut items = Vec::with_capacity(listed.len());
    for job in &listed {
        items.push(item(state, job).await?);
    }
    Ok(ok_paged(req, window, next).json(items))
}

#[utoipa::path(get, path = "/JobScheduler", tag = "jobscheduler", summary = "The `list` operation as a GET, paged by `?offset=&limit=`: where the `Link` of a `list` answer leads", security(("api_key" = [])), params(PageQuery), responses((status = 200, description = "A list of job items; `X-Next-Offset` and `Link` lead to the next page"), (status = 400), (status = 403)))]
pub async fn list(
    req: HttpRequest,
    caller: Caller,
    state: web::Data<AppState>,
    query: crate::routes::Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    list_page(&req, &state, &caller.0.account, query.window()).await
}

/// `list` pages by `{"limit", "offset"}` in its payload (none: the first 1,000).
fn list_window(payload: &Value) -> Result<Window, Error> {
    if payload.is_null() {
        return Ok(PageQuery::default().window());
    }
    let query: PageQuery = serde_json::from_value(payload.clone())
        .map_err(|e| Error::invalid("payload", format!("list takes limit and offset: {e}")))?;
    Ok(query.window())
}

fn job_key(payload: &Value) -> Result<JobKey, Error> {
    let key: JobKey = serde_json::from_value(payload.clone())
        .map_err(|e| Error::invalid("payload", format!("needs imageName and dateToRun: {e}")))?;
    if key.image_name.trim().is_empty() {
        return Err(Error::invalid("payload.imageName", "must not be empty"));
    }
    if parse_instant(key.date_to_run.trim()).is_none() {
        return Err(Error::invalid(
            "payload.dateToRun",
            "is not an ISO 8601 date-time",
        ));
    }
    Ok(key)
}

/// The alias of a job: its image and its instant (normalised, so equal instants match).
fn alias(account: &str, key: &JobKey) -> String {
    let at = parse_instant(key.date_to_run.trim())
        .map(|t| t.timestamp_millis().to_string())
        .unwrap_or_default();
    hash_secret(&format!("{account}\n{}\n{at}", key.image_name.trim()))
}

async fn find(state: &AppState, account: &str, key: &JobKey) -> Result<Option<Job>, Error> {
    match state.store.alias(GROUP, &alias(account, key)).await? {
        Some(id) => Ok(state
            .store
            .get_job(&id)
            .await?
            .filter(|job| job.account == account)),
        None => Ok(None),
    }
}

/// Schedules the job unless one with the same image and instant exists (which is left as it is).
async fn schedule(
    state: &AppState,
    actor: &Actor,
    account: &str,
    key: JobKey,
) -> Result<(), Error> {
    if find(state, account, &key).await?.is_some() {
        return Ok(());
    }
    let spec = JobSpec::new(
        GROUP,
        key.date_to_run.trim().to_string(),
        Runner::Container(ContainerSpec {
            image: key.image_name.trim().to_string(),
            cmd: None,
            env: key.environment_variables_list.clone(),
            ..ContainerSpec::default()
        }),
    );
    spec.validate("payload.")?;
    let job = jobs::create(state, actor, account, spec, None).await?;
    // Two racing schedules of the same key: the first name wins and the loser's job is removed.
    if let Some(existing) = state
        .store
        .claim_alias(GROUP, &alias(account, &key), &job.id)
        .await?
    {
        if existing != job.id {
            jobs::delete(state, actor, &job).await?;
        }
    }
    Ok(())
}

/// The seed's stored item: its fields, and the status word.
async fn item(state: &AppState, job: &Job) -> Result<Value, Error> {
    let run = state.store.latest_run(&job.id).await?;
    let instance = match run.as_ref().and_then(|r| r.instance_id.as_deref()) {
        Some(id) => state.store.get_instance(id).await?,
        None => None,
    };
    let terminated = instance
        .as_ref()
        .is_some_and(|i| i.state == InstanceState::Terminated);
    let status = match run.as_ref().map(|r| r.state) {
        None | Some(RunState::Pending) => "Scheduled",
        Some(RunState::Succeeded) if terminated => "TerminatedOK",
        Some(RunState::Succeeded) => "FinishedOK",
        Some(state) if state.is_terminal() && terminated => "TerminatedNOK",
        Some(state) if state.is_terminal() => "FinishedNOK",
        Some(_) => "Requested",
    };
    let mut item = json!({
        "imageName": job.container().map(|c| c.image.as_str()).unwrap_or(""),
        "dateToRun": job.schedule,
        "environmentVariablesList": job.container().map(|c| c.env.clone()).unwrap_or_default(),
        "jobStatus": status,
    });
    if let Some(instance) = instance {
        item["instanceId"] = json!(instance.id);
    }
    Ok(item)
}
