//! The api over HTTP: one request helper that sends the key and turns error bodies into [`CtlError`].
//!
//! Every POST carries an `Idempotency-Key` of its own, and is sent again with the same key when its
//! answer was lost (the link dropped, the api restarting: no answer, 502, 503, 504) or the first
//! sending is still in flight (409 with `Retry-After`): the api answers a repeat with the first
//! answer, so a retried `schedule` or `run` never makes a second job or run.

use std::time::Duration;

use rand::distr::{Alphanumeric, SampleString};
use reqwest::{Method, Response, StatusCode};
use serde_json::Value;

use crate::settings::Settings;

pub use crate::error::{CtlError, CtlResult};

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

    /// Sends a request to `path` (with its query) and returns the response if it succeeded. A POST
    /// is sent with an idempotency key and sent again while its answer is lost (see the module's doc).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Body>,
    ) -> CtlResult<Response> {
        let idempotency_key =
            (method == Method::POST).then(|| Alphanumeric.sample_string(&mut rand::rng(), 32));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = idempotency_key.is_none() || attempt >= POST_ATTEMPTS;
            match self
                .send_once(&method, path, body.as_ref(), idempotency_key.as_deref())
                .await
            {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) if !last && answer_lost(&response) => {}
                Ok(response) => return Err(error_of(response).await),
                Err(err) if !last => note_resend(&err),
                Err(err) => return Err(err),
            }
            tokio::time::sleep(retry_pause(attempt)).await;
        }
    }

    async fn send_once(
        &self,
        method: &Method,
        path: &str,
        body: Option<&Body>,
        idempotency_key: Option<&str>,
    ) -> CtlResult<Response> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(key) = &self.key {
            request = request.header("X-Auth-Token", key);
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        request = match body {
            Some(Body::Json(value)) => request.json(value),
            None => request,
        };
        request.send().await.map_err(|source| CtlError::Network {
            url: self.base.clone(),
            source,
        })
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

/// Sendings of one POST at most: the pauses between them add up to about 15 s, longer than an api
/// takes to restart.
const POST_ATTEMPTS: u32 = 6;

/// The pause before sending again: 0.5 s, doubling.
fn retry_pause(attempt: u32) -> Duration {
    Duration::from_millis(500 << attempt.min(5).saturating_sub(1))
}

/// Whether an answer says the work's own answer is not (yet) to be had: a gateway or the api
/// itself away (502, 503, 504), or the first sending still in flight (the idempotency check's 409,
/// which comes with `Retry-After`; other conflicts do not).
fn answer_lost(response: &Response) -> bool {
    match response.status().as_u16() {
        502..=504 => true,
        409 => response
            .headers()
            .contains_key(reqwest::header::RETRY_AFTER),
        _ => false,
    }
}

/// A sending that got no answer is tried again; said on stderr so a slow command is not silent.
fn note_resend(err: &CtlError) {
    eprintln!("spotctl: {err}; sending again with the same idempotency key");
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
