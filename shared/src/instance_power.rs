//! The instance-power API: instances that exist already, through aws-sdk-ec2 with the standard AWS
//! configuration chain (environment, profile, instance role) and an optional endpoint override (moto's
//! server in tests). It serves the instance runner (minion's `instanceRunner`: start, stop or reboot an
//! existing instance, only on instances tagged as the account's own unless configuration allows more),
//! and hands its client to the `ec2` provider ([`crate::cloud::ec2_fleet`]), which launches.

use std::collections::HashMap;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::Filter;

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
    client: aws_sdk_ec2::Client,
    settings: Ec2Settings,
    /// False on a deployment with the local provider and no `[ec2]` endpoint: every call is
    /// refused as bad input, and the SDK never looks for credentials (no metadata request).
    configured: bool,
}

/// What a call answers on a deployment with no EC2 configured.
pub const NO_EC2: &str =
    "no EC2 is configured (the local provider, and no [ec2] endpoint_url): instances cannot be used";

/// Maps an SDK error: throttling, 5xx and transport failures may pass (retryable); the rest not.
pub fn sdk_error<E, R>(what: &str, err: aws_sdk_ec2::error::SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    use aws_sdk_ec2::error::SdkError;
    let code = match &err {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("");
            let message = service.err().message().unwrap_or("");
            let kind = if code.contains("NotFound") || code.contains("Malformed") {
                ErrorCode::NotFound
            } else if code.contains("Throttl")
                || code == "RequestLimitExceeded"
                || code.contains("Unavailable")
                || code == "InternalError"
            {
                ErrorCode::Unavailable
            } else if code == "UnauthorizedOperation" || code == "AuthFailure" {
                ErrorCode::Forbidden
            } else {
                ErrorCode::InvalidInput
            };
            return Error::new(kind, format!("{what}: {code}: {message}"));
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            ErrorCode::Unavailable
        }
        _ => ErrorCode::Internal,
    };
    Error::new(code, format!("{what}: {err:?}"))
}

/// EC2 answers "" for names an instance does not have (yet); that is no name.
pub fn non_empty(value: Option<&str>) -> Option<String> {
    value.filter(|s| !s.is_empty()).map(str::to_string)
}

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

    /// An EC2 that refuses every call ([`NO_EC2`]): its client has no credentials provider, so
    /// nothing goes looking for credentials (environment, profile, the metadata address).
    pub fn unconfigured(settings: &Ec2Settings) -> Ec2 {
        let config = aws_sdk_ec2::Config::builder()
            .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
            .region(aws_sdk_ec2::config::Region::new(settings.region.clone()))
            .build();
        Ec2 {
            client: aws_sdk_ec2::Client::from_conf(config),
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

    /// An EC2 with the standard AWS configuration chain and the `[ec2]` settings.
    pub async fn from_settings(settings: &Ec2Settings) -> Ec2 {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(settings.region.clone()))
            .retry_config(
                aws_config::retry::RetryConfig::standard()
                    .with_max_attempts(settings.max_attempts.max(1)),
            );
        if !settings.endpoint_url.is_empty() {
            loader = loader.endpoint_url(&settings.endpoint_url);
        }
        let config = loader.load().await;
        Ec2 {
            client: aws_sdk_ec2::Client::new(&config),
            settings: settings.clone(),
            configured: true,
        }
    }

    pub fn client(&self) -> &aws_sdk_ec2::Client {
        &self.client
    }

    pub async fn describe(&self, instance_id: &str) -> Result<Option<InstanceInfo>> {
        self.check_configured()?;
        let output = self
            .client
            .describe_instances()
            .filters(
                Filter::builder()
                    .name("instance-id")
                    .values(instance_id)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| sdk_error("DescribeInstances", e))?;
        let instance = output
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(instance_id));
        Ok(instance.map(|i| InstanceInfo {
            id: instance_id.to_string(),
            state: i
                .state()
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_string())
                .unwrap_or_default(),
            tags: i
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
                .collect(),
            dns_name: non_empty(i.public_dns_name()),
            private_dns_name: non_empty(i.private_dns_name()),
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
        match action {
            PowerAction::Start => {
                let out = self
                    .client
                    .start_instances()
                    .instance_ids(instance_id)
                    .send()
                    .await
                    .map_err(|e| sdk_error("StartInstances", e))?;
                Ok(out
                    .starting_instances()
                    .first()
                    .and_then(|c| c.current_state())
                    .and_then(|s| s.name())
                    .map(|n| n.as_str().to_string())
                    .unwrap_or_default())
            }
            PowerAction::Stop => {
                let out = self
                    .client
                    .stop_instances()
                    .instance_ids(instance_id)
                    .send()
                    .await
                    .map_err(|e| sdk_error("StopInstances", e))?;
                Ok(out
                    .stopping_instances()
                    .first()
                    .and_then(|c| c.current_state())
                    .and_then(|s| s.name())
                    .map(|n| n.as_str().to_string())
                    .unwrap_or_default())
            }
            PowerAction::Reboot => {
                self.client
                    .reboot_instances()
                    .instance_ids(instance_id)
                    .send()
                    .await
                    .map_err(|e| sdk_error("RebootInstances", e))?;
                Ok("rebooting".to_string())
            }
        }
    }
}
