//! How errors become HTTP responses: the status from the [`ErrorCode`], a JSON body that says what is
//! wrong and which field. Internal details are logged, not sent.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;
use spot_shared::{Error, ErrorCode};

/// The error type of every handler.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        ApiError(err)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.0.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let err = &self.0;
        let mut response = HttpResponse::build(self.status_code());
        if err.code == ErrorCode::Unavailable {
            // Dependencies come back within seconds: the services reconnect on their own.
            response.insert_header((actix_web::http::header::RETRY_AFTER, "1"));
        }
        if err.code == ErrorCode::TooManyRequests {
            response.insert_header((actix_web::http::header::RETRY_AFTER, "60"));
        }
        response.json(error_body(err))
    }
}

/// The JSON body of an error: its code, a message naming the field, the field. An internal error's
/// details go to the log under an id the body quotes; a dependency's are not sent either.
pub fn error_body(err: &Error) -> serde_json::Value {
    let mut error_id = None;
    let message = match err.code {
        ErrorCode::Internal => {
            // An error that will not clear by trying again: the caller gets an id to quote, the
            // log has the details under the same id.
            let id = spot_shared::ids::new_id();
            tracing::error!(error = %err, error_id = %id, "internal error");
            let message = format!("internal error (error id {id}); trying again will not help");
            error_id = Some(id);
            message
        }
        ErrorCode::Unavailable => {
            tracing::warn!(error = %err, "dependency unavailable");
            // Name the dependency (the store and broker errors start with it), not its details.
            let dependency = match err.message.split(':').next() {
                Some("redis") => "Redis",
                Some("rabbitmq") => "RabbitMQ",
                Some("docker") => "Docker",
                _ => "a backing service",
            };
            format!("{dependency} is unavailable; nothing was changed; try again shortly")
        }
        _ => err.message.clone(),
    };
    let mut body = json!({
        "status": "error",
        "error": err.code.as_str(),
        "message": match &err.field {
            Some(field) => format!("{field}: {message}"),
            None => message,
        },
        "field": err.field,
    });
    if let Some(id) = error_id {
        body["error_id"] = json!(id);
    }
    body
}

pub type ApiResult<T> = Result<T, ApiError>;
