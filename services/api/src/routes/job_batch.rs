//! `POST /v1/jobs:batch`: up to [`MAX_BATCH`] jobs in one request, each created or refused on its
//! own, saved together in a few Redis commands. For clients that schedule many jobs at once (an
//! import, a fan-out), where a request per job spends most of its time on the round trips.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use spot_shared::model::Job;
use spot_shared::{Error, ErrorCode};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{error_body, ApiResult};
use crate::idempotency::IdempotencyKey;
use crate::jobs::{self, MAX_BATCH};
use crate::routes::resources::{JobRequest, JobView};
use crate::routes::{parse_json, parse_value};
use crate::state::AppState;

/// The largest batch body: a thousand jobs of up to 4 KiB each (one job's own limit is
/// `api.max_body_bytes`, 256 KiB by default, which a batch of container jobs would pass).
const MAX_BATCH_BODY_BYTES: usize = 4 * 1024 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/jobs:batch")
            .app_data(web::PayloadConfig::new(MAX_BATCH_BODY_BYTES))
            .route(web::post().to(create_jobs)),
    );
}

/// Many jobs to create at once.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1 to 1,000 jobs, each as `POST /v1/jobs` takes it.
    #[schema(value_type = Vec<JobRequest>)]
    pub jobs: Vec<serde_json::Value>,
}

/// One result per job of the request, in its order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    pub created: usize,
    pub refused: usize,
    pub results: Vec<BatchResult>,
}

/// A job's result: `status` 201 with the job, or the status and error body `POST /v1/jobs` would
/// have answered (its `field` starts with `jobs[i].`).
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResult {
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<JobView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub error: Option<serde_json::Value>,
}

#[utoipa::path(post, path = "/v1/jobs:batch", tag = "jobs", summary = "Create up to 1,000 jobs, each on its own", security(("api_key" = [])), request_body = BatchRequest, responses((status = 200, body = BatchResponse, description = "One result per job, in order: 201 with the job, or the 4xx and error `POST /v1/jobs` would answer"), (status = 400, description = "Not a batch (the body, or `jobs` empty or over 1,000), naming the field"), (status = 403, description = "Missing or unknown key")))]
pub async fn create_jobs(
    caller: Caller,
    state: web::Data<AppState>,
    key: IdempotencyKey,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let request: BatchRequest = parse_json(&body)?;
    if request.jobs.is_empty() || request.jobs.len() > MAX_BATCH {
        return Err(Error::invalid("jobs", format!("1 to {MAX_BATCH} jobs")).into());
    }
    let account = &caller.0.account;
    let specs = request
        .jobs
        .into_iter()
        .enumerate()
        .map(|(i, value)| {
            let prefix = format!("jobs[{i}].");
            let spec = parse_value::<JobRequest>(value, &prefix)
                .and_then(|request| request.into_spec(&prefix));
            // A resent batch names the same jobs: each one's id comes from the key and its place.
            let id = key.job_id(account, &format!("/v1/jobs:batch#{i}"));
            (spec, id)
        })
        .collect();
    let results = jobs::create_many(&state, &caller.actor(), account, specs).await?;
    let mut created = 0;
    let results: Vec<BatchResult> = results
        .into_iter()
        .enumerate()
        .map(|(i, result)| match result {
            Ok(job) => {
                created += 1;
                created_result(job)
            }
            Err(err) => refused_result(in_batch(err, &format!("jobs[{i}]."))),
        })
        .collect();
    Ok(HttpResponse::Ok().json(BatchResponse {
        created,
        refused: results.len() - created,
        results,
    }))
}

fn created_result(job: Job) -> BatchResult {
    BatchResult {
        status: 201,
        job: Some(JobView::of(job)),
        error: None,
    }
}

fn refused_result(err: Error) -> BatchResult {
    BatchResult {
        status: err.code.http_status(),
        job: None,
        error: Some(error_body(&err)),
    }
}

/// `err` with its field named within the batch (`jobs[3].schedule`), once.
fn in_batch(mut err: Error, prefix: &str) -> Error {
    if err.code == ErrorCode::Internal {
        return err;
    }
    err.field = Some(match err.field.take() {
        Some(field) if field.starts_with(prefix) => field,
        Some(field) => format!("{prefix}{field}"),
        None => prefix.trim_end_matches('.').to_string(),
    });
    err
}
