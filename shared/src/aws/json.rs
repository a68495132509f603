//! AWS's JSON 1.1 protocol (SSM's and Secrets Manager's API): an operation named in `X-Amz-Target`,
//! its input as a JSON body, signed with SigV4, answered in JSON. Retried as the Query protocol's
//! calls are ([`super::query`]).

use std::sync::Arc;

use serde_json::Value;

use super::credentials::CredentialChain;
use super::query::{with_retries, QueryError};
use super::transport::Transport;

/// A client of one JSON service at one endpoint, in one region; clones share it.
#[derive(Clone)]
pub struct JsonClient {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Transport,
    /// What operations are prefixed with in `X-Amz-Target` (`AmazonSSM`, `secretsmanager`).
    target_prefix: &'static str,
}

impl JsonClient {
    /// A client of `service` (its signing name and its target prefix) in `region`, at `endpoint`
    /// (empty: the service's standard endpoint).
    pub fn new(
        endpoint: &str,
        region: &str,
        (service, target_prefix): (&'static str, &'static str),
        credentials: Arc<CredentialChain>,
        max_attempts: u32,
    ) -> JsonClient {
        let endpoint = match endpoint {
            "" => format!("https://{service}.{region}.amazonaws.com/"),
            given => given.to_string(),
        };
        let transport = Transport::new(endpoint, region, service, credentials, max_attempts);
        JsonClient {
            inner: Arc::new(Inner {
                transport,
                target_prefix,
            }),
        }
    }

    /// Calls `operation` with `input`, retrying what may be retried; the answer's JSON.
    pub async fn call(&self, operation: &str, input: &Value) -> Result<Value, QueryError> {
        let inner = &self.inner;
        with_retries(inner.transport.max_attempts, operation, || {
            inner.call_once(operation, input)
        })
        .await
    }
}

impl Inner {
    async fn call_once(&self, operation: &str, input: &Value) -> Result<Value, QueryError> {
        let headers = [
            ("content-type", "application/x-amz-json-1.1".to_string()),
            (
                "x-amz-target",
                format!("{}.{operation}", self.target_prefix),
            ),
        ];
        let body = serde_json::to_vec(input).unwrap_or_default();
        let (status, text) = self.transport.post(&headers, body).await?;
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(answer);
        }
        Err(service_error(status, &answer))
    }
}

/// The error an answer carries: `{"__type": "…#ParameterNotFound", "message": "…"}`.
fn service_error(status: u16, answer: &Value) -> QueryError {
    let kind = answer["__type"].as_str().unwrap_or_default();
    let code = kind.rsplit('#').next().unwrap_or_default();
    let message = answer["message"]
        .as_str()
        .or_else(|| answer["Message"].as_str())
        .unwrap_or_default();
    QueryError::Service {
        status,
        code: if code.is_empty() {
            format!("HTTP{status}")
        } else {
            code.to_string()
        },
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_answer_names_its_code_without_the_namespace() {
        let answer =
            serde_json::json!({"__type": "com.amazonaws.ssm#ParameterNotFound", "message": "no"});
        let error = service_error(400, &answer);
        assert_eq!(error.code(), Some("ParameterNotFound"));
        assert!(!error.is_retryable());
        assert_eq!(service_error(503, &Value::Null).code(), Some("HTTP503"));
        assert!(service_error(503, &Value::Null).is_retryable());
    }
}
