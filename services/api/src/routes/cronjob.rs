//! Seed 002's API (distributed-cronjob): `GET /jobs`, `GET /jobs/{id}`, `POST /jobs` with `executable`,
//! `schedule` (cron) and `type`. A `command` runs with `sh -c` in the configured image; a `script` or
//! `binary` is uploaded as base64 or, as the seed's samples do, named by URL (`s3://bucket/key`,
//! `http(s)://s3.amazonaws.com/bucket/key`, any `https://` URL; optionally with its `sha256`) and
//! fetched by the agent on the instance; either way it is placed in the container and executed. Statuses: scheduled (no run has
//! ended yet), finished, error. Unlike the seed: a bad body gets 400, an unknown id 404, an empty list
//! `[]`, and jobs really run.

use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Digest;
use spot_shared::file_source::FileSource;
use spot_shared::model::{ContainerSpec, FileSpec, Job, RunState, Runner};
use spot_shared::Error;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::idempotency::IdempotencyKey;
use crate::jobs::{self, JobSpec};
use crate::routes::paging::{ok_paged, PageQuery};
use crate::routes::{parse_json, Query};
use crate::state::AppState;

const GROUP: &str = "cronjob";
/// Where an uploaded script or binary is placed in the container.
const UPLOAD_PATH: &str = "/spot/executable";
/// Largest upload (decoded).
const MAX_UPLOAD_BYTES: usize = 4 * 1024 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/jobs")
            // Uploads are base64 in the body: allow them past the default body limit.
            .app_data(web::PayloadConfig::new(
                MAX_UPLOAD_BYTES * 4 / 3 + 64 * 1024,
            ))
            .route(web::get().to(list))
            .route(web::post().to(create)),
    )
    .route("/jobs/{id}", web::get().to(show));
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateRequest {
    #[schema(example = "echo hello")]
    executable: String,
    #[schema(example = "*/30 * * * *")]
    schedule: String,
    /// `command`, `script` or `binary` (the last two base64).
    #[serde(rename = "type")]
    #[schema(example = "command")]
    kind: String,
    /// An addition to the seed: the image to run in (the configured one otherwise).
    image: Option<String>,
    /// An addition to the seed: the script's or binary's SHA-256 in hex; a fetched file with another
    /// ends the run (an upload with another is refused).
    sha256: Option<String>,
    /// The seed's documents carry these; they are the system's to set, so they are ignored.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    id: Option<Value>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    status: Option<Value>,
}

#[utoipa::path(post, path = "/jobs", tag = "cronjob", summary = "Create a job (seed 002)", security(("api_key" = [])), request_body = CreateRequest, responses((status = 200, description = "The seed's job document `{id, executable, schedule, type, status}`"), (status = 400, description = "`{field, message}`"), (status = 403), (status = 429, description = "Over a quota")))]
pub(super) async fn create(
    caller: Caller,
    state: web::Data<AppState>,
    key: IdempotencyKey,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let request: CreateRequest = parse_json(&body)?;
    let _ = (&request.id, &request.status);
    if request.executable.trim().is_empty() {
        return Err(Error::invalid("executable", "must not be empty").into());
    }
    let (cmd, files) = match request.kind.as_str() {
        "command" => {
            if request.sha256.is_some() {
                return Err(Error::invalid("sha256", "applies to a script or binary").into());
            }
            (Some(shell(&request.executable)), Vec::new())
        }
        "script" | "binary" => {
            let file = executable_file(&state, &request).await?;
            // sh runs a script without a shebang line itself; a binary is executed directly.
            let cmd = if request.kind == "script" {
                shell(UPLOAD_PATH)
            } else {
                UPLOAD_PATH.to_string()
            };
            (Some(cmd), vec![file])
        }
        _ => return Err(Error::invalid("type", "must be command, script or binary").into()),
    };
    let spec = JobSpec::new(
        GROUP,
        request.schedule,
        Runner::Container(ContainerSpec {
            image: request
                .image
                .unwrap_or_else(|| state.settings.cronjob.image.clone()),
            cmd,
            env: Vec::new(),
            files,
            ..ContainerSpec::default()
        }),
    );
    let id = key.job_id(&caller.0.account, "/jobs");
    let job = jobs::create(&state, &caller.actor(), &caller.0.account, spec, id).await?;
    Ok(HttpResponse::Ok().json(view(&state, &job).await?))
}

/// The script or binary as a file for the container: fetched by URL on the instance, or uploaded.
async fn executable_file(state: &AppState, request: &CreateRequest) -> Result<FileSpec, Error> {
    let executable = request.executable.trim();
    let by_url = ["s3://", "http://", "https://"]
        .iter()
        .any(|scheme| executable.starts_with(scheme));
    if by_url {
        let source = FileSource {
            url: executable.to_string(),
            sha256: request.sha256.clone(),
        };
        if let Err(problem) = spot_shared::file_source::Location::parse(executable) {
            return Err(Error::invalid("executable", problem));
        }
        if let Some(problem) = source.problem() {
            return Err(Error::invalid("sha256", problem));
        }
        jobs::check_source_target(state, &source, "executable").await?;
        return Ok(FileSpec {
            path: UPLOAD_PATH.into(),
            mode: 0o755,
            content_base64: String::new(),
            source: Some(source),
        });
    }
    let content = base64::engine::general_purpose::STANDARD
        .decode(executable.as_bytes())
        .map_err(|e| {
            Error::invalid(
                "executable",
                format!(
                    "a {} is uploaded as base64 or named by URL (s3://bucket/key, https://…): {e}",
                    request.kind
                ),
            )
        })?;
    if content.len() > MAX_UPLOAD_BYTES {
        return Err(Error::invalid("executable", "larger than 4 MiB"));
    }
    if let Some(expected) = &request.sha256 {
        let actual = hex::encode(sha2::Sha256::digest(&content));
        if !expected.eq_ignore_ascii_case(&actual) {
            return Err(Error::invalid(
                "sha256",
                format!("the upload's SHA-256 is {actual}, not {expected}"),
            ));
        }
    }
    Ok(FileSpec {
        path: UPLOAD_PATH.into(),
        mode: 0o755,
        content_base64: executable.to_string(),
        source: None,
    })
}

/// `sh -c '<text>'`, quoted so that the agent's shell-like split gives back the text whole.
fn shell(text: &str) -> String {
    format!("sh -c {}", shlex_quote(text))
}

fn shlex_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[utoipa::path(get, path = "/jobs", tag = "cronjob", summary = "The account's seed-002 jobs, newest first, paged (`X-Next-Offset`)", security(("api_key" = [])), params(PageQuery), responses((status = 200, description = "`[job document]`"), (status = 403)))]
pub(super) async fn list(
    req: HttpRequest,
    caller: Caller,
    state: web::Data<AppState>,
    query: Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let window = query.window();
    let listed = state
        .store
        .list_jobs_from(
            &caller.0.account,
            Some(GROUP),
            window.offset,
            window.to_read(),
        )
        .await?;
    let (listed, next) = window.cut(listed);
    let mut jobs = Vec::with_capacity(listed.len());
    for job in &listed {
        jobs.push(view(&state, job).await?);
    }
    Ok(ok_paged(&req, window, next).json(jobs))
}

#[utoipa::path(get, path = "/jobs/{id}", tag = "cronjob", summary = "One seed-002 job", security(("api_key" = [])), params(("id" = String, Path)), responses((status = 200, description = "The job document"), (status = 404)))]
pub(super) async fn show(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let job = jobs::load_owned(&state, &caller, &path).await?;
    if job.group != GROUP {
        return Err(Error::not_found(format!("no job {}", job.id)).into());
    }
    Ok(HttpResponse::Ok().json(view(&state, &job).await?))
}

/// The seed's job document, with the status of the newest ended run.
async fn view(state: &AppState, job: &Job) -> Result<Value, Error> {
    let mut status = "scheduled";
    for run in state.store.job_runs(&job.id, 20).await? {
        if run.state.is_terminal() {
            status = if run.state == RunState::Succeeded {
                "finished"
            } else {
                "error"
            };
            break;
        }
    }
    let container = job.container();
    let (kind, executable) = match container {
        Some(c) if !c.files.is_empty() => {
            let kind = if c.cmd.as_deref().is_some_and(|cmd| cmd.starts_with("sh ")) {
                "script"
            } else {
                "binary"
            };
            let executable = match &c.files[0].source {
                Some(source) => source.url.clone(),
                None => c.files[0].content_base64.clone(),
            };
            (kind, executable)
        }
        Some(c) => ("command", unshell(c.cmd.as_deref().unwrap_or(""))),
        None => ("command", String::new()),
    };
    let mut document = json!({
        "id": job.id,
        "status": status,
        "executable": executable,
        "schedule": job.schedule,
        "type": kind,
    });
    let sha256 = container
        .and_then(|c| c.files.first())
        .and_then(|file| file.source.as_ref())
        .and_then(|source| source.sha256.as_ref());
    if let Some(sha256) = sha256 {
        document["sha256"] = json!(sha256);
    }
    Ok(document)
}

/// The command as it was given: undo [`shell`].
fn unshell(cmd: &str) -> String {
    shlex::split(cmd)
        .and_then(|argv| argv.get(2).cloned())
        .unwrap_or_else(|| cmd.to_string())
}
