//! `GET /v1/usage?from=&to=`: what the account's instances cost over some days (UTC, both
//! inclusive; this month so far by default), by group and job, with the month's budget and what is
//! left of it. Sums come from the counters the reaper adds to once per terminated instance.

use actix_web::{web, HttpResponse};
use chrono::{Datelike, NaiveDate, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use spot_shared::pricing::usd;
use spot_shared::store::UsageRow;
use spot_shared::Error;
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::routes::Query;
use crate::state::AppState;

/// The longest range one report covers.
const MAX_DAYS: i64 = 366;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// First day, `YYYY-MM-DD` (default: the first of this month).
    from: Option<String>,
    /// Last day, `YYYY-MM-DD` (default: today).
    to: Option<String>,
    /// Admins: another account's report.
    account: Option<String>,
}

fn day(field: &str, text: Option<&str>, default: NaiveDate) -> Result<NaiveDate, Error> {
    match text {
        None => Ok(default),
        Some(text) => NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .map_err(|_| Error::invalid(field, "must be a day, YYYY-MM-DD")),
    }
}

#[utoipa::path(get, path = "/v1/usage", tag = "jobs", summary = "What the account's instances cost over some days, by group and job, and its budget left", security(("api_key" = [])), params(UsageQuery), responses((status = 200, description = "`{from, to, account, usd, instance_seconds, runs, budget_usd, month_spent_usd, budget_left_usd, groups: [{group, usd, instance_seconds, runs, jobs: [{job_id, ...}]}]}`"), (status = 400), (status = 403)))]
pub async fn usage(
    caller: Caller,
    state: web::Data<AppState>,
    query: Query<UsageQuery>,
) -> ApiResult<HttpResponse> {
    let account = caller.account_asked(query.account.as_deref())?;
    let today = Utc::now().date_naive();
    let first_of_month = today.with_day(1).unwrap_or(today);
    let from = day("from", query.from.as_deref(), first_of_month)?;
    let to = day("to", query.to.as_deref(), today)?;
    if to < from {
        return Err(Error::invalid("to", "must not be before from").into());
    }
    if (to - from).num_days() >= MAX_DAYS {
        return Err(
            Error::invalid("to", format!("a report covers {MAX_DAYS} days at most")).into(),
        );
    }
    let rows = state.store.usage(from, to, Some(&account)).await?;
    let spent = usd(state.store.month_spend(&account, Utc::now()).await?);
    let budget = state.settings.quotas.monthly_budget_usd(&account);
    let mut report = totals(&rows);
    report["from"] = json!(from);
    report["to"] = json!(to);
    report["account"] = json!(account);
    report["budget_usd"] = json!(budget);
    report["month_spent_usd"] = json!(spent);
    report["budget_left_usd"] = json!(budget.map(|b| (b - spent).max(0.0)));
    report["groups"] = json!(groups(&rows));
    Ok(HttpResponse::Ok().json(report))
}

/// The sums of some rows.
fn totals<'a>(rows: impl IntoIterator<Item = &'a UsageRow>) -> Value {
    let (mut nano, mut secs, mut runs) = (0u64, 0u64, 0u64);
    for row in rows {
        nano += row.nano_usd;
        secs += row.secs;
        runs += row.runs;
    }
    json!({ "usd": usd(nano), "instance_seconds": secs, "runs": runs })
}

/// The rows by group, each with its jobs (rows come sorted by account, group, job).
fn groups(rows: &[UsageRow]) -> Vec<Value> {
    let mut groups: Vec<Value> = Vec::new();
    for chunk in rows.chunk_by(|a, b| a.group == b.group) {
        let mut group = totals(chunk);
        group["group"] = json!(chunk[0].group);
        group["jobs"] = json!(chunk
            .iter()
            .map(|row| {
                let mut job = totals([row]);
                job["job_id"] = json!(row.job_id);
                job
            })
            .collect::<Vec<_>>());
        groups.push(group);
    }
    groups
}
