//! `Idempotency-Key` on every POST of every surface: a client whose answer was lost (a dropped
//! link, an api killed mid-request) sends the same request with the same key again and gets the
//! first answer, status and body, instead of a second job or a second run.
//!
//! [`idempotency`] is a middleware in front of every route: it authenticates the caller (keys are
//! per account), fingerprints the request (method, path, query, body), and asks the store
//! ([`Store::begin_idempotent`](spot_shared::store::Store::begin_idempotent)):
//! - a new key runs the request and keeps its answer for `api.idempotency_ttl_secs` (a 5xx is not
//!   kept: trying again may help);
//! - a key whose answer is kept gets it again, with `Idempotent-Replayed: true`;
//! - a key used with another request is a 422 naming the header; one still in flight is a 409 with
//!   `Retry-After`.
//!
//! A request in flight holds its key for `api.idempotency_lease_secs` at most, so an api that died
//! mid-request does not hold it for a day. Creates are safe even past that: [`IdempotencyKey`] gives
//! their job an id derived from the account and the key, so a create run twice names one job.

use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use futures::future::{ready, Ready};
use futures::StreamExt;
use spot_shared::store::{Begun, IdempotentRequest, SavedAnswer};
use spot_shared::{ids, Error};

use crate::auth::principal_of;
use crate::error::ApiError;
use crate::state::AppState;

pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// Marks an answer sent again.
const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Keys are opaque to us; a UUID or a hash fits well within this.
const MAX_KEY_LEN: usize = 255;

/// The largest body the middleware reads to fingerprint a request: the largest any route takes
/// (`cronjob`'s uploads, the batch route). The route's own, smaller limit applies after it, as
/// without a key; the app-wide `PayloadConfig` cannot be used here, as it would refuse the routes
/// that allow more.
const MAX_FINGERPRINTED_BODY: usize = 8 * 1024 * 1024;

/// The request's body, refused with 413 past [`MAX_FINGERPRINTED_BODY`].
async fn read_body(mut payload: Payload) -> Result<web::Bytes, Error> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|err| Error::invalid("body", err.to_string()))?;
        if body.len() + chunk.len() > MAX_FINGERPRINTED_BODY {
            return Err(Error::new(
                spot_shared::ErrorCode::PayloadTooLarge,
                format!("the body is over {MAX_FINGERPRINTED_BODY} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The middleware (see the module's doc).
pub async fn idempotency(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let key = match key_of(req.request()) {
        Some(key) if applies(&req) => key,
        _ => return Ok(next.call(req).await?.map_into_boxed_body()),
    };
    let key = match key {
        Ok(key) => key,
        Err(err) => return Ok(req.into_response(ApiError(err).error_response())),
    };
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    // An unknown key is the route's to refuse (403), as it would without the header.
    let Ok(principal) = principal_of(req.request(), &state).await else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let body = match read_body(req.take_payload()).await {
        Ok(body) => body,
        Err(err) => return Ok(req.into_response(ApiError(err).error_response())),
    };
    req.set_payload(Payload::from(body.clone()));
    let request = IdempotentRequest::new(
        &principal.account,
        &key,
        req.method().as_str(),
        req.path(),
        req.query_string(),
        &body,
    );
    let settings = &state.settings.api;
    let lease = Duration::from_secs(settings.idempotency_lease_secs.max(1));
    let refusal = match state.store.begin_idempotent(&request, lease).await {
        Err(err) => Some(ApiError(err).error_response()),
        Ok(Begun::New) => None,
        Ok(Begun::Mismatch) => {
            let mut response = ApiError(Error::invalid(
                IDEMPOTENCY_HEADER,
                "this key was used with another request (method, path or body); use a new key",
            ))
            .error_response();
            *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            Some(response)
        }
        Ok(Begun::InFlight) => {
            let mut response = ApiError(Error::conflict(format!(
                "{IDEMPOTENCY_HEADER}: the first request with this key is still in flight; try again shortly"
            )))
            .error_response();
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            Some(response)
        }
        Ok(Begun::Done(saved)) => Some(replay(&saved)),
    };
    if let Some(response) = refusal {
        return Ok(req.into_response(response));
    }

    let response = match next.call(req).await {
        Ok(response) => response,
        Err(err) => {
            forget(&state, &request).await;
            return Err(err);
        }
    };
    if response.status().is_server_error() {
        forget(&state, &request).await;
        return Ok(response.map_into_boxed_body());
    }
    let (http_req, response) = response.into_parts();
    let (response, body) = response.into_parts();
    let body = match actix_web::body::to_bytes(body).await {
        Ok(body) => body,
        Err(_) => {
            forget(&state, &request).await;
            return Err(actix_web::error::ErrorInternalServerError(
                "the answer could not be read",
            ));
        }
    };
    let saved = SavedAnswer {
        status: response.status().as_u16(),
        content_type: response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        body: body.to_vec(),
    };
    let ttl = Duration::from_secs(settings.idempotency_ttl_secs.max(1));
    if let Err(err) = state.store.finish_idempotent(&request, &saved, ttl).await {
        // The work is done and answered; a retry within the lease gets a 409, after it the create
        // finds its job by its derived id.
        tracing::warn!(error = %err, "idempotent answer not kept");
    }
    Ok(ServiceResponse::new(
        http_req,
        response.set_body(BoxBody::new(body)),
    ))
}

/// The header's key: `None` without one, an error for one out of shape.
fn key_of(req: &HttpRequest) -> Option<Result<String, Error>> {
    let value = req.headers().get(IDEMPOTENCY_HEADER)?;
    let invalid = || {
        Error::invalid(
            IDEMPOTENCY_HEADER,
            format!("must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
        )
    };
    Some(match value.to_str() {
        Ok(key)
            if (1..=MAX_KEY_LEN).contains(&key.len())
                && key.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(key.to_string())
        }
        _ => Err(invalid()),
    })
}

/// POSTs of callers with account keys; agents' calls carry a run secret and are idempotent anyway.
fn applies(req: &ServiceRequest) -> bool {
    req.method() == Method::POST && !req.path().starts_with("/agent/") && req.path() != "/callback"
}

fn replay(saved: &SavedAnswer) -> HttpResponse {
    let status = StatusCode::from_u16(saved.status).unwrap_or(StatusCode::OK);
    let mut response = HttpResponse::build(status);
    if let Ok(content_type) = HeaderValue::from_str(&saved.content_type) {
        if !saved.content_type.is_empty() {
            response.insert_header((CONTENT_TYPE, content_type));
        }
    }
    response.insert_header((
        HeaderName::from_static(REPLAYED_HEADER),
        HeaderValue::from_static("true"),
    ));
    response.body(saved.body.clone())
}

async fn forget(state: &AppState, request: &IdempotentRequest) {
    if let Err(err) = state.store.abandon_idempotent(request).await {
        tracing::warn!(error = %err, "idempotency key not let go of; it expires with its lease");
    }
}

/// The request's `Idempotency-Key`, for handlers that create a job: [`IdempotencyKey::job_id`] is
/// the id the job gets, derived from the account and the key, so that the same create run twice
/// (its answer lost past the lease) names the job it made the first time.
pub struct IdempotencyKey(Option<String>);

impl IdempotencyKey {
    /// The request's key, if it carried a valid one (the middleware refused an invalid one).
    pub fn of(req: &HttpRequest) -> IdempotencyKey {
        IdempotencyKey(key_of(req).and_then(|key| key.ok()))
    }

    pub fn key(&self) -> Option<&str> {
        self.0.as_deref()
    }

    pub fn job_id(&self, account: &str, route: &str) -> Option<String> {
        let key = self.0.as_deref()?;
        Some(ids::derived_id(&["job", account, route, key]))
    }
}

impl FromRequest for IdempotencyKey {
    type Error = ApiError;
    type Future = Ready<Result<IdempotencyKey, ApiError>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(match key_of(req) {
            None => Ok(IdempotencyKey(None)),
            Some(Ok(key)) => Ok(IdempotencyKey(Some(key))),
            Some(Err(err)) => Err(ApiError(err)),
        })
    }
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    #[test]
    fn keys_out_of_shape_are_refused() {
        let key = |value: &str| {
            key_of(
                &TestRequest::default()
                    .insert_header((IDEMPOTENCY_HEADER, value))
                    .to_http_request(),
            )
        };
        assert_eq!(key("abc-123").unwrap().unwrap(), "abc-123");
        assert!(key("has space").unwrap().is_err());
        assert!(key(&"x".repeat(MAX_KEY_LEN + 1)).unwrap().is_err());
        assert!(key_of(&TestRequest::default().to_http_request()).is_none());
    }

    #[test]
    fn a_job_id_is_per_account_route_and_key() {
        let key = IdempotencyKey(Some("k1".into()));
        let id = key.job_id("acme", "/v1/jobs").unwrap();
        assert_eq!(Some(id.clone()), key.job_id("acme", "/v1/jobs"));
        assert_ne!(Some(id.clone()), key.job_id("globex", "/v1/jobs"));
        assert_ne!(Some(id), key.job_id("acme", "/schedule"));
        assert_eq!(IdempotencyKey(None).job_id("acme", "/v1/jobs"), None);
    }
}
