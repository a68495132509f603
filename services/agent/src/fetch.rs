//! The run's files, ready to place in its container: uploaded ones decoded, and those named by URL
//! fetched here on the instance before the container starts. S3 objects with a GET signed by the
//! environment's credentials, else the instance profile's (from the metadata service, never on the
//! local provider), else unsigned (public objects); other URLs over HTTPS only, to the addresses the
//! outbound rules allow, following up to five redirects checked the same way. Every file is capped at
//! the spec's size and checked against its `sha256`. A failure is the run's end, with the reason.

use base64::Engine;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};
use spot_shared::aws::credentials::{CredentialChain, Credentials, Environment, Source};
use spot_shared::aws::signing;
use spot_shared::error::error_chain;
use spot_shared::file_source::{FetchSpec, FileSource, Location};
use spot_shared::messages::RunSpec;

/// A file to place in the container.
pub struct ContainerFile {
    pub path: String,
    pub mode: u32,
    pub content: Vec<u8>,
}

/// Redirects followed for one HTTPS file, each hop checked against the outbound rules.
const MAX_REDIRECTS: usize = 5;

/// S3 wants every byte of a key segment escaped but these (its "unreserved" set).
const S3_KEY_ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Every file of the run, in the order given; the first failure says which file and why.
pub async fn container_files(
    spec: &RunSpec,
    metadata_url: &str,
) -> Result<Vec<ContainerFile>, String> {
    let mut files = Vec::with_capacity(spec.files.len());
    let mut credentials = None;
    for file in &spec.files {
        let content = match &file.source {
            None => base64::engine::general_purpose::STANDARD
                .decode(file.content_base64.as_bytes())
                .map_err(|e| format!("file {} is not base64: {e}", file.path))?,
            Some(source) => {
                let fetched = tokio::time::timeout(
                    spec.fetch.timeout(),
                    fetch(source, &spec.fetch, metadata_url, &mut credentials),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "took longer than {} s",
                        spec.fetch.timeout().as_secs()
                    ))
                });
                fetched.map_err(|why| format!("cannot fetch {}: {why}", source.url))?
            }
        };
        files.push(ContainerFile {
            path: file.path.clone(),
            mode: file.mode,
            content,
        });
    }
    Ok(files)
}

/// Credentials for S3, looked for once per run: `None` inside means none were found.
type CredentialCache = Option<Option<Credentials>>;

async fn fetch(
    source: &FileSource,
    spec: &FetchSpec,
    metadata_url: &str,
    credentials: &mut CredentialCache,
) -> Result<Vec<u8>, String> {
    let content = match Location::parse(&source.url)? {
        Location::S3 {
            bucket,
            key,
            region,
        } => {
            if credentials.is_none() {
                *credentials = Some(s3_credentials(metadata_url, &spec.s3_region).await);
            }
            let region = region.unwrap_or_else(|| spec.s3_region.clone());
            let signer = credentials.as_ref().and_then(Option::as_ref);
            fetch_s3(&bucket, &key, &region, spec, signer).await?
        }
        Location::Https(url) => fetch_https(url, spec).await?,
    };
    if let Some(expected) = &source.sha256 {
        let actual = hex::encode(Sha256::digest(&content));
        if !expected.eq_ignore_ascii_case(&actual) {
            return Err(format!("its SHA-256 is {actual}, not {expected}"));
        }
    }
    Ok(content)
}

/// The environment's credentials, else the instance profile's; `None` (unsigned requests) when
/// neither has any. Without a metadata service (the local provider) it is never asked.
async fn s3_credentials(metadata_url: &str, region: &str) -> Option<Credentials> {
    let chain = CredentialChain::new(
        &[Source::Environment, Source::InstanceMetadata],
        Environment::from_process(),
        region,
        metadata_url,
    );
    match chain.get().await {
        Ok(credentials) => Some(credentials),
        Err(err) => {
            if !metadata_url.is_empty() {
                tracing::warn!(error = %err, "no instance profile credentials; fetching S3 unsigned");
            }
            None
        }
    }
}

/// The object's URL: the configured endpoint path-style, else AWS's regional one (virtual-hosted
/// unless the bucket's name has a dot, which its TLS certificate would not cover).
fn s3_object_url(bucket: &str, key: &str, region: &str, spec: &FetchSpec) -> String {
    let key: Vec<String> = key
        .split('/')
        .map(|segment| utf8_percent_encode(segment, S3_KEY_ESCAPED).to_string())
        .collect();
    let key = key.join("/");
    if !spec.s3_endpoint_url.is_empty() {
        format!("{}/{bucket}/{key}", spec.s3_endpoint_url)
    } else if bucket.contains('.') {
        format!("https://s3.{region}.amazonaws.com/{bucket}/{key}")
    } else {
        format!("https://{bucket}.s3.{region}.amazonaws.com/{key}")
    }
}

async fn fetch_s3(
    bucket: &str,
    key: &str,
    region: &str,
    spec: &FetchSpec,
    credentials: Option<&Credentials>,
) -> Result<Vec<u8>, String> {
    let url = s3_object_url(bucket, key, region, spec);
    let client = client_builder(spec)?
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let mut request = client
        .get(&url)
        .build()
        .map_err(|e| format!("bad S3 URL {url}: {e}"))?;
    if let Some(credentials) = credentials {
        sign_s3_get(&mut request, credentials, region)?;
    }
    let response = client
        .execute(request)
        .await
        .map_err(|e| format!("S3 unreachable: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        let code = s3_error_code(&body).unwrap_or("no error code");
        return Err(format!("S3 answered {status} ({code})"));
    }
    read_capped(response, spec.max_bytes).await
}

/// Signs a GET with SigV4 in its headers, its payload unsigned (a GET has none).
fn sign_s3_get(
    request: &mut reqwest::Request,
    credentials: &Credentials,
    region: &str,
) -> Result<(), String> {
    use aws_sigv4::http_request::{
        PayloadChecksumKind, PercentEncodingMode, UriPathNormalizationMode,
    };
    let mut settings = signing::SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    // The key is escaped already, once, as S3 wants it; its path is not a file path to normalise.
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    signing::sign(
        request,
        signing::SignableBody::UnsignedPayload,
        credentials,
        region,
        "s3",
        settings,
    )
}

/// `<Code>NoSuchKey</Code>` from S3's XML error.
fn s3_error_code(body: &str) -> Option<&str> {
    let start = body.find("<Code>")? + "<Code>".len();
    let length = body[start..].find("</Code>")?;
    Some(&body[start..start + length])
}

async fn fetch_https(mut url: url::Url, spec: &FetchSpec) -> Result<Vec<u8>, String> {
    for _ in 0..=MAX_REDIRECTS {
        let addresses = spot_shared::outbound::checked_addresses(&url, &spec.outbound)
            .await
            .map_err(|e| e.message)?;
        let mut builder = client_builder(spec)?;
        if let Some(domain) = url.domain() {
            // Connect to the addresses just checked, never resolving again (DNS rebinding).
            builder = builder.resolve_to_addrs(domain, &addresses);
        }
        let client = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
        let response = client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| format!("unreachable: {}", error_chain(&e)))?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|value| value.to_str().ok())
                .ok_or_else(|| format!("answered {status} without a Location"))?;
            url = url
                .join(location)
                .map_err(|_| format!("redirected to a malformed URL {location:?}"))?;
            if url.scheme() != "https" {
                return Err(format!("redirected to {url}, which is not https"));
            }
            continue;
        }
        if !status.is_success() {
            return Err(format!("answered {status}"));
        }
        return read_capped(response, spec.max_bytes).await;
    }
    Err(format!("more than {MAX_REDIRECTS} redirects"))
}

/// A client that follows no redirect itself and trusts the spec's extra roots.
fn client_builder(spec: &FetchSpec) -> Result<reqwest::ClientBuilder, String> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(spec.timeout());
    if !spec.extra_roots_pem.is_empty() {
        let roots = reqwest::Certificate::from_pem_bundle(spec.extra_roots_pem.as_bytes())
            .map_err(|e| format!("the deployment's extra CA certificates: {e}"))?;
        for root in roots {
            builder = builder.add_root_certificate(root);
        }
    }
    Ok(builder)
}

/// The body, refused as soon as it is known to pass the cap.
async fn read_capped(mut response: reqwest::Response, max_bytes: u64) -> Result<Vec<u8>, String> {
    let too_large = || format!("larger than the {max_bytes}-byte limit ([fetch] max_bytes)");
    if response
        .content_length()
        .is_some_and(|length| length > max_bytes)
    {
        return Err(too_large());
    }
    let mut content = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("cut off: {}", error_chain(&e)))?
    {
        if (content.len() + chunk.len()) as u64 > max_bytes {
            return Err(too_large());
        }
        content.extend_from_slice(&chunk);
    }
    Ok(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(endpoint: &str) -> FetchSpec {
        FetchSpec {
            s3_endpoint_url: endpoint.into(),
            s3_region: "us-east-1".into(),
            ..FetchSpec::default()
        }
    }

    #[test]
    fn object_urls_escape_the_key_once_and_keep_its_slashes() {
        assert_eq!(
            s3_object_url("bucket", "dir/a b+c.sh", "eu-west-1", &spec("")),
            "https://bucket.s3.eu-west-1.amazonaws.com/dir/a%20b%2Bc.sh"
        );
        assert_eq!(
            s3_object_url("my.bucket", "x", "us-east-1", &spec("")),
            "https://s3.us-east-1.amazonaws.com/my.bucket/x"
        );
        assert_eq!(
            s3_object_url(
                "bucket",
                "x.sh",
                "us-east-1",
                &spec("http://127.0.0.1:5000")
            ),
            "http://127.0.0.1:5000/bucket/x.sh"
        );
    }

    #[test]
    fn a_signed_get_carries_sigv4_headers_for_s3_in_its_region() {
        let client = reqwest::Client::new();
        let mut request = client
            .get("https://bucket.s3.eu-west-1.amazonaws.com/dir/a%20b.sh")
            .build()
            .unwrap();
        let credentials = Credentials::from_keys("AKIDEXAMPLE", "secret", "test");
        sign_s3_get(&mut request, &credentials, "eu-west-1").unwrap();
        let authorization = request.headers()["authorization"].to_str().unwrap();
        assert!(
            authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
            "{authorization}"
        );
        assert!(
            authorization.contains("/eu-west-1/s3/aws4_request"),
            "{authorization}"
        );
        assert_eq!(
            request.headers()["x-amz-content-sha256"],
            "UNSIGNED-PAYLOAD"
        );
        assert!(request.headers().contains_key("x-amz-date"));
    }

    #[test]
    fn s3_error_codes_are_read_from_the_xml() {
        let body =
            "<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>m</Message></Error>";
        assert_eq!(s3_error_code(body), Some("NoSuchKey"));
        assert_eq!(s3_error_code("not xml"), None);
    }
}
