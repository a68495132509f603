//! Request authentication: account keys in `X-Auth-Token`, run secrets in `X-Run-Secret`.
//!
//! Plain keys are checked at once. A bcrypt-hashed key never seen before costs tens of milliseconds of
//! CPU per configured key, and anyone can send one, so [`BcryptGate`] bounds that work: it runs on the
//! blocking pool, never on an actix worker thread, `auth.bcrypt_concurrency` at a time, and a client
//! address whose tokens failed `auth.bcrypt_failures_per_minute` times gets 429 without more being
//! tried until its budget refills. Authenticated requests with plain keys (or a bcrypt token already
//! verified) never wait behind a flood.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, FromRequest, HttpRequest};
use futures::future::LocalBoxFuture;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use spot_shared::auth::{Check, Keyring, Principal};
use spot_shared::config::AuthSettings;
use spot_shared::ids::secret_matches;
use spot_shared::messages::RUN_SECRET_HEADER;
use spot_shared::model::Run;
use spot_shared::{Error, ErrorCode};
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::state::AppState;

pub const AUTH_HEADER: &str = "X-Auth-Token";

/// The authenticated account behind a request; extracting it refuses unknown keys with 403.
pub struct Caller(pub Principal);

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Caller, ApiError>>;

    fn from_request(req: &HttpRequest, _payload: &mut actix_web::dev::Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = req
                .app_data::<web::Data<AppState>>()
                .ok_or_else(|| Error::internal("app state missing"))?;
            Ok(Caller(principal_of(&req, state).await?))
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

/// Bounds the bcrypt work anonymous callers can cause (see the module's doc).
pub struct BcryptGate {
    permits: Semaphore,
    /// Failed verifications per address.
    failures: DefaultKeyedRateLimiter<IpAddr>,
    /// Addresses out of failures, and until when.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

/// Addresses remembered as blocked at most; past it, the expired ones are forgotten.
const BLOCKED_ADDRESSES: usize = 10_000;

/// How long a verification waits for its turn before the caller is told to come back.
const BCRYPT_QUEUE_WAIT: Duration = Duration::from_secs(2);

impl BcryptGate {
    pub fn new(settings: &AuthSettings) -> BcryptGate {
        let per_minute =
            NonZeroU32::new(settings.bcrypt_failures_per_minute).unwrap_or(NonZeroU32::MIN);
        BcryptGate {
            permits: Semaphore::new(settings.bcrypt_concurrency.max(1)),
            failures: RateLimiter::keyed(Quota::per_minute(per_minute)),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    fn is_blocked(&self, address: IpAddr) -> bool {
        let Ok(blocked) = self.blocked.lock() else {
            return false;
        };
        blocked
            .get(&address)
            .is_some_and(|until| *until > Instant::now())
    }

    /// Counts a failure against the address; out of failures, it is blocked until one refills.
    fn note_failure(&self, address: IpAddr) {
        let Err(not_until) = self.failures.check_key(&address) else {
            return;
        };
        let until = Instant::now() + not_until.wait_time_from(DefaultClock::default().now());
        if let Ok(mut blocked) = self.blocked.lock() {
            if blocked.len() >= BLOCKED_ADDRESSES {
                let now = Instant::now();
                blocked.retain(|_, until| *until > now);
            }
            blocked.insert(address, until);
        }
    }

    /// Verifies a bcrypt token on the blocking pool, if the address may have one checked now.
    pub async fn verify(
        &self,
        keyring: &Arc<Keyring>,
        token: &str,
        address: Option<IpAddr>,
    ) -> Result<Option<Principal>, Error> {
        let throttled = || {
            Error::new(
                ErrorCode::TooManyRequests,
                "too many bcrypt-hashed keys failed from this address; try again in a minute",
            )
        };
        let address = address.unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
        if self.is_blocked(address) {
            return Err(throttled());
        }
        let _permit = tokio::time::timeout(BCRYPT_QUEUE_WAIT, self.permits.acquire())
            .await
            .map_err(|_| throttled())?
            .map_err(|_| Error::internal("bcrypt gate closed"))?;
        let keyring = keyring.clone();
        let token = token.to_string();
        let found = tokio::task::spawn_blocking(move || keyring.verify_bcrypt(&token))
            .await
            .map_err(|e| Error::internal(format!("bcrypt verification failed: {e}")))?;
        if found.is_none() {
            self.note_failure(address);
        }
        Ok(found)
    }
}

impl Caller {
    /// Whether the caller presented an admin key.
    pub fn is_admin(&self) -> bool {
        self.0.admin
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
