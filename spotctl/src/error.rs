//! What can go wrong in a command, and the exit code each gives.

use reqwest::StatusCode;

/// What went wrong, and so the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The api refused the input (400, 413, 422): which field, and why.
    #[error("{}", refused(.field, .message))]
    Refused {
        field: Option<String>,
        message: String,
    },
    #[error("the api refused the key ({0}): set SPOT_API_KEY or --api-key")]
    Unauthorized(StatusCode),
    #[error("{message} ({status})")]
    Api { status: StatusCode, message: String },
    #[error("cannot reach the api at {url}: {source}")]
    Network {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Other(String),
}

fn refused(field: &Option<String>, message: &str) -> String {
    match field {
        // The api's message already starts with the field's name.
        Some(field) if !message.starts_with(field.as_str()) => format!("{field}: {message}"),
        _ => message.to_string(),
    }
}

impl CtlError {
    /// The process's exit code for this error (see `spotctl --help`).
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Refused { .. } | CtlError::Usage(_) => 2,
            CtlError::Unauthorized(_) => 3,
            CtlError::Api { .. } | CtlError::Network { .. } | CtlError::Other(_) => 1,
        }
    }
}

pub type CtlResult<T> = Result<T, CtlError>;
