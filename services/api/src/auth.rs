//! Request authentication: account keys in `X-Auth-Token`, run secrets in `X-Run-Secret`.

use std::future::{ready, Ready};

use actix_web::{web, FromRequest, HttpRequest};
use spot_shared::auth::Principal;
use spot_shared::ids::secret_matches;
use spot_shared::messages::RUN_SECRET_HEADER;
use spot_shared::model::Run;
use spot_shared::Error;

use crate::error::ApiError;
use crate::state::AppState;

pub const AUTH_HEADER: &str = "X-Auth-Token";

/// The authenticated account behind a request; extracting it refuses unknown keys with 403.
pub struct Caller(pub Principal);

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Caller, ApiError>>;

    fn from_request(req: &HttpRequest, _payload: &mut actix_web::dev::Payload) -> Self::Future {
        ready(authenticate(req))
    }
}

fn authenticate(req: &HttpRequest) -> Result<Caller, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| Error::internal("app state missing"))?;
    let token = req
        .headers()
        .get(AUTH_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    state
        .keyring
        .authenticate(token)
        .map(Caller)
        .ok_or_else(|| {
            ApiError(Error::new(
                spot_shared::ErrorCode::Unauthorized,
                format!("missing or unknown {AUTH_HEADER}"),
            ))
        })
}

impl Caller {
    /// Whether this caller may see and touch what belongs to `account`.
    pub fn owns(&self, account: &str) -> bool {
        self.0.admin || self.0.account == account
    }
}

/// The run secret a request presents, or empty.
pub fn presented_secret(req: &HttpRequest) -> &str {
    req.headers()
        .get(RUN_SECRET_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Loads a run and checks the request carries its secret. Unknown runs and wrong secrets get the same
/// 403, so the answer reveals nothing about which runs exist.
pub async fn authorize_run(
    state: &AppState,
    req: &HttpRequest,
    run_id: &str,
) -> Result<Run, Error> {
    let refused = || Error::forbidden("the run's secret is required and must match");
    let run = state.store.get_run(run_id).await?.ok_or_else(refused)?;
    if run.secret_hash.is_empty() || !secret_matches(presented_secret(req), &run.secret_hash) {
        return Err(refused());
    }
    Ok(run)
}
