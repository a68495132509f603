//! The `ec2` provider: one spot instance per run attempt, from an EC2 Fleet of type `instant`.
//!
//! A launch creates a launch template for the attempt (image, instance profile, security groups, key
//! pair, `InstanceInitiatedShutdownBehavior=terminate`, the root volume, volume tags and the user data
//! that boots the agent), asks a fleet for one spot instance over every instance type × subnet pool with
//! the `price-capacity-optimized` strategy, falls back to on-demand when the fleet finds no spot capacity
//! and the job allows it, and deletes the template again. Instances are tagged with the cluster, the
//! account, the job, the run and the launch key (run and attempt): the launch key is how a repeated
//! launch finds the instance instead of starting a second one. Throttling and 5xx answers are retried by
//! the SDK with backoff (`ec2.max_attempts`); other errors are not.

use std::collections::HashMap;

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    DefaultTargetCapacityType, Filter, FleetLaunchTemplateConfigRequest,
    FleetLaunchTemplateOverridesRequest, FleetLaunchTemplateSpecificationRequest,
    FleetOnDemandAllocationStrategy, FleetType, InstanceType,
    LaunchTemplateBlockDeviceMappingRequest, LaunchTemplateEbsBlockDeviceRequest,
    LaunchTemplateHttpTokensState, LaunchTemplateIamInstanceProfileSpecificationRequest,
    LaunchTemplateInstanceMetadataEndpointState, LaunchTemplateInstanceMetadataOptionsRequest,
    LaunchTemplateTagSpecificationRequest, OnDemandOptionsRequest, RequestLaunchTemplateData,
    ResourceType, ShutdownBehavior, SpotAllocationStrategy, SpotOptionsRequest, Tag,
    TagSpecification, TargetCapacitySpecificationRequest, VolumeType,
};
use base64::Engine;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::{CloudInstance, LaunchFailure, LaunchRequest, Launched};
pub use crate::config::Ec2CloudSettings;
use crate::error::{Error, Result};
use crate::instance_power::{non_empty, sdk_error, Ec2, Ec2Settings};

/// Tag naming the deployment an instance belongs to.
pub const CLUSTER_TAG: &str = "spot-scheduler:cluster";
pub const JOB_TAG: &str = "spot-scheduler:job";
pub const RUN_TAG: &str = "spot-scheduler:run";
/// Tag naming the run and attempt an instance was launched for (`{run}-{attempt}`).
pub const LAUNCH_TAG: &str = "spot-scheduler:launch";

/// States of an instance that still costs money or may still run a job.
const LIVE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];

pub struct Ec2Cloud {
    client: aws_sdk_ec2::Client,
    settings: Ec2CloudSettings,
    account_tag: String,
    /// Boxed: the cache's lock would make every `Cloud` as large as this variant.
    spot_prices: Box<super::spot_prices::SpotPrices>,
}

/// Which market a fleet asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Market {
    Spot,
    OnDemand,
}

impl Ec2Cloud {
    pub async fn new(ec2: &Ec2Settings, settings: &Ec2CloudSettings) -> Result<Ec2Cloud> {
        if settings.image_id.trim().is_empty() {
            return Err(Error::invalid(
                "cloud.ec2.image_id",
                "must name an AMI when the ec2 provider is used",
            ));
        }
        let cluster_ok = !settings.cluster.is_empty()
            && settings.cluster.len() <= 48
            && settings
                .cluster
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !cluster_ok {
            return Err(Error::invalid(
                "cloud.ec2.cluster",
                "must be 1 to 48 letters, digits, '-' or '_'",
            ));
        }
        if settings.instance_types.is_empty() {
            return Err(Error::invalid(
                "cloud.ec2.instance_types",
                "must name at least one instance type",
            ));
        }
        Ok(Ec2Cloud {
            client: Ec2::from_settings(ec2).await.client().clone(),
            settings: settings.clone(),
            account_tag: ec2.account_tag.clone(),
            spot_prices: Default::default(),
        })
    }

    /// The spot price per hour of a type in a zone (see [`super::spot_prices`]).
    pub async fn spot_price(
        &self,
        instance_type: &str,
        zone: Option<&str>,
        pricing: &crate::pricing::PricingSettings,
    ) -> Result<Option<f64>> {
        let keep_for = std::time::Duration::from_secs(pricing.spot_price_cache_secs);
        self.spot_prices
            .price(&self.client, instance_type, zone, keep_for)
            .await
    }

    /// The availability zone an instance runs in, as EC2 describes it.
    async fn zone_of(&self, instance_id: &str) -> Result<Option<String>> {
        let output = self
            .client
            .describe_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map_err(|e| sdk_error("DescribeInstances", e))?;
        Ok(output
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find_map(|i| i.placement()?.availability_zone().map(str::to_string)))
    }

    fn launch_key(run_id: &str, attempt: u32) -> String {
        format!("{run_id}-{attempt}")
    }

    /// The idempotency token of a launch: EC2 answers a repeated call with the first one's fleet.
    /// (moto ignores it, so nothing here relies on it alone.)
    fn client_token(&self, key: &str, market: Market) -> String {
        let digest = Sha256::digest(format!("{}/{key}/{market:?}", self.settings.cluster));
        hex::encode(&digest[..24])
    }

    fn cluster_filter(&self) -> Filter {
        Filter::builder()
            .name(format!("tag:{CLUSTER_TAG}"))
            .values(&self.settings.cluster)
            .build()
    }

    fn live_filter() -> Filter {
        Filter::builder()
            .name("instance-state-name")
            .set_values(Some(LIVE_STATES.iter().map(|s| s.to_string()).collect()))
            .build()
    }

    pub async fn find_launch(&self, run_id: &str, attempt: u32) -> Result<Option<Launched>> {
        let output = self
            .client
            .describe_instances()
            .filters(self.cluster_filter())
            .filters(
                Filter::builder()
                    .name(format!("tag:{LAUNCH_TAG}"))
                    .values(Self::launch_key(run_id, attempt))
                    .build(),
            )
            .filters(Self::live_filter())
            .send()
            .await
            .map_err(|e| sdk_error("DescribeInstances", e))?;
        let found = output
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .next()
            .map(|instance| Launched {
                instance_id: instance.instance_id().unwrap_or_default().to_string(),
                instance_type: instance.instance_type().map(|t| t.as_str().to_string()),
                lifecycle: Some(
                    instance
                        .instance_lifecycle()
                        .map_or("on-demand", |l| l.as_str())
                        .to_string(),
                ),
                dns_name: non_empty(instance.public_dns_name()),
                ip_address: non_empty(instance.private_ip_address()),
                zone: instance
                    .placement()
                    .and_then(|p| p.availability_zone())
                    .map(str::to_string),
                pool_errors: Vec::new(),
            });
        Ok(found.filter(|l| !l.instance_id.is_empty()))
    }

    fn tags(&self, request: &LaunchRequest<'_>) -> Vec<Tag> {
        let key = Self::launch_key(request.run_id, request.attempt);
        [
            (CLUSTER_TAG, self.settings.cluster.as_str()),
            (self.account_tag.as_str(), request.account),
            (JOB_TAG, request.job_id),
            (RUN_TAG, request.run_id),
            (LAUNCH_TAG, key.as_str()),
            ("Name", &format!("spot-{key}")),
        ]
        .into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
    }

    pub async fn launch(&self, request: &LaunchRequest<'_>) -> Result<Launched, LaunchFailure> {
        let template_id = self.create_template(request).await?;
        let outcome = self.launch_from_template(request, &template_id).await;
        // The fleet has read the template; keeping it would only pile templates up.
        if let Err(err) = self
            .client
            .delete_launch_template()
            .launch_template_id(&template_id)
            .send()
            .await
        {
            tracing::warn!(template_id, error = %sdk_error("DeleteLaunchTemplate", err), "launch template left behind");
        }
        let mut launched = outcome?;
        if launched.zone.is_none() {
            // For its price: spot prices are per zone. Not knowing it fails nothing.
            launched.zone = self
                .zone_of(&launched.instance_id)
                .await
                .unwrap_or_else(|err| {
                    tracing::warn!(instance_id = %launched.instance_id, error = %err, "zone unknown");
                    None
                });
        }
        Ok(launched)
    }

    async fn launch_from_template(
        &self,
        request: &LaunchRequest<'_>,
        template_id: &str,
    ) -> Result<Launched, LaunchFailure> {
        let mut pool_errors = Vec::new();
        let mut markets = vec![Market::Spot];
        if request.spec.on_demand_fallback {
            markets.push(Market::OnDemand);
        }
        for market in markets {
            match self.create_fleet(request, template_id, market).await {
                Ok((Some(mut launched), errors)) => {
                    pool_errors.extend(errors);
                    launched.pool_errors = pool_errors;
                    return Ok(launched);
                }
                Ok((None, errors)) => {
                    tracing::warn!(
                        run_id = request.run_id,
                        ?market,
                        ?errors,
                        "the fleet launched nothing"
                    );
                    pool_errors.extend(errors);
                }
                Err(mut failure) => {
                    failure.pool_errors = pool_errors;
                    return Err(failure);
                }
            }
        }
        let reason = if pool_errors.is_empty() {
            "the fleet launched no instance".to_string()
        } else {
            format!("no capacity: {}", pool_errors.join("; "))
        };
        Err(LaunchFailure {
            error: Error::new(crate::ErrorCode::Conflict, reason),
            may_have_launched: false,
            pool_errors,
        })
    }

    /// The attempt's launch template. One left by an earlier try of the same attempt is replaced (its
    /// user data carries an older secret).
    async fn create_template(&self, request: &LaunchRequest<'_>) -> Result<String> {
        let name = format!(
            "{}-{}",
            self.settings.cluster,
            Self::launch_key(request.run_id, request.attempt)
        );
        let user_data = super::user_data::render(request.boot, &self.settings.agent_download_url);
        // IMDSv2 only, one hop: the agent on the instance reads its metadata, a container behind
        // Docker's bridge (one hop more) cannot reach the instance's role or its user data.
        let metadata = LaunchTemplateInstanceMetadataOptionsRequest::builder()
            .http_endpoint(LaunchTemplateInstanceMetadataEndpointState::Enabled)
            .http_tokens(LaunchTemplateHttpTokensState::Required)
            .http_put_response_hop_limit(1)
            .build();
        let mut data = RequestLaunchTemplateData::builder()
            .image_id(&self.settings.image_id)
            .metadata_options(metadata)
            .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
            .user_data(base64::engine::general_purpose::STANDARD.encode(user_data))
            .tag_specifications(
                LaunchTemplateTagSpecificationRequest::builder()
                    .resource_type(ResourceType::Volume)
                    .set_tags(Some(self.tags(request)))
                    .build(),
            );
        let profile = self.settings.instance_profile.trim();
        if !profile.is_empty() {
            let spec = LaunchTemplateIamInstanceProfileSpecificationRequest::builder();
            let spec = if profile.starts_with("arn:") {
                spec.arn(profile)
            } else {
                spec.name(profile)
            };
            data = data.iam_instance_profile(spec.build());
        }
        if !self.settings.security_group_ids.is_empty() {
            data = data.set_security_group_ids(Some(self.settings.security_group_ids.clone()));
        }
        if !self.settings.key_name.is_empty() {
            data = data.key_name(&self.settings.key_name);
        }
        if let Some(gb) = request.spec.disk_gb {
            data = data.block_device_mappings(
                LaunchTemplateBlockDeviceMappingRequest::builder()
                    .device_name(&self.settings.root_device_name)
                    .ebs(
                        LaunchTemplateEbsBlockDeviceRequest::builder()
                            .volume_size(gb as i32)
                            .volume_type(VolumeType::Gp3)
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            );
        }
        let data = data.build();
        for _ in 0..2 {
            match self
                .client
                .create_launch_template()
                .launch_template_name(&name)
                .launch_template_data(data.clone())
                .send()
                .await
            {
                Ok(output) => {
                    return output
                        .launch_template()
                        .and_then(|t| t.launch_template_id())
                        .map(str::to_string)
                        .ok_or_else(|| Error::internal("CreateLaunchTemplate returned no id"))
                }
                Err(err) if err.code().is_some_and(|c| c.contains("AlreadyExists")) => {
                    self.client
                        .delete_launch_template()
                        .launch_template_name(&name)
                        .send()
                        .await
                        .map_err(|e| sdk_error("DeleteLaunchTemplate", e))?;
                }
                Err(err) => return Err(sdk_error("CreateLaunchTemplate", err)),
            }
        }
        Err(Error::unavailable(format!(
            "launch template {name} keeps existing"
        )))
    }

    /// One `instant` fleet of one instance in `market`: the instance, if any, and the errors of the
    /// pools that refused.
    async fn create_fleet(
        &self,
        request: &LaunchRequest<'_>,
        template_id: &str,
        market: Market,
    ) -> Result<(Option<Launched>, Vec<String>), LaunchFailure> {
        let types = if request.spec.instance_types.is_empty() {
            &self.settings.instance_types
        } else {
            &request.spec.instance_types
        };
        let subnets: Vec<Option<&String>> = if !request.spec.subnets.is_empty() {
            request.spec.subnets.iter().map(Some).collect()
        } else if !self.settings.subnet_ids.is_empty() {
            self.settings.subnet_ids.iter().map(Some).collect()
        } else {
            vec![None]
        };
        let mut config = FleetLaunchTemplateConfigRequest::builder().launch_template_specification(
            FleetLaunchTemplateSpecificationRequest::builder()
                .launch_template_id(template_id)
                .version("$Latest")
                .build(),
        );
        for instance_type in types {
            for subnet in &subnets {
                let mut pool = FleetLaunchTemplateOverridesRequest::builder()
                    .instance_type(InstanceType::from(instance_type.as_str()))
                    .set_subnet_id(subnet.cloned());
                if market == Market::Spot {
                    pool = pool.set_max_price(request.spec.max_price.clone());
                }
                config = config.overrides(pool.build());
            }
        }
        let capacity = TargetCapacitySpecificationRequest::builder()
            .total_target_capacity(1)
            .default_target_capacity_type(match market {
                Market::Spot => DefaultTargetCapacityType::Spot,
                Market::OnDemand => DefaultTargetCapacityType::OnDemand,
            })
            .build();
        let key = Self::launch_key(request.run_id, request.attempt);
        let fleet_tags = TagSpecification::builder()
            .resource_type(ResourceType::Fleet)
            .set_tags(Some(self.tags(request)))
            .build();
        let instance_tags = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .set_tags(Some(self.tags(request)))
            .build();
        let mut call = self
            .client
            .create_fleet()
            .r#type(FleetType::Instant)
            .target_capacity_specification(capacity)
            .launch_template_configs(config.build())
            .tag_specifications(fleet_tags)
            .tag_specifications(instance_tags)
            .client_token(self.client_token(&key, market));
        call = match market {
            Market::Spot => call.spot_options(
                SpotOptionsRequest::builder()
                    .allocation_strategy(SpotAllocationStrategy::PriceCapacityOptimized)
                    .build(),
            ),
            Market::OnDemand => call.on_demand_options(
                OnDemandOptionsRequest::builder()
                    .allocation_strategy(FleetOnDemandAllocationStrategy::LowestPrice)
                    .build(),
            ),
        };
        let output = call.send().await.map_err(|err| {
            // Sent but unanswered: EC2 may have launched; the next try must look first.
            let may_have_launched =
                matches!(err, SdkError::TimeoutError(_) | SdkError::ResponseError(_));
            LaunchFailure {
                error: sdk_error("CreateFleet", err),
                may_have_launched,
                pool_errors: Vec::new(),
            }
        })?;
        let errors = output
            .errors()
            .iter()
            .map(|e| {
                let pool = e
                    .launch_template_and_overrides()
                    .and_then(|l| l.overrides())
                    .map(|o| {
                        let mut pool = o
                            .instance_type()
                            .map(|t| t.as_str().to_string())
                            .unwrap_or_default();
                        if let Some(subnet) = o.subnet_id() {
                            pool = format!("{pool} in {subnet}");
                        }
                        pool
                    })
                    .unwrap_or_default();
                format!(
                    "{} {pool}: {}: {}",
                    e.lifecycle().map_or("spot", |l| l.as_str()),
                    e.error_code().unwrap_or("unknown"),
                    e.error_message().unwrap_or("")
                )
            })
            .collect();
        let launched = output.instances().iter().find_map(|instance| {
            let id = instance.instance_ids().first()?;
            Some(Launched {
                instance_id: id.clone(),
                instance_type: instance.instance_type().map(|t| t.as_str().to_string()),
                lifecycle: Some(
                    instance
                        .lifecycle()
                        .map_or("spot", |l| l.as_str())
                        .to_string(),
                ),
                zone: instance
                    .launch_template_and_overrides()
                    .and_then(|l| l.overrides())
                    .and_then(|o| o.availability_zone())
                    .map(str::to_string),
                ..Launched::default()
            })
        });
        Ok((launched, errors))
    }

    pub async fn terminate(&self, instance_id: &str) -> Result<()> {
        match self
            .client
            .terminate_instances()
            .instance_ids(instance_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if err.code() == Some("InvalidInstanceID.NotFound") => Ok(()),
            Err(err) => Err(sdk_error("TerminateInstances", err)),
        }
    }

    /// Every live instance of the cluster.
    pub async fn instances(&self) -> Result<Vec<CloudInstance>> {
        let mut found = Vec::new();
        let mut pages = self
            .client
            .describe_instances()
            .filters(self.cluster_filter())
            .filters(Self::live_filter())
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_error("DescribeInstances", e))?;
            for instance in page.reservations().iter().flat_map(|r| r.instances()) {
                let Some(id) = instance.instance_id() else {
                    continue;
                };
                let tags: HashMap<&str, &str> = instance
                    .tags()
                    .iter()
                    .filter_map(|t| Some((t.key()?, t.value()?)))
                    .collect();
                found.push(CloudInstance {
                    id: id.to_string(),
                    run_id: tags.get(RUN_TAG).map(|s| s.to_string()),
                    launched_at: instance.launch_time().and_then(to_chrono),
                });
            }
        }
        Ok(found)
    }

    /// Cancels the cluster's spot requests still open after `max_age`, and deletes its non-instant
    /// fleets older than that (terminating what they launched).
    pub async fn cancel_stale_requests(&self, max_age: chrono::Duration) -> Result<usize> {
        let cutoff = Utc::now() - max_age;
        let requests = self
            .client
            .describe_spot_instance_requests()
            .filters(self.cluster_filter())
            .filters(Filter::builder().name("state").values("open").build())
            .send()
            .await
            .map_err(|e| sdk_error("DescribeSpotInstanceRequests", e))?;
        let stale: Vec<String> = requests
            .spot_instance_requests()
            .iter()
            .filter(|r| {
                r.create_time()
                    .and_then(to_chrono)
                    .is_some_and(|t| t < cutoff)
            })
            .filter_map(|r| r.spot_instance_request_id().map(str::to_string))
            .collect();
        let mut cancelled = stale.len();
        if !stale.is_empty() {
            self.client
                .cancel_spot_instance_requests()
                .set_spot_instance_request_ids(Some(stale))
                .send()
                .await
                .map_err(|e| sdk_error("CancelSpotInstanceRequests", e))?;
        }
        let fleets = self
            .client
            .describe_fleets()
            .send()
            .await
            .map_err(|e| sdk_error("DescribeFleets", e))?;
        let stale_fleets: Vec<String> = fleets
            .fleets()
            .iter()
            .filter(|f| f.r#type() != Some(&FleetType::Instant))
            .filter(|f| {
                f.tags().iter().any(|t| {
                    t.key() == Some(CLUSTER_TAG) && t.value() == Some(&self.settings.cluster)
                })
            })
            .filter(|f| {
                f.create_time()
                    .and_then(to_chrono)
                    .is_some_and(|t| t < cutoff)
            })
            .filter_map(|f| f.fleet_id().map(str::to_string))
            .collect();
        if !stale_fleets.is_empty() {
            cancelled += stale_fleets.len();
            self.client
                .delete_fleets()
                .set_fleet_ids(Some(stale_fleets))
                .terminate_instances(true)
                .send()
                .await
                .map_err(|e| sdk_error("DeleteFleets", e))?;
        }
        Ok(cancelled)
    }
}

fn to_chrono(time: &aws_sdk_ec2::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(time.secs(), time.subsec_nanos())
}
