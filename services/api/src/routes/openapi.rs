//! The OpenAPI document of the api, generated from the handlers' annotations and served at
//! `/openapi.json`: every route of every surface (the compatibility surfaces, the agents' routes and
//! the open ones too), so that a fuzzer driven by it reaches them all.

use actix_web::HttpResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    agent, arrays, audit, backfills, callback, cronjob, health, hrm, job_batch, metrics, minion,
    operations, overview, quarantine, resources, simple, usage,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "spot-scheduler",
        description = "Run Docker jobs on short-lived EC2 spot instances, once or on a schedule."
    ),
    paths(
        simple::schedule,
        simple::list,
        simple::status,
        health::healthcheck,
        callback::callback,
        resources::create_job,
        job_batch::create_jobs,
        resources::list_jobs,
        resources::get_job,
        resources::replace_job,
        resources::delete_job,
        resources::enable_job,
        resources::disable_job,
        resources::pause_job,
        resources::resume_job,
        resources::run_job_now,
        resources::next_fires,
        resources::list_runs,
        resources::get_run,
        arrays::children,
        resources::run_logs,
        resources::get_instance,
        agent::spec,
        agent::append_logs,
        agent::heartbeat,
        metrics::metrics,
        overview::overview,
        quarantine::list,
        quarantine::release,
        usage::usage,
        audit::list,
        document,
        minion::ping,
        minion::version,
        minion::metrics,
        minion::list_all,
        minion::list_group,
        minion::create,
        minion::delete_group,
        minion::show,
        minion::update,
        minion::delete_one,
        minion::run_now,
        backfills::create,
        backfills::list,
        backfills::cancel,
        operations::operation,
        operations::list,
        cronjob::create,
        cronjob::list,
        cronjob::show,
        hrm::create,
        hrm::create_with_ignored_id,
        hrm::show,
        hrm::update_meta,
        hrm::delete,
        hrm::status,
    ),
    components(schemas(
        spot_shared::store::QuarantinedJob,
        resources::JobRequest,
        resources::FlexibleTimeWindow,
        resources::PauseRequest,
        backfills::BackfillRequest,
        spot_shared::store::Backfill,
        spot_shared::model::Pause,
        resources::RunnerRequest,
        resources::JobView,
        job_batch::BatchRequest,
        job_batch::BatchResponse,
        job_batch::BatchResult,
        simple::ScheduleRequest,
        spot_shared::model::Job,
        spot_shared::model::Run,
        spot_shared::model::Instance,
        spot_shared::model::RunState,
        spot_shared::model::Policies,
        spot_shared::model::RunOverrides,
        spot_shared::model::OnLastRun,
        spot_shared::model::RetryReason,
        spot_shared::model::NotifyTarget,
        spot_shared::model::AuditEntry,
        spot_shared::model::Change,
        spot_shared::model::NotifyEvent,
        spot_shared::model::NotifyFormat,
        spot_shared::model::NotificationAttempt,
        spot_shared::model::AttemptOutcome,
        spot_shared::messages::CallbackRequest,
        spot_shared::messages::RunSpec,
        minion::JobBody,
        minion::JobFields,
        operations::OperationRequest,
        operations::JobKey,
        cronjob::CreateRequest,
        hrm::TaskForm,
        hrm::MetaForm,
    )),
    modifiers(&ApiKeyScheme)
)]
pub struct ApiDoc;

/// Declares the `X-Auth-Token` header the annotated operations require.
struct ApiKeyScheme;

impl Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Auth-Token"))),
        );
    }
}

#[utoipa::path(get, path = "/openapi.json", tag = "operations", summary = "This document", responses((status = 200)))]
pub async fn document() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
