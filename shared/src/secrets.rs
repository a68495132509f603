//! Secrets a container gets as environment variables (`runner.secrets`: a name and the ARN of an SSM
//! parameter or a Secrets Manager secret), resolved at launch and never stored: the job keeps the
//! ARNs, and the values go from AWS to the container's environment only. On EC2 the agent resolves
//! them with its instance profile; on the local provider the provisioner does, and hands them to
//! the agent it starts (in that process's environment, [`AGENT_SECRETS_VAR`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use secrecy::SecretString;
use serde_json::json;

use crate::aws::json::JsonClient;
use crate::aws::CredentialChain;
use crate::error::{Error, Result};

/// The most secrets a container may name.
pub const MAX_SECRETS: usize = 32;

/// Where the local provider's agent finds the values the provisioner resolved (a JSON object of
/// name to value), so it does not ask AWS itself. Outside the agent's own `SPOT_AGENT_` settings,
/// which refuse names they do not know.
pub const AGENT_SECRETS_VAR: &str = "SPOT_CONTAINER_SECRETS";

/// What a secret's ARN names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// An SSM parameter: its region and name (`/prod/db/password`).
    Parameter { region: String, name: String },
    /// A Secrets Manager secret: its region and ARN.
    Secret { region: String, arn: String },
}

impl SecretRef {
    /// Reads `arn:aws:ssm:REGION:ACCOUNT:parameter/NAME` or
    /// `arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME`; the reason when it is neither.
    pub fn parse(arn: &str) -> std::result::Result<SecretRef, &'static str> {
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        let [_, partition, service, region, account, resource] = parts[..] else {
            return Err("not an ARN");
        };
        let region_ok = !region.is_empty()
            && region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !partition.starts_with("aws") || !region_ok || account.is_empty() {
            return Err("not an ARN with a region and an account");
        }
        match service {
            "ssm" => {
                let name = resource
                    .strip_prefix("parameter/")
                    .filter(|name| !name.is_empty())
                    .ok_or("an SSM ARN names parameter/NAME")?;
                // A name with a path is written with its leading slash (`/prod/db`); the ARN drops it.
                let name = if name.contains('/') {
                    format!("/{name}")
                } else {
                    name.to_string()
                };
                Ok(SecretRef::Parameter {
                    region: region.to_string(),
                    name,
                })
            }
            "secretsmanager" => {
                resource
                    .strip_prefix("secret:")
                    .filter(|name| !name.is_empty())
                    .ok_or("a Secrets Manager ARN names secret:NAME")?;
                Ok(SecretRef::Secret {
                    region: region.to_string(),
                    arn: arn.to_string(),
                })
            }
            _ => Err("must be an SSM parameter's or a Secrets Manager secret's ARN"),
        }
    }
}

/// Checks a container's `secrets`; `field` names them in errors (`runner.secrets`).
pub fn validate(secrets: &BTreeMap<String, String>, field: &str) -> Result<()> {
    if secrets.len() > MAX_SECRETS {
        return Err(Error::invalid(
            field,
            format!("at most {MAX_SECRETS} secrets"),
        ));
    }
    for (name, arn) in secrets {
        let at = format!("{field}.{name}");
        let name_ok = name.len() <= 128
            && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok || name.starts_with("SPOT_") {
            return Err(Error::invalid(
                at,
                "an environment variable's name (letters, digits, _), not starting with SPOT_",
            ));
        }
        if arn.len() > 2048 {
            return Err(Error::invalid(at, "an ARN of at most 2048 bytes"));
        }
        SecretRef::parse(arn).map_err(|why| Error::invalid(at, why))?;
    }
    Ok(())
}

/// Resolves secrets with one set of AWS credentials (the deployment's, or an instance's).
#[derive(Clone)]
pub struct SecretResolver {
    /// Empty: each service's standard endpoint in the secret's region.
    endpoint: String,
    credentials: Arc<CredentialChain>,
    max_attempts: u32,
}

impl SecretResolver {
    pub fn new(endpoint: &str, credentials: Arc<CredentialChain>, max_attempts: u32) -> Self {
        SecretResolver {
            endpoint: endpoint.to_string(),
            credentials,
            max_attempts,
        }
    }

    /// The deployment's resolver when AWS is configured (the `ec2` provider, or an `[ec2]`
    /// endpoint), else `None`: as for instances, nothing looks for credentials then.
    pub fn for_deployment(settings: &crate::config::Settings) -> Option<SecretResolver> {
        let wanted = settings.cloud.provider == crate::config::ProviderKind::Ec2
            || !settings.ec2.endpoint_url.is_empty();
        wanted.then(|| {
            let chain = CredentialChain::standard(&settings.ec2.region);
            SecretResolver::new(
                &settings.ec2.endpoint_url,
                Arc::new(chain),
                settings.ec2.max_attempts,
            )
        })
    }

    /// Every secret's value, by name. The error names the secret and what AWS said, never a value;
    /// it is retryable when AWS's answer was (throttling, no connection).
    pub async fn resolve(
        &self,
        secrets: &BTreeMap<String, String>,
    ) -> Result<Vec<(String, SecretString)>> {
        let mut values = Vec::with_capacity(secrets.len());
        for (name, arn) in secrets {
            let value = self.resolve_one(name, arn).await?;
            values.push((name.clone(), value));
        }
        Ok(values)
    }

    async fn resolve_one(&self, name: &str, arn: &str) -> Result<SecretString> {
        let what = format!("secret {name}");
        let parsed = SecretRef::parse(arn).map_err(|why| Error::invalid(&what, why))?;
        let (answer, pointer) = match parsed {
            SecretRef::Parameter { region, name } => {
                let client = self.client(&region, ("ssm", "AmazonSSM"));
                let input = json!({"Name": name, "WithDecryption": true});
                let answer = client.call("GetParameter", &input).await;
                (answer, "/Parameter/Value")
            }
            SecretRef::Secret { region, arn } => {
                let client = self.client(&region, ("secretsmanager", "secretsmanager"));
                let answer = client
                    .call("GetSecretValue", &json!({ "SecretId": arn }))
                    .await;
                (answer, "/SecretString")
            }
        };
        let answer = answer.map_err(|e| e.into_error(&what))?;
        answer
            .pointer(pointer)
            .and_then(|value| value.as_str())
            .map(|value| SecretString::from(value.to_string()))
            .ok_or_else(|| Error::invalid(&what, "AWS answered without a text value"))
    }

    fn client(&self, region: &str, service: (&'static str, &'static str)) -> JsonClient {
        JsonClient::new(
            &self.endpoint,
            region,
            service,
            self.credentials.clone(),
            self.max_attempts,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_of_parameters_and_secrets_are_read_and_others_refused() {
        assert_eq!(
            SecretRef::parse("arn:aws:ssm:us-east-1:123456789012:parameter/prod/db/password"),
            Ok(SecretRef::Parameter {
                region: "us-east-1".into(),
                name: "/prod/db/password".into()
            })
        );
        assert_eq!(
            SecretRef::parse("arn:aws:ssm:eu-west-1:123456789012:parameter/token"),
            Ok(SecretRef::Parameter {
                region: "eu-west-1".into(),
                name: "token".into()
            })
        );
        let secret = "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf";
        assert!(matches!(
            SecretRef::parse(secret),
            Ok(SecretRef::Secret { ref arn, .. }) if arn == secret
        ));
        for bad in [
            "",
            "password",
            "arn:aws:s3:::bucket/key",
            "arn:aws:ssm:us-east-1:123:document/x",
            "arn:aws:ssm:US EAST:123:parameter/x",
            "arn:aws:secretsmanager:us-east-1:123:secret:",
        ] {
            assert!(SecretRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_must_be_environment_names_of_the_users() {
        let arn = "arn:aws:ssm:us-east-1:123456789012:parameter/x".to_string();
        let one = |name: &str| BTreeMap::from([(name.to_string(), arn.clone())]);
        assert!(validate(&one("DB_PASSWORD"), "s").is_ok());
        for bad in ["", "1X", "A-B", "SPOT_RUN_ID", "A B"] {
            let err = validate(&one(bad), "s").unwrap_err();
            assert_eq!(err.field.as_deref(), Some(format!("s.{bad}").as_str()));
        }
        let many: BTreeMap<String, String> =
            (0..33).map(|i| (format!("S{i}"), arn.clone())).collect();
        assert!(validate(&many, "s").is_err());
    }
}
