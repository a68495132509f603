//! AWS credentials, found where AWS's own SDKs look for them, in the same order:
//!
//! 1. the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`);
//! 2. a profile's keys (`AWS_PROFILE`, else `default`, in `~/.aws/credentials` or `~/.aws/config`,
//!    or the files `AWS_SHARED_CREDENTIALS_FILE` and `AWS_CONFIG_FILE` name);
//! 3. web identity (`AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN`: EKS service accounts), through
//!    STS `AssumeRoleWithWebIdentity`;
//! 4. the container's role (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` or `_FULL_URI`: ECS, EKS Pod
//!    Identity);
//! 5. the instance's role, from the instance metadata service (IMDSv2), unless
//!    `AWS_EC2_METADATA_DISABLED=true` or the chain was given no metadata address.
//!
//! Temporary credentials are kept until five minutes before they expire. A profile that names a
//! role to assume, SSO or a credential process is refused with its name: give keys, or run with a
//! role (instance, container or web identity).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::xml;

/// The address AWS's metadata service answers on, on every EC2 instance.
pub const DEFAULT_METADATA_URL: &str = "http://169.254.169.254";
/// Where ECS serves a task's role (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` is a path on it).
const ECS_CREDENTIALS_HOST: &str = "http://169.254.170.2";
/// Credentials closer to their expiry than this are fetched again.
const REFRESH_BEFORE: chrono::Duration = chrono::Duration::minutes(5);

/// Keys to sign with.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: SecretString,
    pub session_token: Option<SecretString>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Which source gave them, for logs.
    pub source: &'static str,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("expires_at", &self.expires_at)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Long-lived keys.
    pub fn from_keys(
        access_key_id: &str,
        secret_access_key: &str,
        source: &'static str,
    ) -> Credentials {
        Credentials {
            access_key_id: access_key_id.to_string(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
            expires_at: None,
            source,
        }
    }

    /// The form `aws-sigv4` signs with.
    pub fn to_signing_identity(&self) -> aws_credential_types::Credentials {
        aws_credential_types::Credentials::new(
            &self.access_key_id,
            self.secret_access_key.expose_secret(),
            self.session_token
                .as_ref()
                .map(|t| t.expose_secret().to_string()),
            self.expires_at.map(std::time::SystemTime::from),
            self.source,
        )
    }

    fn fresh(&self) -> bool {
        self.expires_at
            .is_none_or(|at| at - REFRESH_BEFORE > Utc::now())
    }
}

/// No source had credentials, or one that should have failed; the message says which and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no AWS credentials: {0}")]
pub struct CredentialsError(pub String);

/// The places a chain looks, in the order it looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Environment,
    Profile,
    WebIdentity,
    Container,
    InstanceMetadata,
}

impl Source {
    /// Every source, in the SDKs' order.
    pub const STANDARD: [Source; 5] = [
        Source::Environment,
        Source::Profile,
        Source::WebIdentity,
        Source::Container,
        Source::InstanceMetadata,
    ];
}

/// The variables a chain reads, taken once (tests give their own).
#[derive(Debug, Clone, Default)]
pub struct Environment(HashMap<String, String>);

impl Environment {
    /// This process's environment.
    pub fn from_process() -> Environment {
        Environment(std::env::vars().collect())
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Environment {
        Environment(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn home_file(&self, variable: &str, default: &str) -> Option<PathBuf> {
        match self.get(variable) {
            Some(path) => Some(PathBuf::from(path)),
            None => self
                .get("HOME")
                .map(|home| PathBuf::from(home).join(default)),
        }
    }
}

/// Finds credentials once and keeps them while they are fresh.
pub struct CredentialChain {
    sources: Vec<Source>,
    env: Environment,
    region: String,
    /// Empty: the instance's role is never asked for.
    metadata_url: String,
    http: reqwest::Client,
    cached: tokio::sync::Mutex<Option<Credentials>>,
}

impl CredentialChain {
    /// The standard chain over this process's environment, for a service in `region`.
    pub fn standard(region: &str) -> CredentialChain {
        let env = Environment::from_process();
        let metadata_url = env
            .get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
            .unwrap_or(DEFAULT_METADATA_URL)
            .to_string();
        CredentialChain::new(&Source::STANDARD, env, region, &metadata_url)
    }

    pub fn new(
        sources: &[Source],
        env: Environment,
        region: &str,
        metadata_url: &str,
    ) -> CredentialChain {
        let metadata_disabled = env
            .get("AWS_EC2_METADATA_DISABLED")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        CredentialChain {
            sources: sources.to_vec(),
            region: region.to_string(),
            metadata_url: if metadata_disabled {
                String::new()
            } else {
                metadata_url.trim_end_matches('/').to_string()
            },
            env,
            // The link-local services answer at once or not at all; STS gets longer.
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// Credentials to sign with now.
    pub async fn get(&self) -> Result<Credentials, CredentialsError> {
        let mut cached = self.cached.lock().await;
        if let Some(credentials) = cached.as_ref().filter(|c| c.fresh()) {
            return Ok(credentials.clone());
        }
        let credentials = self.resolve().await?;
        tracing::debug!(source = credentials.source, expires_at = ?credentials.expires_at, "AWS credentials");
        *cached = Some(credentials.clone());
        Ok(credentials)
    }

    async fn resolve(&self) -> Result<Credentials, CredentialsError> {
        let mut looked = Vec::new();
        for source in &self.sources {
            let found = match source {
                Source::Environment => self.environment_keys(),
                Source::Profile => self.profile_keys()?,
                Source::WebIdentity => self.web_identity().await?,
                Source::Container => self.container_role().await?,
                Source::InstanceMetadata => match self.instance_metadata().await {
                    Ok(found) => found,
                    Err(why) => {
                        looked.push(format!("InstanceMetadata ({why})"));
                        continue;
                    }
                },
            };
            if let Some(credentials) = found {
                return Ok(credentials);
            }
            looked.push(format!("{source:?}"));
        }
        Err(CredentialsError(format!("looked in {}", looked.join(", "))))
    }

    fn environment_keys(&self) -> Option<Credentials> {
        Some(Credentials {
            access_key_id: self.env.get("AWS_ACCESS_KEY_ID")?.to_string(),
            secret_access_key: self.env.get("AWS_SECRET_ACCESS_KEY")?.into(),
            session_token: self.env.get("AWS_SESSION_TOKEN").map(SecretString::from),
            expires_at: None,
            source: "environment",
        })
    }

    /// The profile's keys; `None` if there is no such profile or it has no keys, an error if it
    /// asks for what this chain does not do.
    fn profile_keys(&self) -> Result<Option<Credentials>, CredentialsError> {
        let name = self.env.get("AWS_PROFILE").unwrap_or("default");
        let mut profile = HashMap::new();
        // The config file's `[profile name]` (or `[default]`), overridden by the credentials file's `[name]`.
        if let Some(text) = self
            .env
            .home_file("AWS_CONFIG_FILE", ".aws/config")
            .and_then(|p| std::fs::read_to_string(p).ok())
        {
            let section = if name == "default" {
                "default".to_string()
            } else {
                format!("profile {name}")
            };
            profile.extend(ini_section(&text, &section));
        }
        if let Some(text) = self
            .env
            .home_file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials")
            .and_then(|p| std::fs::read_to_string(p).ok())
        {
            profile.extend(ini_section(&text, name));
        }
        if let (Some(id), Some(secret)) = (
            profile.get("aws_access_key_id"),
            profile.get("aws_secret_access_key"),
        ) {
            return Ok(Some(Credentials {
                access_key_id: id.clone(),
                secret_access_key: secret.as_str().into(),
                session_token: profile.get("aws_session_token").map(|t| t.as_str().into()),
                expires_at: None,
                source: "profile",
            }));
        }
        for unsupported in [
            "role_arn",
            "sso_session",
            "sso_start_url",
            "credential_process",
        ] {
            if profile.contains_key(unsupported) {
                return Err(CredentialsError(format!(
                    "profile {name} uses {unsupported}, which spot-scheduler does not resolve: give \
                     it aws_access_key_id and aws_secret_access_key, or run with a role (instance \
                     profile, container role or web identity)"
                )));
            }
        }
        Ok(None)
    }

    async fn web_identity(&self) -> Result<Option<Credentials>, CredentialsError> {
        let (Some(token_file), Some(role_arn)) = (
            self.env.get("AWS_WEB_IDENTITY_TOKEN_FILE"),
            self.env.get("AWS_ROLE_ARN"),
        ) else {
            return Ok(None);
        };
        let failed = |why: String| CredentialsError(format!("web identity: {why}"));
        let token = std::fs::read_to_string(token_file)
            .map_err(|e| failed(format!("reading {token_file}: {e}")))?;
        let session = self
            .env
            .get("AWS_ROLE_SESSION_NAME")
            .unwrap_or("spot-scheduler");
        let endpoint = match self.env.get("AWS_ENDPOINT_URL_STS") {
            Some(url) => url.to_string(),
            None => format!("https://sts.{}.amazonaws.com/", self.region),
        };
        // Unsigned: the token is the proof.
        let response = self
            .http
            .post(&endpoint)
            .form(&[
                ("Action", "AssumeRoleWithWebIdentity"),
                ("Version", "2011-06-15"),
                ("RoleArn", role_arn),
                ("RoleSessionName", session),
                ("WebIdentityToken", token.trim()),
            ])
            .send()
            .await
            .map_err(|e| failed(format!("STS unreachable: {e}")))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| failed(format!("STS's answer: {e}")))?;
        let root = xml::parse(&body).map_err(|e| failed(format!("STS's answer: {e}")))?;
        if !status.is_success() {
            let code = root.descendants("Code").first().map(|c| c.text.clone());
            return Err(failed(format!(
                "STS answered {status}: {}",
                code.unwrap_or_default()
            )));
        }
        let keys = root
            .descendants("Credentials")
            .into_iter()
            .next()
            .ok_or_else(|| failed("STS's answer has no Credentials".to_string()))?;
        let field = |name: &str| {
            keys.text_at(&[name])
                .map(str::to_string)
                .ok_or_else(|| failed(format!("STS's answer has no {name}")))
        };
        Ok(Some(Credentials {
            access_key_id: field("AccessKeyId")?,
            secret_access_key: field("SecretAccessKey")?.into(),
            session_token: Some(field("SessionToken")?.into()),
            expires_at: keys
                .text_at(&["Expiration"])
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc)),
            source: "web identity",
        }))
    }

    async fn container_role(&self) -> Result<Option<Credentials>, CredentialsError> {
        let url = if let Some(path) = self.env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
            format!("{ECS_CREDENTIALS_HOST}{path}")
        } else if let Some(url) = self.env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
            url.to_string()
        } else {
            return Ok(None);
        };
        let failed = |why: String| CredentialsError(format!("container role at {url}: {why}"));
        let token = match self.env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") {
            Some(file) => Some(
                std::fs::read_to_string(file)
                    .map_err(|e| failed(format!("reading {file}: {e}")))?
                    .trim()
                    .to_string(),
            ),
            None => self
                .env
                .get("AWS_CONTAINER_AUTHORIZATION_TOKEN")
                .map(str::to_string),
        };
        let mut request = self.http.get(&url);
        if let Some(token) = token {
            request = request.header("Authorization", token);
        }
        let answer = fetch_json::<RoleCredentials>(request)
            .await
            .map_err(failed)?;
        Ok(Some(answer.into_credentials("container role")))
    }

    /// The instance's role through IMDSv2; `None` when the chain may not ask. Off EC2 the error
    /// (no metadata service) is the normal case: the chain goes on.
    async fn instance_metadata(&self) -> Result<Option<Credentials>, String> {
        if self.metadata_url.is_empty() {
            return Ok(None);
        }
        self.instance_role().await.map(Some)
    }

    async fn instance_role(&self) -> Result<Credentials, String> {
        let base = &self.metadata_url;
        let token = fetch_text(
            self.http
                .put(format!("{base}/latest/api/token"))
                .header("X-aws-ec2-metadata-token-ttl-seconds", "21600")
                .timeout(Duration::from_secs(2)),
        )
        .await
        .map_err(|e| format!("no metadata service: {e}"))?;
        let roles_url = format!("{base}/latest/meta-data/iam/security-credentials/");
        let roles = fetch_text(
            self.http
                .get(&roles_url)
                .header("X-aws-ec2-metadata-token", &token),
        )
        .await
        .map_err(|e| format!("no instance profile: {e}"))?;
        let role = roles
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .ok_or("no instance profile")?;
        let request = self
            .http
            .get(format!("{roles_url}{role}"))
            .header("X-aws-ec2-metadata-token", &token);
        let answer = fetch_json::<RoleCredentials>(request).await?;
        if answer.code.as_deref().is_some_and(|c| c != "Success") {
            return Err(format!("instance profile {role}: {:?}", answer.code));
        }
        Ok(answer.into_credentials("instance profile"))
    }
}

/// The JSON the container and instance roles answer with.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RoleCredentials {
    access_key_id: String,
    secret_access_key: String,
    token: Option<String>,
    expiration: Option<DateTime<Utc>>,
    code: Option<String>,
}

impl RoleCredentials {
    fn into_credentials(self, source: &'static str) -> Credentials {
        Credentials {
            access_key_id: self.access_key_id,
            secret_access_key: self.secret_access_key.into(),
            session_token: self.token.map(SecretString::from),
            expires_at: self.expiration,
            source,
        }
    }
}

async fn fetch_text(request: reqwest::RequestBuilder) -> Result<String, String> {
    let response = request
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| e.to_string())?;
    response.text().await.map_err(|e| e.to_string())
}

async fn fetch_json<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
) -> Result<T, String> {
    let response = request
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| e.to_string())?;
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    serde_json::from_slice(&body).map_err(|e| format!("unreadable answer: {e}"))
}

/// The `key = value` lines of one `[section]` of an INI file (AWS's config files), keys lowercased.
fn ini_section(text: &str, section: &str) -> HashMap<String, String> {
    let mut inside = false;
    let mut found = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.split_whitespace().collect::<Vec<_>>().join(" ") == section;
            continue;
        }
        if inside {
            if let Some((key, value)) = line.split_once('=') {
                found.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(pairs: &[(&str, &str)], sources: &[Source]) -> CredentialChain {
        CredentialChain::new(
            sources,
            Environment::from_pairs(pairs.iter().copied()),
            "us-east-1",
            "",
        )
    }

    #[tokio::test]
    async fn the_environment_comes_first() {
        let chain = chain(
            &[
                ("AWS_ACCESS_KEY_ID", "AKID"),
                ("AWS_SECRET_ACCESS_KEY", "secret"),
                ("AWS_SESSION_TOKEN", "token"),
                ("HOME", "/nonexistent"),
            ],
            &Source::STANDARD,
        );
        let credentials = chain.get().await.unwrap();
        assert_eq!(credentials.access_key_id, "AKID");
        assert_eq!(credentials.source, "environment");
        assert_eq!(credentials.session_token.unwrap().expose_secret(), "token");
    }

    #[tokio::test]
    async fn a_profile_is_read_from_both_files_and_its_name_chosen_by_aws_profile() {
        let dir = std::env::temp_dir().join(format!("spot-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let credentials_file = dir.join("credentials");
        let config_file = dir.join("config");
        std::fs::write(
            &credentials_file,
            "[default]\naws_access_key_id = DEFAULTKEY\naws_secret_access_key = s1\n\n\
             [work]\n# a comment\nAWS_ACCESS_KEY_ID=WORKKEY\naws_secret_access_key=s2\n",
        )
        .unwrap();
        std::fs::write(
            &config_file,
            "[profile work]\nregion = eu-west-1\naws_session_token = t2\n\
             [profile assumed]\nrole_arn = arn:aws:iam::1:role/x\nsource_profile = default\n",
        )
        .unwrap();
        let files = [
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                credentials_file.to_str().unwrap(),
            ),
            ("AWS_CONFIG_FILE", config_file.to_str().unwrap()),
        ];
        let get = |profile: Option<&'static str>| {
            let mut pairs = files.to_vec();
            if let Some(profile) = profile {
                pairs.push(("AWS_PROFILE", profile));
            }
            chain(&pairs, &[Source::Profile])
        };
        let default = get(None).get().await.unwrap();
        assert_eq!(default.access_key_id, "DEFAULTKEY");
        let work = get(Some("work")).get().await.unwrap();
        assert_eq!(work.access_key_id, "WORKKEY");
        assert_eq!(work.session_token.unwrap().expose_secret(), "t2");
        let refused = get(Some("assumed")).get().await.unwrap_err();
        assert!(refused.0.contains("role_arn"), "{refused}");
        let missing = get(Some("nobody")).get().await.unwrap_err();
        assert!(missing.0.contains("Profile"), "{missing}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn without_a_source_the_error_names_where_it_looked() {
        let chain = chain(&[("HOME", "/nonexistent")], &Source::STANDARD);
        let error = chain.get().await.unwrap_err();
        assert!(
            error
                .0
                .contains("Environment, Profile, WebIdentity, Container"),
            "{error}"
        );
    }

    #[test]
    fn metadata_can_be_turned_off_by_the_environment() {
        let chain = CredentialChain::new(
            &Source::STANDARD,
            Environment::from_pairs([("AWS_EC2_METADATA_DISABLED", "TRUE")]),
            "us-east-1",
            DEFAULT_METADATA_URL,
        );
        assert!(chain.metadata_url.is_empty());
    }

    #[test]
    fn fresh_means_more_than_five_minutes_left() {
        let mut credentials = Credentials {
            access_key_id: "a".into(),
            secret_access_key: "b".into(),
            session_token: None,
            expires_at: None,
            source: "test",
        };
        assert!(credentials.fresh());
        credentials.expires_at = Some(Utc::now() + chrono::Duration::minutes(4));
        assert!(!credentials.fresh());
        credentials.expires_at = Some(Utc::now() + chrono::Duration::minutes(6));
        assert!(credentials.fresh());
    }
}
