//! `GET /v1/audit?job=&from=&to=&limit=&offset=`: the account's audit log, newest first, paged
//! (`next_offset`). What is kept and how long: [`crate::audit`] and `[audit]` in the configuration.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use spot_shared::Error;
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::routes::paging::Window;
use crate::routes::Query;
use crate::state::AppState;

/// The most entries one page holds.
const AUDIT_PAGE: usize = 1000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this job's entries (a job deleted since included).
    job: Option<String>,
    /// Entries at or after this instant (RFC 3339; default: as far back as kept).
    from: Option<DateTime<Utc>>,
    /// Entries at or before this instant (RFC 3339; default: now).
    to: Option<DateTime<Utc>>,
    /// At most this many (1 to 1000, default 100).
    limit: Option<usize>,
    /// Skip this many, newest first: the `next_offset` of the page before.
    offset: Option<usize>,
    /// Admins: another account's log.
    account: Option<String>,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/audit", web::get().to(list));
}

#[utoipa::path(get, path = "/v1/audit", tag = "jobs", summary = "The account's audit log: every state-changing request on every surface, newest first", security(("api_key" = [])), params(AuditQuery), responses((status = 200, description = "`{entries: [AuditEntry], next_offset}`"), (status = 400, description = "A bad filter, naming it"), (status = 403)))]
pub async fn list(
    caller: Caller,
    state: web::Data<AppState>,
    query: Query<AuditQuery>,
) -> ApiResult<HttpResponse> {
    let account = caller.account_asked(query.account.as_deref())?;
    if let Some(job) = query.job.as_deref() {
        if !spot_shared::ids::is_id(job) {
            return Err(Error::invalid("job", "is not a job id").into());
        }
    }
    let to = query.to.unwrap_or_else(Utc::now);
    let from = query
        .from
        .unwrap_or_else(|| to - state.settings.audit.retention());
    if to < from {
        return Err(Error::invalid("to", "must not be before from").into());
    }
    let window = Window::new(query.offset, Some(query.limit.unwrap_or(100)), AUDIT_PAGE);
    let entries = state
        .store
        .audit_page(
            &account,
            query.job.as_deref(),
            (from, to),
            window.offset,
            window.to_read(),
        )
        .await?;
    let (entries, next) = window.cut(entries);
    Ok(HttpResponse::Ok().json(json!({ "entries": entries, "next_offset": next })))
}
