//! The container's secret variables (`runner.secrets`): the values the provisioner gave this process
//! (the local provider, in [`AGENT_SECRETS_VAR`]), else read from AWS with this instance's own
//! credentials (its role, through the metadata service). Never logged, never sent to the api.

use std::collections::BTreeMap;
use std::sync::Arc;

use secrecy::ExposeSecret;
use spot_shared::aws::CredentialChain;
use spot_shared::messages::RunSpec;
use spot_shared::secrets::{SecretRef, SecretResolver, AGENT_SECRETS_VAR};

/// Attempts per AWS call from the instance.
const MAX_ATTEMPTS: u32 = 4;

/// `NAME=value` for each of the run's secrets. The error names the secret and why, never a value.
pub async fn secret_env(spec: &RunSpec) -> Result<Vec<String>, String> {
    if spec.secrets.is_empty() {
        return Ok(Vec::new());
    }
    if let Ok(given) = std::env::var(AGENT_SECRETS_VAR) {
        let values: BTreeMap<String, String> = serde_json::from_str(&given)
            .map_err(|_| format!("{AGENT_SECRETS_VAR} is not a JSON object of strings"))?;
        return spec
            .secrets
            .keys()
            .map(|name| match values.get(name) {
                Some(value) => Ok(format!("{name}={value}")),
                None => Err(format!("secret {name}: not given to this agent")),
            })
            .collect();
    }
    // The credential chain's region (for STS): the first secret's; each call goes to its own.
    let region = spec
        .secrets
        .values()
        .find_map(|arn| match SecretRef::parse(arn).ok()? {
            SecretRef::Parameter { region, .. } | SecretRef::Secret { region, .. } => Some(region),
        })
        .unwrap_or_else(|| "us-east-1".into());
    let chain = CredentialChain::standard(&region);
    let resolver = SecretResolver::new(&spec.aws_endpoint_url, Arc::new(chain), MAX_ATTEMPTS);
    let values = resolver
        .resolve(&spec.secrets)
        .await
        .map_err(|err| err.to_string())?;
    Ok(values
        .into_iter()
        .map(|(name, value)| format!("{name}={}", value.expose_secret()))
        .collect())
}
