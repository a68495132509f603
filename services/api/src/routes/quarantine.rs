//! `GET /v1/quarantine` and `POST /v1/quarantine/{id}/release` (admin keys): the jobs set aside
//! because their stored record cannot be read, with why, and putting one back on its schedule once
//! its record reads again. A quarantined job's account cannot be known from its record, so only an
//! admin sees them; `/metrics` and `/v1/overview` count them for everyone.

use actix_web::{web, HttpResponse};
use serde_json::json;
use spot_shared::store::QuarantinedJob;
use spot_shared::Error;

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/quarantine", web::get().to(list))
        .route("/v1/quarantine/{id}/release", web::post().to(release));
}

fn admin_only(caller: &Caller) -> Result<(), Error> {
    if caller.is_admin() {
        Ok(())
    } else {
        Err(Error::forbidden("the quarantine is for admin keys"))
    }
}

#[utoipa::path(get, path = "/v1/quarantine", tag = "operations", summary = "Jobs set aside because their stored record cannot be read (admin keys)", security(("api_key" = [])), responses((status = 200, description = "`{jobs: [{job_id, reason, at, timer_ms}]}`", body = [QuarantinedJob]), (status = 403)))]
pub async fn list(caller: Caller, state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    admin_only(&caller)?;
    let jobs = state.store.quarantined_jobs().await?;
    Ok(HttpResponse::Ok().json(json!({ "jobs": jobs })))
}

#[utoipa::path(post, path = "/v1/quarantine/{id}/release", tag = "operations", summary = "Put a quarantined job back on its schedule once its record reads (admin keys)", security(("api_key" = [])), params(("id" = String, Path)), responses((status = 200, description = "`{released: true}`"), (status = 403), (status = 404, description = "Not quarantined"), (status = 409, description = "Its record still cannot be read")))]
pub async fn release(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    admin_only(&caller)?;
    if !state.store.release_quarantined(&path).await? {
        return Err(Error::not_found(format!("job {} is not quarantined", path.as_str())).into());
    }
    Ok(HttpResponse::Ok().json(json!({ "released": true })))
}
