//! The api over HTTP: one request helper that sends the key and turns error bodies into [`CtlError`].

use reqwest::{Method, Response, StatusCode};
use serde_json::Value;

use crate::settings::Settings;

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

pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl ApiClient {
    pub fn new(settings: &Settings) -> CtlResult<ApiClient> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("spotctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| CtlError::Other(format!("http client: {err}")))?;
        Ok(ApiClient {
            http,
            base: settings.api_url.trim_end_matches('/').to_string(),
            key: settings.api_key.clone(),
        })
    }

    /// Sends a request to `path` (with its query) and returns the response if it succeeded.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Body>,
    ) -> CtlResult<Response> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(key) = &self.key {
            request = request.header("X-Auth-Token", key);
        }
        request = match body {
            Some(Body::Json(value)) => request.json(&value),
            None => request,
        };
        let response = request.send().await.map_err(|source| CtlError::Network {
            url: self.base.clone(),
            source,
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(error_of(response).await)
    }

    pub async fn json(&self, method: Method, path: &str, body: Option<Body>) -> CtlResult<Value> {
        let response = self.send(method, path, body).await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        response
            .json()
            .await
            .map_err(|err| CtlError::Other(format!("the api's answer is not JSON: {err}")))
    }

    pub async fn get(&self, path: &str) -> CtlResult<Value> {
        self.json(Method::GET, path, None).await
    }

    pub async fn text(&self, path: &str) -> CtlResult<String> {
        let response = self.send(Method::GET, path, None).await?;
        response
            .text()
            .await
            .map_err(|err| CtlError::Other(format!("reading the answer: {err}")))
    }
}

pub enum Body {
    Json(Value),
}

/// The api's error bodies: `{"field", "message"}` everywhere it names a field.
async fn error_of(response: Response) -> CtlError {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let message = body["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| text.trim().chars().take(300).collect());
    let field = body["field"].as_str().map(str::to_string);
    match status.as_u16() {
        400 | 413 | 422 => CtlError::Refused { field, message },
        401 | 403 => CtlError::Unauthorized(status),
        _ => CtlError::Api { status, message },
    }
}

/// One path segment, escaped (ids come from the user).
pub fn segment(text: &str) -> String {
    let mut url = url::Url::parse("http://segment/").expect("a constant URL parses");
    url.path_segments_mut()
        .expect("an http URL has a path")
        .push(text);
    url.path().trim_start_matches('/').to_string()
}
