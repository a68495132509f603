//! Array fires (`runner.array_size`): `GET /v1/runs/{id}/children` pages the copies of an array
//! fire's run, each index's latest attempt, in index order (the dashboard's grid reads it).

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use spot_shared::model::ArrayPart;
use spot_shared::Error;
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::routes::paging::Window;
use crate::routes::resources::load_run;
use crate::routes::Query;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/runs/{id}/children", web::get().to(children));
}

/// The most copies one page holds.
const MAX_PAGE: usize = 1_000;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ChildrenQuery {
    /// At most this many (1 to 1000, default 1000).
    limit: Option<usize>,
    /// The first index: the `next_offset` of the page before.
    offset: Option<usize>,
}

#[utoipa::path(get, path = "/v1/runs/{id}/children", tag = "jobs", summary = "The copies of an array fire's run, in index order: each index's latest attempt", security(("api_key" = [])), params(("id" = String, Path), ChildrenQuery), responses((status = 200, description = "`{children: [Run], array_size, next_offset}`"), (status = 400, description = "The run is not an array fire's own run"), (status = 404)))]
pub async fn children(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: Query<ChildrenQuery>,
) -> ApiResult<HttpResponse> {
    let run = load_run(&state, &caller, &path).await?;
    let Some(ArrayPart::Parent { array_size, .. }) = run.array else {
        return Err(Error::invalid(
            "id",
            format!("run {} is not an array fire's own run", run.id),
        )
        .into());
    };
    let window = Window::new(query.offset, query.limit, MAX_PAGE);
    let offset = u32::try_from(window.offset).unwrap_or(u32::MAX);
    let copies = state
        .store
        .array_copies(&run.job_id, &run.id, offset, window.limit as u32)
        .await?;
    let end = window.offset + window.limit;
    let next_offset = (end < array_size as usize).then_some(end);
    Ok(HttpResponse::Ok().json(json!({
        "children": copies,
        "array_size": array_size,
        "next_offset": next_offset,
    })))
}
