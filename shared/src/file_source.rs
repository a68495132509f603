//! Files a job's container gets from elsewhere than its spec: an S3 object (`s3://bucket/key`, or an
//! `http(s)://` URL of S3 itself, the way seed 002's samples name their scripts) or any `https://` URL.
//! The api checks a source's form when the job is stored ([`Location::parse`]); the agent fetches it on
//! the instance, as its run's spec says ([`FetchSpec`]): S3 signed with the instance's credentials,
//! HTTPS under the outbound rules, size-capped, checked against the `sha256` given with it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::outbound::OutboundSettings;

/// `[fetch]`: how agents fetch files named by URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchSettings {
    /// Largest file fetched; a larger one ends the run (`failed`, naming the size).
    pub max_bytes: u64,
    /// How long one fetch may take, redirects included.
    pub timeout_secs: u64,
    /// Empty: AWS's regional endpoints. Otherwise an S3-compatible server (moto in tests, MinIO),
    /// addressed path-style. The deployment's own choice, so the outbound rules do not apply to it.
    pub s3_endpoint_url: String,
    /// The region of `s3://` URLs that name none.
    pub s3_region: String,
    /// A PEM file of certificate authorities trusted besides the public ones (files on a private
    /// HTTPS server); read by the api at start and handed to each agent with its run's spec.
    pub ca_file: String,
}

/// What an agent is told with its run's spec about fetching files (the api's `[fetch]` and
/// `[outbound]`, with the CA file's text instead of its path).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FetchSpec {
    pub max_bytes: u64,
    pub timeout_secs: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub s3_endpoint_url: String,
    pub s3_region: String,
    /// PEM certificates trusted besides the public roots.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub extra_roots_pem: String,
    #[schema(value_type = Object)]
    pub outbound: OutboundSettings,
}

impl FetchSpec {
    /// The spec from the deployment's settings; fails when the CA file cannot be read.
    pub fn from_settings(
        fetch: &FetchSettings,
        outbound: &OutboundSettings,
    ) -> std::io::Result<FetchSpec> {
        let extra_roots_pem = if fetch.ca_file.is_empty() {
            String::new()
        } else {
            std::fs::read_to_string(&fetch.ca_file).map_err(|e| {
                std::io::Error::new(e.kind(), format!("[fetch] ca_file {}: {e}", fetch.ca_file))
            })?
        };
        Ok(FetchSpec {
            max_bytes: fetch.max_bytes,
            timeout_secs: fetch.timeout_secs,
            s3_endpoint_url: fetch.s3_endpoint_url.trim_end_matches('/').to_string(),
            s3_region: fetch.s3_region.clone(),
            extra_roots_pem,
            outbound: outbound.clone(),
        })
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.max(1))
    }
}

/// Where a file comes from, and the digest it must have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSource {
    /// `s3://bucket/key`, an S3 URL (`https://s3.amazonaws.com/bucket/key`,
    /// `https://bucket.s3.REGION.amazonaws.com/key`, `http://` too: it is fetched over HTTPS) or an
    /// `https://` URL.
    #[schema(example = "s3://executable/myScript.sh")]
    pub url: String,
    /// The file's SHA-256 in hex; a fetched file with another ends the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;

impl FileSource {
    /// Why this source cannot be fetched, as a message for the field it came in; `None` when it can.
    pub fn problem(&self) -> Option<String> {
        if let Err(problem) = Location::parse(&self.url) {
            return Some(problem);
        }
        match &self.sha256 {
            Some(digest) if !is_sha256_hex(digest) => {
                Some("sha256 must be 64 hexadecimal digits".to_string())
            }
            _ => None,
        }
    }
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit())
}

/// Where a source's bytes are, once its URL is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An S3 object; the region when the URL names one.
    S3 {
        bucket: String,
        key: String,
        region: Option<String>,
    },
    Https(url::Url),
}

impl Location {
    /// Reads a source URL. A plain `http://` URL is refused unless it names S3 (whose objects are
    /// then fetched over HTTPS): code run on an instance is not fetched in the clear.
    pub fn parse(text: &str) -> Result<Location, String> {
        if text.len() > MAX_URL_LEN {
            return Err(format!("a URL of at most {MAX_URL_LEN} bytes"));
        }
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            return s3_location(bucket, key.to_string(), None);
        }
        let url = url::Url::parse(text)
            .map_err(|_| "must be s3://bucket/key or an https:// URL".to_string())?;
        let host = url.host_str().unwrap_or("").to_ascii_lowercase();
        if matches!(url.scheme(), "http" | "https") {
            if let Some(location) = s3_in_url(&url, &host)? {
                return Ok(location);
            }
        }
        match url.scheme() {
            "https" if !host.is_empty() => {
                if !url.username().is_empty() || url.password().is_some() {
                    return Err("a URL with credentials in it is refused".to_string());
                }
                Ok(Location::Https(url))
            }
            "http" => Err(
                "a plain http:// URL is not fetched (code would travel in the clear): use https:// or an S3 URL"
                    .to_string(),
            ),
            _ => Err("must be s3://bucket/key or an https:// URL".to_string()),
        }
    }

    /// The URL as a person reads it, for messages.
    pub fn describe(&self) -> String {
        match self {
            Location::S3 { bucket, key, .. } => format!("s3://{bucket}/{key}"),
            Location::Https(url) => url.to_string(),
        }
    }
}

/// An S3 URL in the http(s) forms AWS documents: path-style (`s3.amazonaws.com/bucket/key`,
/// `s3.REGION.amazonaws.com/…`, `s3-REGION.amazonaws.com/…`) or virtual-hosted
/// (`bucket.s3.amazonaws.com/key`, `bucket.s3.REGION.amazonaws.com/key`). `None`: not S3.
fn s3_in_url(url: &url::Url, host: &str) -> Result<Option<Location>, String> {
    let Some(service) = host.strip_suffix(".amazonaws.com") else {
        return Ok(None);
    };
    let path = percent_encoding::percent_decode_str(url.path().trim_start_matches('/'))
        .decode_utf8()
        .map_err(|_| "the URL's path is not UTF-8".to_string())?
        .into_owned();
    let region_of = |endpoint: &str| -> Option<Option<String>> {
        if endpoint == "s3" {
            return Some(None);
        }
        let region = endpoint
            .strip_prefix("s3.")
            .or_else(|| endpoint.strip_prefix("s3-"))?;
        let valid = !region.is_empty()
            && region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        valid.then(|| Some(region.to_string()))
    };
    // Path-style: the host is the endpoint itself.
    if let Some(region) = region_of(service) {
        let (bucket, key) = path.split_once('/').unwrap_or((path.as_str(), ""));
        return s3_location(bucket, key.to_string(), region).map(Some);
    }
    // Virtual-hosted: the bucket, then the endpoint.
    if let Some((bucket, endpoint)) = service.rsplit_once(".s3") {
        if let Some(region) = region_of(&format!("s3{endpoint}")) {
            return s3_location(bucket, path, region).map(Some);
        }
    }
    Ok(None)
}

fn s3_location(bucket: &str, key: String, region: Option<String>) -> Result<Location, String> {
    // S3's bucket naming rules, as a person would be told them.
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !bucket_ok {
        return Err(format!(
            "S3 bucket {bucket:?}: 3 to 63 of a-z 0-9 . - starting and ending with a letter or digit"
        ));
    }
    if key.is_empty() || key.len() > 1024 || key.ends_with('/') {
        return Err("names no S3 object (s3://bucket/key, a key of 1 to 1024 bytes)".to_string());
    }
    Ok(Location::S3 {
        bucket: bucket.to_string(),
        key,
        region,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(bucket: &str, key: &str, region: Option<&str>) -> Location {
        Location::S3 {
            bucket: bucket.into(),
            key: key.into(),
            region: region.map(String::from),
        }
    }

    #[test]
    fn the_s3_spellings_read_as_the_same_object() {
        for (url, region) in [
            ("s3://executable/myScript.sh", None),
            // Seed 002's own samples.
            ("http://s3.amazonaws.com/executable/myScript.sh", None),
            ("https://s3.amazonaws.com/executable/myScript.sh", None),
            ("https://executable.s3.amazonaws.com/myScript.sh", None),
            (
                "https://s3.eu-west-1.amazonaws.com/executable/myScript.sh",
                Some("eu-west-1"),
            ),
            (
                "https://s3-eu-west-1.amazonaws.com/executable/myScript.sh",
                Some("eu-west-1"),
            ),
            (
                "https://executable.s3.eu-west-1.amazonaws.com/myScript.sh",
                Some("eu-west-1"),
            ),
        ] {
            assert_eq!(
                Location::parse(url),
                Ok(s3("executable", "myScript.sh", region)),
                "{url}"
            );
        }
        assert_eq!(
            Location::parse("https://s3.amazonaws.com/b-1/dir/a%20b.sh"),
            Ok(s3("b-1", "dir/a b.sh", None)),
            "percent-escapes in a URL's path are undone"
        );
        assert_eq!(
            Location::parse("s3://b-1/dir/a b.sh"),
            Ok(s3("b-1", "dir/a b.sh", None)),
            "an s3:// key is taken as written"
        );
    }

    #[test]
    fn https_urls_are_fetched_as_they_are_and_plain_http_is_refused() {
        assert!(matches!(
            Location::parse("https://example.com/tools/run.sh?v=2"),
            Ok(Location::Https(_))
        ));
        // Other AWS services are not S3: plain https.
        assert!(matches!(
            Location::parse("https://ec2.amazonaws.com/x"),
            Ok(Location::Https(_))
        ));
        let too_long = format!("s3://bucket/{}", "k".repeat(MAX_URL_LEN));
        for (url, says) in [
            (too_long.as_str(), "at most"),
            ("http://example.com/run.sh", "http://"),
            ("ftp://example.com/run.sh", "https://"),
            ("s3://Bad_Bucket/key", "bucket"),
            ("s3://bucket", "object"),
            ("s3://bucket/", "object"),
            ("https://s3.amazonaws.com/bucket/dir/", "object"),
            ("https://user:pw@example.com/run.sh", "credentials"),
            ("run.sh", "https://"),
        ] {
            let problem = Location::parse(url).expect_err(url);
            assert!(problem.contains(says), "{url}: {problem}");
        }
    }

    #[test]
    fn a_digest_must_be_sha256_hex() {
        let source = |sha256: Option<&str>| FileSource {
            url: "s3://bucket/key".into(),
            sha256: sha256.map(String::from),
        };
        assert_eq!(source(None).problem(), None);
        assert_eq!(source(Some(&"aB".repeat(32))).problem(), None);
        assert!(source(Some("abc")).problem().is_some());
        assert!(source(Some(&"g".repeat(64))).problem().is_some());
    }
}
