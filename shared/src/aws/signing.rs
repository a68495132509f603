//! SigV4 for a reqwest request, by `aws-sigv4`: the signature and its headers (`authorization`,
//! `x-amz-date`, a session's `x-amz-security-token`) added to the request, over the headers it
//! carries already.

use std::time::SystemTime;

pub use aws_sigv4::http_request::{SignableBody, SigningSettings};

use super::credentials::Credentials;

/// Signs `request` for `service` in `region`; `body` is its payload, or how to treat it.
pub fn sign(
    request: &mut reqwest::Request,
    body: SignableBody<'_>,
    credentials: &Credentials,
    region: &str,
    service: &str,
    settings: SigningSettings,
) -> Result<(), String> {
    let failed = |e: &dyn std::fmt::Display| format!("signing: {e}");
    let identity = credentials.to_signing_identity().into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .map_err(|e| failed(&e))?
        .into();
    let headers: Vec<(&str, &str)> = request
        .headers()
        .iter()
        .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
        .collect();
    let signable = aws_sigv4::http_request::SignableRequest::new(
        request.method().as_str(),
        request.url().as_str(),
        headers.into_iter(),
        body,
    )
    .map_err(|e| failed(&e))?;
    let (instructions, _signature) = aws_sigv4::http_request::sign(signable, &params)
        .map_err(|e| failed(&e))?
        .into_parts();
    for (name, value) in instructions.headers() {
        let name =
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|e| failed(&e))?;
        let value = reqwest::header::HeaderValue::from_str(value).map_err(|e| failed(&e))?;
        request.headers_mut().insert(name, value);
    }
    Ok(())
}
