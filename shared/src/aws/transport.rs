//! What every AWS call does whatever its protocol: POST a body to the service's endpoint, signed
//! with SigV4 under fresh credentials, and read the answer; failures sorted into not sent (safe to
//! send again) and no answer (it may have taken effect). The Query and JSON clients build on it.

use std::sync::Arc;
use std::time::Duration;

use super::credentials::CredentialChain;
use super::query::QueryError;
use super::signing;
use crate::error::error_chain;

/// How long one call may take, connection included. A fleet of type `instant` answers in seconds.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// One service at one endpoint, in one region.
pub(super) struct Transport {
    pub http: reqwest::Client,
    pub endpoint: String,
    region: String,
    /// The signing name (`ec2`, `ssm`).
    service: &'static str,
    credentials: Arc<CredentialChain>,
    /// Attempts per call, the first included.
    pub max_attempts: u32,
}

impl Transport {
    pub fn new(
        endpoint: String,
        region: &str,
        service: &'static str,
        credentials: Arc<CredentialChain>,
        max_attempts: u32,
    ) -> Transport {
        Transport {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .timeout(CALL_TIMEOUT)
                .build()
                .unwrap_or_default(),
            endpoint,
            region: region.to_string(),
            service,
            credentials,
            max_attempts: max_attempts.max(1),
        }
    }

    /// POSTs `body` with `headers`, signed; the answer's status and text.
    pub async fn post(
        &self,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
    ) -> Result<(u16, String), QueryError> {
        let mut request = self.http.post(&self.endpoint);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let mut request = request
            .body(body.clone())
            .build()
            .map_err(|e| QueryError::NotSent(format!("bad endpoint {}: {e}", self.endpoint)))?;
        let credentials = self
            .credentials
            .get()
            .await
            .map_err(|e| QueryError::NotSent(e.to_string()))?;
        self.sign(&mut request, &body, &credentials)
            .map_err(QueryError::NotSent)?;
        let response = self.http.execute(request).await.map_err(|e| {
            if e.is_connect() || e.is_builder() {
                QueryError::NotSent(error_chain(&e))
            } else {
                QueryError::NoAnswer(error_chain(&e))
            }
        })?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| QueryError::NoAnswer(error_chain(&e)))?;
        Ok((status, text))
    }

    /// SigV4 over the method, URL, headers and body, in the request's headers.
    pub fn sign(
        &self,
        request: &mut reqwest::Request,
        body: &[u8],
        credentials: &super::credentials::Credentials,
    ) -> Result<(), String> {
        signing::sign(
            request,
            signing::SignableBody::Bytes(body),
            credentials,
            &self.region,
            self.service,
            signing::SigningSettings::default(),
        )
    }
}
