//! The OpenAPI document of the api, generated from the handlers' annotations and served at
//! `/openapi.json`.

use actix_web::HttpResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{callback, health, resources, simple};

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
        resources::list_jobs,
        resources::get_job,
        resources::replace_job,
        resources::delete_job,
        resources::enable_job,
        resources::disable_job,
        resources::run_job_now,
        resources::next_fires,
        resources::list_runs,
        resources::get_run,
        resources::run_logs,
        resources::get_instance,
    ),
    components(schemas(
        resources::JobRequest,
        resources::RunnerRequest,
        resources::JobView,
        simple::ScheduleRequest,
        spot_shared::model::Job,
        spot_shared::model::Run,
        spot_shared::model::Instance,
        spot_shared::model::RunState,
        spot_shared::model::Policies,
        spot_shared::messages::CallbackRequest,
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

pub async fn document() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
