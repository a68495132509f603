//! Request authentication: account keys in `X-Auth-Token`, run secrets in `X-Run-Secret`.
//!
//! Plain keys are checked at once. A bcrypt-hashed key never seen before is verified through the
//! [`BcryptGate`](crate::bcrypt_gate::BcryptGate), which bounds the work anonymous callers can cause;
//! authenticated requests with plain keys (or a bcrypt token already verified) never wait behind a
//! flood.

use actix_web::{web, FromRequest, HttpRequest};
use futures::future::LocalBoxFuture;
use spot_shared::auth::{Check, Principal};
use spot_shared::ids::secret_matches;
use spot_shared::messages::RUN_SECRET_HEADER;
use spot_shared::model::Run;
use spot_shared::{Error, ErrorCode};

use crate::audit::{Actor, Surface};
use crate::error::ApiError;
use crate::state::AppState;

pub const AUTH_HEADER: &str = "X-Auth-Token";

/// The authenticated account behind a request, and the surface it came through; extracting it
/// refuses unknown keys with 403.
pub struct Caller(pub Principal, pub Surface);

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Caller, ApiError>>;

    fn from_request(req: &HttpRequest, _payload: &mut actix_web::dev::Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = req
                .app_data::<web::Data<AppState>>()
                .ok_or_else(|| Error::internal("app state missing"))?;
            let surface = Surface::of_path(req.path());
            Ok(Caller(principal_of(&req, state).await?, surface))
        })
    }
}

/// The principal behind the request's `X-Auth-Token`: 403 for a missing or unknown key, 429 when
/// the address has had too many bcrypt tokens checked.
pub async fn principal_of(req: &HttpRequest, state: &AppState) -> Result<Principal, Error> {
    let token = req
        .headers()
        .get(AUTH_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let unknown = || {
        Error::new(
            ErrorCode::Unauthorized,
            format!("missing or unknown {AUTH_HEADER}"),
        )
    };
    match state.keyring.check(token) {
        Check::Known(principal) => Ok(principal),
        Check::Unknown => Err(unknown()),
        Check::NeedsBcrypt => {
            let address = req.peer_addr().map(|a| a.ip());
            state
                .bcrypt
                .verify(&state.keyring, token, address)
                .await?
                .ok_or_else(unknown)
        }
    }
}

impl Caller {
    /// Who is acting, for the audit log.
    pub fn actor(&self) -> Actor {
        Actor::new(&self.0, self.1)
    }

    /// Whether the caller presented an admin key.
    pub fn is_admin(&self) -> bool {
        self.0.admin
    }

    /// The account a request is about: the caller's own, or the one it names if it may act on it
    /// (an admin); another is answered 404, as one that does not exist.
    pub fn account_asked(&self, named: Option<&str>) -> Result<String, Error> {
        match named {
            Some(account) if self.owns(account) => Ok(account.to_string()),
            Some(_) => Err(Error::not_found("no such account")),
            None => Ok(self.0.account.clone()),
        }
    }

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
