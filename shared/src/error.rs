//! One error type for the whole system. Its [`ErrorCode`] decides the HTTP status an api answers with and
//! whether a consumer should retry a message (requeue) or give up on it (ack or dead-letter).

use std::fmt;

/// What kind of failure happened, independent of where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The input is malformed or violates a rule; sending it again will not help.
    InvalidInput,
    /// No or an unknown credential.
    Unauthorized,
    /// A valid credential that may not touch this resource.
    Forbidden,
    NotFound,
    /// The resource is not in a state that allows the operation (an illegal transition, a duplicate).
    Conflict,
    PayloadTooLarge,
    /// The caller asked for more than it may now (a throttle or a quota); it may ask again later.
    TooManyRequests,
    /// A dependency (Redis, RabbitMQ, Docker, the cloud) failed or timed out; trying again may succeed.
    Unavailable,
    /// A bug or an unexpected state; retrying will not help.
    Internal,
}

impl ErrorCode {
    /// The HTTP status code the api answers with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidInput => 400,
            ErrorCode::Unauthorized => 403,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }

    /// Whether the same operation may succeed later. Consumers requeue retryable failures and
    /// dead-letter the others.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorCode::Unavailable)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// An error with its code, a message fit for the caller, and the input field it concerns, if any.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<String>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: {}", field, self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            field: None,
        }
    }

    /// A validation error about one input field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error {
            code: ErrorCode::InvalidInput,
            message: message.into(),
            field: Some(field.into()),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::NotFound, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Forbidden, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Conflict, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Unavailable, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Internal, message)
    }

    pub fn is_retryable(&self) -> bool {
        self.code.is_retryable()
    }
}

impl From<redis::RedisError> for Error {
    /// Transient (the link, a timeout, LOADING, TRYAGAIN, CLUSTERDOWN, MASTERDOWN, READONLY, BUSY,
    /// OOM) is `Unavailable`, to be retried; anything else (a script error, WRONGTYPE, NOPERM, a
    /// reply of the wrong shape) will fail the same way every time: `Internal`, so that a consumer
    /// dead-letters the message at once and the api answers 500 instead of "try again".
    fn from(err: redis::RedisError) -> Self {
        if redis_error_is_transient(&err) {
            Error::unavailable(format!("redis: {err}"))
        } else {
            Error::internal(format!("redis: {err}"))
        }
    }
}

/// Whether the same Redis call may succeed later (see `From<RedisError>`). Permanent only when the
/// server answered with an error it will give again (redis-rs's retry advice for server errors, but
/// BUSY, OOM and a script error caused by a failover are transient) or the reply had the wrong shape
/// for what was asked; anything about the link or the cluster's state is transient, since a failover
/// shows every kind of those for a moment.
fn redis_error_is_transient(err: &redis::RedisError) -> bool {
    use redis::ErrorKind;
    /// Server error codes that pass: a long script, memory full, and a failover's moments.
    const PASSING: [&str; 9] = [
        "BUSY",
        "OOM",
        "READONLY",
        "LOADING",
        "MASTERDOWN",
        "CLUSTERDOWN",
        "TRYAGAIN",
        "MOVED",
        "ASK",
    ];
    let passing = |code: &str, details: Option<&str>| {
        PASSING.contains(&code)
            || details.is_some_and(|text| PASSING.iter().any(|passing| text.contains(passing)))
    };
    match err.kind() {
        ErrorKind::Server(_) | ErrorKind::Extension => {
            if !matches!(err.retry_method(), redis::RetryMethod::NoRetry) {
                return true;
            }
            // A transaction or pipeline aborted by its commands' errors (MOVED during a failover,
            // say) passes if any of them does; a script error caused by a failover names its cause.
            match err.clone().into_server_errors() {
                Some(errors) => errors
                    .iter()
                    .any(|(_, server)| passing(server.code(), server.details())),
                None => passing(err.code().unwrap_or(""), err.detail()),
            }
        }
        ErrorKind::UnexpectedReturnType => false,
        _ => true,
    }
}

impl From<lapin::Error> for Error {
    fn from(err: lapin::Error) -> Self {
        Error::unavailable(format!("rabbitmq: {err}"))
    }
}

impl From<bollard::errors::Error> for Error {
    fn from(err: bollard::errors::Error) -> Self {
        Error::unavailable(format!("docker: {err}"))
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Error::internal(format!("json: {err}"))
    }
}

/// An error with its causes, `: `-joined: reqwest's own message hides why a request failed ("error
/// sending request" over "connection refused" or a TLS or DNS failure's reason).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_is_retryable() {
        assert!(ErrorCode::Unavailable.is_retryable());
        assert!(!ErrorCode::InvalidInput.is_retryable());
        assert!(!ErrorCode::Internal.is_retryable());
        assert_eq!(ErrorCode::NotFound.http_status(), 404);
    }

    #[test]
    fn redis_errors_are_retried_only_when_they_may_clear() {
        use redis::{ErrorKind, RedisError};
        let io = |kind| RedisError::from(std::io::Error::new(kind, "link"));
        assert!(Error::from(io(std::io::ErrorKind::ConnectionReset)).is_retryable());
        assert!(Error::from(io(std::io::ErrorKind::TimedOut)).is_retryable());
        let wrong_shape = RedisError::from((ErrorKind::UnexpectedReturnType, "not an integer"));
        assert_eq!(Error::from(wrong_shape).code, ErrorCode::Internal);
        // What a cluster's failover shows for a moment is never taken as permanent.
        let dropped = RedisError::from((ErrorKind::Io, "connection dropped"));
        assert!(Error::from(dropped).is_retryable());
        let client = RedisError::from((ErrorKind::Client, "no connection to the slot's node"));
        assert!(Error::from(client).is_retryable());
    }

    #[test]
    fn display_names_the_field() {
        let err = Error::invalid("docker_image", "must not be empty");
        assert_eq!(err.to_string(), "docker_image: must not be empty");
    }
}
