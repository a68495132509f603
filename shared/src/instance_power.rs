//! The instance-power API: instances that exist already, through EC2's API (see [`crate::aws`]) with
//! the standard AWS credential chain (environment, profile, instance role) and an optional endpoint
//! override (moto's server in tests). It serves the instance runner (minion's `instanceRunner`: start,
//! stop or reboot an existing instance, only on instances tagged as the account's own unless
//! configuration allows more), and hands its client to the `ec2` provider
//! ([`crate::cloud::ec2_fleet`]), which launches.

use std::collections::HashMap;
use std::sync::Arc;

use crate::aws::{ec2, CredentialChain, Params, QueryClient};
pub use crate::config::Ec2Settings;
use crate::error::{Error, ErrorCode, Result};

pub use crate::model::PowerAction;

/// What we need to know of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    pub id: String,
    pub state: String,
    pub tags: HashMap<String, String>,
    pub dns_name: Option<String>,
    pub private_dns_name: Option<String>,
}

pub struct Ec2 {
    client: QueryClient,
    settings: Ec2Settings,
    /// False on a deployment with the local provider and no `[ec2]` endpoint: every call is
    /// refused as bad input, and nothing looks for credentials (no metadata request).
    configured: bool,
}

/// What a call answers on a deployment with no EC2 configured.
pub const NO_EC2: &str =
    "no EC2 is configured (the local provider, and no [ec2] endpoint_url): instances cannot be used";

impl Ec2 {
    /// The deployment's EC2: configured when the cloud provider is `ec2` or `[ec2]` names an
    /// endpoint; otherwise [`Ec2::unconfigured`], which touches no credential chain.
    pub async fn for_deployment(settings: &crate::config::Settings) -> Ec2 {
        let wanted = settings.cloud.provider == crate::config::ProviderKind::Ec2
            || !settings.ec2.endpoint_url.is_empty();
        if wanted {
            Ec2::from_settings(&settings.ec2).await
        } else {
            Ec2::unconfigured(&settings.ec2)
        }
    }

    /// An EC2 that refuses every call ([`NO_EC2`]): its credential chain has no source, so nothing
    /// goes looking for credentials (environment, profile, the metadata address).
    pub fn unconfigured(settings: &Ec2Settings) -> Ec2 {
        let nowhere = CredentialChain::new(&[], Default::default(), &settings.region, "");
        Ec2 {
            client: ec2::client(
                &settings.endpoint_url,
                &settings.region,
                Arc::new(nowhere),
                1,
            ),
            settings: settings.clone(),
            configured: false,
        }
    }

    /// Whether instances can be used at all (see [`Ec2::for_deployment`]).
    pub fn is_configured(&self) -> bool {
        self.configured
    }

    fn check_configured(&self) -> Result<()> {
        if self.configured {
            Ok(())
        } else {
            Err(Error::new(ErrorCode::InvalidInput, NO_EC2))
        }
    }

    /// An EC2 with the standard AWS credential chain and the `[ec2]` settings. Credentials are
    /// looked for at the first call, not here.
    pub async fn from_settings(settings: &Ec2Settings) -> Ec2 {
        let chain = CredentialChain::standard(&settings.region);
        Ec2 {
            client: ec2::client(
                &settings.endpoint_url,
                &settings.region,
                Arc::new(chain),
                settings.max_attempts,
            ),
            settings: settings.clone(),
            configured: true,
        }
    }

    /// The Query API client, for calls this module does not wrap.
    pub fn client(&self) -> &QueryClient {
        &self.client
    }

    pub async fn describe(&self, instance_id: &str) -> Result<Option<InstanceInfo>> {
        self.check_configured()?;
        let pages = ec2::describe_instances(
            &self.client,
            Params::new().filter("instance-id", [instance_id]),
        )
        .await
        .map_err(|e| e.into_error("DescribeInstances"))?;
        let instance = pages
            .iter()
            .flat_map(ec2::instances)
            .find(|i| i.text_at(&["instanceId"]) == Some(instance_id));
        Ok(instance.map(|i| InstanceInfo {
            id: instance_id.to_string(),
            state: i
                .text_at(&["instanceState", "name"])
                .unwrap_or_default()
                .to_string(),
            tags: i.tags().into_iter().collect(),
            dns_name: i.text_at(&["dnsName"]).map(str::to_string),
            private_dns_name: i.text_at(&["privateDnsName"]).map(str::to_string),
        }))
    }

    /// The instance, if `account` may act on it; refused otherwise, naming why.
    pub async fn owned_instance(&self, instance_id: &str, account: &str) -> Result<InstanceInfo> {
        let info = self
            .describe(instance_id)
            .await?
            .ok_or_else(|| Error::not_found(format!("no instance {instance_id}")))?;
        match info.tags.get(&self.settings.account_tag) {
            Some(owner) if owner == account => Ok(info),
            None if self.settings.allow_untagged => Ok(info),
            _ => Err(Error::forbidden(format!(
                "instance {instance_id} is not tagged {}={account}",
                self.settings.account_tag
            ))),
        }
    }

    /// Starts, stops or reboots an instance of `account`; returns what EC2 says it is now.
    pub async fn power(
        &self,
        instance_id: &str,
        account: &str,
        action: PowerAction,
    ) -> Result<String> {
        self.owned_instance(instance_id, account).await?;
        let (call, list) = match action {
            PowerAction::Start => ("StartInstances", "instancesSet"),
            PowerAction::Stop => ("StopInstances", "instancesSet"),
            PowerAction::Reboot => ("RebootInstances", ""),
        };
        let answer = self
            .client
            .call(call, &Params::new().list("InstanceId", [instance_id]))
            .await
            .map_err(|e| e.into_error(call))?;
        if action == PowerAction::Reboot {
            return Ok("rebooting".to_string());
        }
        let state = answer
            .items(&[list])
            .next()
            .and_then(|change| change.text_at(&["currentState", "name"]))
            .unwrap_or_default()
            .to_string();
        Ok(state)
    }
}
