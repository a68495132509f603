//! AWS's Query protocol (EC2's API): an action and its parameters as a form, signed with SigV4,
//! answered in XML. Throttling, 5xx answers and connections that never opened are retried with
//! exponential backoff and jitter; a call that was sent but not answered is not (it may have taken
//! effect: the caller decides, as a launch does by looking for its instance).

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use super::credentials::CredentialChain;
use super::transport::Transport;
use super::xml::{self, Element};
use crate::error::{Error, ErrorCode};

/// An action's parameters, in the flattened form the Query protocol takes (`Filter.1.Name`).
#[derive(Debug, Clone, Default)]
pub struct Params {
    pairs: Vec<(String, String)>,
    filters: usize,
}

impl Params {
    pub fn new() -> Params {
        Params::default()
    }

    pub fn set(mut self, name: impl Into<String>, value: impl Into<String>) -> Params {
        self.pairs.push((name.into(), value.into()));
        self
    }

    /// `name` if a value is given.
    pub fn set_some(self, name: impl Into<String>, value: Option<impl Into<String>>) -> Params {
        match value {
            Some(value) => self.set(name, value),
            None => self,
        }
    }

    /// A list: `prefix.1`, `prefix.2`, …
    pub fn list<S: AsRef<str>>(
        mut self,
        prefix: &str,
        values: impl IntoIterator<Item = S>,
    ) -> Params {
        for (n, value) in values.into_iter().enumerate() {
            self.pairs
                .push((format!("{prefix}.{}", n + 1), value.as_ref().to_string()));
        }
        self
    }

    /// One more `Filter.N` of a Describe call: `name` matching any of `values`.
    pub fn filter<S: AsRef<str>>(
        mut self,
        name: &str,
        values: impl IntoIterator<Item = S>,
    ) -> Params {
        self.filters += 1;
        let prefix = format!("Filter.{}", self.filters);
        self = self.set(format!("{prefix}.Name"), name);
        self.list(&format!("{prefix}.Value"), values)
    }

    /// Key/value tags under `prefix` (`prefix.Tag.1.Key`, `prefix.Tag.1.Value`, …).
    pub fn tags<K: AsRef<str>, V: AsRef<str>>(
        mut self,
        prefix: &str,
        tags: impl IntoIterator<Item = (K, V)>,
    ) -> Params {
        for (n, (key, value)) in tags.into_iter().enumerate() {
            self = self
                .set(format!("{prefix}.Tag.{}.Key", n + 1), key.as_ref())
                .set(format!("{prefix}.Tag.{}.Value", n + 1), value.as_ref());
        }
        self
    }

    /// The value given for `name`, if any (tests and logs).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueryError {
    /// The service answered with an error.
    #[error("{code}: {message} (HTTP {status})")]
    Service {
        status: u16,
        code: String,
        message: String,
    },
    /// The request never left: no credentials, no connection.
    #[error("not sent: {0}")]
    NotSent(String),
    /// Sent, but no readable answer came back: it may have taken effect.
    #[error("no answer: {0}")]
    NoAnswer(String),
}

impl QueryError {
    /// The service's error code, if it answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            QueryError::Service { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether trying again can help: throttling, the service's own failures, no connection.
    pub fn is_retryable(&self) -> bool {
        match self {
            QueryError::Service { status, code, .. } => {
                *status >= 500
                    || code.contains("Throttl")
                    || code == "RequestLimitExceeded"
                    || code.contains("Unavailable")
                    || code == "InternalError"
            }
            QueryError::NotSent(_) => true,
            QueryError::NoAnswer(_) => false,
        }
    }

    /// Whether the call may have done its work though it failed.
    pub fn may_have_taken_effect(&self) -> bool {
        matches!(self, QueryError::NoAnswer(_))
    }

    /// The error as the services report it, prefixed with the action (`DescribeInstances: …`).
    pub fn into_error(self, action: &str) -> Error {
        let kind = match &self {
            QueryError::Service { code, .. }
                if code.contains("NotFound") || code.contains("Malformed") =>
            {
                ErrorCode::NotFound
            }
            QueryError::Service { code, .. }
                if code == "UnauthorizedOperation" || code == "AuthFailure" =>
            {
                ErrorCode::Forbidden
            }
            error if error.is_retryable() || error.may_have_taken_effect() => {
                ErrorCode::Unavailable
            }
            _ => ErrorCode::InvalidInput,
        };
        Error::new(kind, format!("{action}: {self}"))
    }
}

/// A client of one Query service (EC2) at one endpoint, in one region; clones share it.
#[derive(Clone)]
pub struct QueryClient {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Transport,
    /// The API version every call names (`2016-11-15` for EC2).
    version: &'static str,
}

impl QueryClient {
    pub fn new(
        endpoint: &str,
        region: &str,
        service: &'static str,
        version: &'static str,
        credentials: Arc<CredentialChain>,
        max_attempts: u32,
    ) -> QueryClient {
        let mut endpoint = endpoint.to_string();
        if !endpoint.ends_with('/') {
            endpoint.push('/');
        }
        let transport = Transport::new(endpoint, region, service, credentials, max_attempts);
        QueryClient {
            inner: Arc::new(Inner { transport, version }),
        }
    }

    /// Calls `action`, retrying what may be retried; the answer's root element.
    pub async fn call(&self, action: &str, params: &Params) -> Result<Element, QueryError> {
        let inner = &self.inner;
        with_retries(inner.transport.max_attempts, action, || {
            inner.call_once(action, params)
        })
        .await
    }
}

/// `call` until it succeeds, fails in a way trying again cannot help, or has been made
/// `max_attempts` times: exponential backoff from 200 ms to 20 s, with jitter.
pub(super) async fn with_retries<T, F, Fut>(
    max_attempts: u32,
    action: &str,
    call: F,
) -> Result<T, QueryError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, QueryError>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(20))
        .with_max_times(max_attempts.max(1) as usize - 1)
        .with_jitter();
    call.retry(backoff)
        .when(QueryError::is_retryable)
        .notify(|error, after| tracing::warn!(action, %error, ?after, "AWS call failed; retrying"))
        .await
}

impl Inner {
    async fn call_once(&self, action: &str, params: &Params) -> Result<Element, QueryError> {
        let body = {
            // Not held across an await: the serializer is not `Send`.
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("Action", action)
                .append_pair("Version", self.version);
            for (name, value) in &params.pairs {
                form.append_pair(name, value);
            }
            form.finish()
        };
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let (status, text) = self
            .transport
            .post(&[("content-type", content_type.into())], body.into_bytes())
            .await?;
        let root = xml::parse(&text).map_err(|e| {
            if status >= 500 {
                // A proxy's or load balancer's page: the service's own failure, to retry.
                QueryError::Service {
                    status,
                    code: "ServiceUnavailable".into(),
                    message: format!("an answer that is not XML ({e})"),
                }
            } else {
                QueryError::NoAnswer(format!("HTTP {status}, an answer that is not XML: {e}"))
            }
        })?;
        if (200..300).contains(&status) {
            return Ok(root);
        }
        // EC2: Response/Errors/Error; STS and others: ErrorResponse/Error.
        let error = root.descendants("Error").into_iter().next();
        let field = |name: &str| {
            error
                .and_then(|e| e.text_at(&[name]))
                .unwrap_or_default()
                .to_string()
        };
        Err(QueryError::Service {
            status,
            code: Some(field("Code"))
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| format!("HTTP{status}")),
            message: field("Message"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_flatten_lists_filters_and_tags_as_the_query_protocol_wants() {
        let params = Params::new()
            .list("InstanceId", ["i-1", "i-2"])
            .filter("tag:a", ["x"])
            .filter("instance-state-name", ["pending", "running"])
            .tags("TagSpecification.1", [("k", "v")])
            .set_some("NextToken", None::<String>);
        let pairs: Vec<(&str, &str)> = params
            .pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("InstanceId.1", "i-1"),
                ("InstanceId.2", "i-2"),
                ("Filter.1.Name", "tag:a"),
                ("Filter.1.Value.1", "x"),
                ("Filter.2.Name", "instance-state-name"),
                ("Filter.2.Value.1", "pending"),
                ("Filter.2.Value.2", "running"),
                ("TagSpecification.1.Tag.1.Key", "k"),
                ("TagSpecification.1.Tag.1.Value", "v"),
            ]
        );
    }

    #[test]
    fn a_call_is_signed_with_sigv4_for_its_service_and_region_over_its_body() {
        let chain = CredentialChain::new(&[], Default::default(), "eu-west-1", "");
        let client = QueryClient::new(
            "https://ec2.eu-west-1.amazonaws.com",
            "eu-west-1",
            "ec2",
            "2016-11-15",
            Arc::new(chain),
            1,
        );
        let inner = &client.inner;
        assert_eq!(
            inner.transport.endpoint,
            "https://ec2.eu-west-1.amazonaws.com/"
        );
        let body = b"Action=DescribeInstances&Version=2016-11-15";
        let mut request = inner
            .transport
            .http
            .post(&inner.transport.endpoint)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .build()
            .unwrap();
        let keys = crate::aws::Credentials::from_keys("AKIDEXAMPLE", "secret", "test");
        inner.transport.sign(&mut request, body, &keys).unwrap();
        let authorization = request.headers()["authorization"].to_str().unwrap();
        assert!(
            authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
            "{authorization}"
        );
        assert!(
            authorization.contains("/eu-west-1/ec2/aws4_request"),
            "{authorization}"
        );
        assert!(
            authorization.contains("SignedHeaders=content-type;host;x-amz-date"),
            "{authorization}"
        );
        // Another body, another signature: the body is signed.
        let mut other = request.try_clone().unwrap();
        inner
            .transport
            .sign(&mut other, b"Action=TerminateInstances", &keys)
            .unwrap();
        let signature = |r: &reqwest::Request| {
            let header = r.headers()["authorization"].to_str().unwrap().to_string();
            header.rsplit("Signature=").next().unwrap().to_string()
        };
        if request.headers()["x-amz-date"] == other.headers()["x-amz-date"] {
            assert_ne!(signature(&request), signature(&other));
        }
    }

    #[test]
    fn errors_say_whether_to_retry_and_map_to_the_services_codes() {
        let service = |status: u16, code: &str| QueryError::Service {
            status,
            code: code.into(),
            message: String::new(),
        };
        assert!(service(503, "RequestLimitExceeded").is_retryable());
        assert!(service(400, "Throttling").is_retryable());
        assert!(service(500, "InternalError").is_retryable());
        assert!(!service(400, "InvalidParameterValue").is_retryable());
        assert!(QueryError::NotSent("refused".into()).is_retryable());
        assert!(!QueryError::NoAnswer("timed out".into()).is_retryable());
        assert!(QueryError::NoAnswer("timed out".into()).may_have_taken_effect());
        let code = |e: QueryError| e.into_error("X").code;
        assert_eq!(
            code(service(400, "InvalidInstanceID.NotFound")),
            ErrorCode::NotFound
        );
        assert_eq!(
            code(service(403, "UnauthorizedOperation")),
            ErrorCode::Forbidden
        );
        assert_eq!(
            code(service(503, "RequestLimitExceeded")),
            ErrorCode::Unavailable
        );
        assert_eq!(
            code(service(400, "InvalidParameterValue")),
            ErrorCode::InvalidInput
        );
        assert_eq!(
            code(QueryError::NoAnswer("x".into())),
            ErrorCode::Unavailable
        );
    }
}
