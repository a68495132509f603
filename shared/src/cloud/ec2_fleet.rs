//! The `ec2` provider: one spot instance per run attempt, from an EC2 Fleet of type `instant`.
//!
//! A launch creates a launch template for the attempt (image, instance profile, security groups, key
//! pair, `InstanceInitiatedShutdownBehavior=terminate`, the root volume, volume tags and the user data
//! that boots the agent), asks a fleet for one spot instance over every instance type × subnet pool with
//! the `price-capacity-optimized` strategy, falls back to on-demand when the fleet finds no spot capacity
//! and the job allows it, and deletes the template again. Instances are tagged with the cluster, the
//! account, the job, the run and the launch key (run and attempt): the launch key is how a repeated
//! launch finds the instance instead of starting a second one. Throttling and 5xx answers are retried by
//! with backoff (`ec2.max_attempts`, see [`crate::aws::query`]); other errors are not.

use std::collections::HashMap;

use base64::Engine;
use sha2::{Digest, Sha256};

use super::{CloudInstance, LaunchFailure, LaunchRequest, Launched};
use crate::aws::{ec2, Params, QueryClient};
pub use crate::config::Ec2CloudSettings;
use crate::error::{Error, Result};
use crate::instance_power::{Ec2, Ec2Settings};

/// Tag naming the deployment an instance belongs to.
pub const CLUSTER_TAG: &str = "spot-scheduler:cluster";
pub const JOB_TAG: &str = "spot-scheduler:job";
pub const RUN_TAG: &str = "spot-scheduler:run";
/// Tag naming the run and attempt an instance was launched for (`{run}-{attempt}`).
pub const LAUNCH_TAG: &str = "spot-scheduler:launch";

/// States of an instance that still costs money or may still run a job.
const LIVE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];

pub struct Ec2Cloud {
    client: QueryClient,
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
        let pages = ec2::describe_instances(
            &self.client,
            Params::new().list("InstanceId", [instance_id]),
        )
        .await
        .map_err(|e| e.into_error("DescribeInstances"))?;
        let zone = pages.iter().flat_map(ec2::instances).find_map(|i| {
            i.text_at(&["placement", "availabilityZone"])
                .map(str::to_string)
        });
        Ok(zone)
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

    /// The filter on the cluster's tag.
    fn of_cluster(&self, params: Params) -> Params {
        params.filter(&format!("tag:{CLUSTER_TAG}"), [&self.settings.cluster])
    }

    pub async fn find_launch(&self, run_id: &str, attempt: u32) -> Result<Option<Launched>> {
        let params = self
            .of_cluster(Params::new())
            .filter(
                &format!("tag:{LAUNCH_TAG}"),
                [Self::launch_key(run_id, attempt)],
            )
            .filter("instance-state-name", LIVE_STATES);
        let pages = ec2::describe_instances(&self.client, params)
            .await
            .map_err(|e| e.into_error("DescribeInstances"))?;
        let found = pages
            .iter()
            .flat_map(ec2::instances)
            .next()
            .map(|instance| {
                let text = |path: &[&str]| instance.text_at(path).map(str::to_string);
                Launched {
                    instance_id: text(&["instanceId"]).unwrap_or_default(),
                    instance_type: text(&["instanceType"]),
                    // EC2 names the lifecycle of spot instances only.
                    lifecycle: Some(
                        text(&["instanceLifecycle"]).unwrap_or_else(|| "on-demand".into()),
                    ),
                    dns_name: text(&["dnsName"]),
                    ip_address: text(&["privateIpAddress"]),
                    zone: text(&["placement", "availabilityZone"]),
                    pool_errors: Vec::new(),
                }
            });
        Ok(found.filter(|l| !l.instance_id.is_empty()))
    }

    fn tags(&self, request: &LaunchRequest<'_>) -> Vec<(String, String)> {
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
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// A tag specification at `prefix`: the launch's tags on `resource`.
    fn tag_specification(
        &self,
        params: Params,
        prefix: &str,
        resource: &str,
        request: &LaunchRequest<'_>,
    ) -> Params {
        params
            .set(format!("{prefix}.ResourceType"), resource)
            .tags(prefix, self.tags(request))
    }

    pub async fn launch(&self, request: &LaunchRequest<'_>) -> Result<Launched, LaunchFailure> {
        let template_id = self.create_template(request).await?;
        let outcome = self.launch_from_template(request, &template_id).await;
        // The fleet has read the template; keeping it would only pile templates up.
        let delete = Params::new().set("LaunchTemplateId", &template_id);
        if let Err(err) = self.client.call("DeleteLaunchTemplate", &delete).await {
            tracing::warn!(template_id, error = %err, "launch template left behind");
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
        let mut data = Params::new()
            .set("LaunchTemplateName", &name)
            .set("LaunchTemplateData.ImageId", &self.settings.image_id)
            .set("LaunchTemplateData.MetadataOptions.HttpEndpoint", "enabled")
            .set("LaunchTemplateData.MetadataOptions.HttpTokens", "required")
            .set(
                "LaunchTemplateData.MetadataOptions.HttpPutResponseHopLimit",
                "1",
            )
            .set(
                "LaunchTemplateData.InstanceInitiatedShutdownBehavior",
                "terminate",
            )
            .set(
                "LaunchTemplateData.UserData",
                base64::engine::general_purpose::STANDARD.encode(user_data),
            );
        data = self.tag_specification(
            data,
            "LaunchTemplateData.TagSpecification.1",
            "volume",
            request,
        );
        let profile = self.settings.instance_profile.trim();
        if !profile.is_empty() {
            let field = if profile.starts_with("arn:") {
                "Arn"
            } else {
                "Name"
            };
            data = data.set(
                format!("LaunchTemplateData.IamInstanceProfile.{field}"),
                profile,
            );
        }
        data = data.list(
            "LaunchTemplateData.SecurityGroupId",
            &self.settings.security_group_ids,
        );
        if !self.settings.key_name.is_empty() {
            data = data.set("LaunchTemplateData.KeyName", &self.settings.key_name);
        }
        if let Some(gb) = request.spec.disk_gb {
            let disk = "LaunchTemplateData.BlockDeviceMapping.1";
            data = data
                .set(
                    format!("{disk}.DeviceName"),
                    &self.settings.root_device_name,
                )
                .set(format!("{disk}.Ebs.VolumeSize"), gb.to_string())
                .set(format!("{disk}.Ebs.VolumeType"), "gp3")
                .set(format!("{disk}.Ebs.DeleteOnTermination"), "true");
        }
        for _ in 0..2 {
            match self.client.call("CreateLaunchTemplate", &data).await {
                Ok(answer) => {
                    return answer
                        .text_at(&["launchTemplate", "launchTemplateId"])
                        .map(str::to_string)
                        .ok_or_else(|| Error::internal("CreateLaunchTemplate returned no id"))
                }
                Err(err) if err.code().is_some_and(|c| c.contains("AlreadyExists")) => {
                    self.client
                        .call(
                            "DeleteLaunchTemplate",
                            &Params::new().set("LaunchTemplateName", &name),
                        )
                        .await
                        .map_err(|e| e.into_error("DeleteLaunchTemplate"))?;
                }
                Err(err) => return Err(err.into_error("CreateLaunchTemplate")),
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
        let config = "LaunchTemplateConfigs.1";
        let mut params = Params::new()
            .set("Type", "instant")
            .set(
                format!("{config}.LaunchTemplateSpecification.LaunchTemplateId"),
                template_id,
            )
            .set(
                format!("{config}.LaunchTemplateSpecification.Version"),
                "$Latest",
            )
            .set("TargetCapacitySpecification.TotalTargetCapacity", "1")
            .set(
                "TargetCapacitySpecification.DefaultTargetCapacityType",
                match market {
                    Market::Spot => "spot",
                    Market::OnDemand => "on-demand",
                },
            );
        let mut pool = 0;
        for instance_type in types {
            for subnet in &subnets {
                pool += 1;
                let overrides = format!("{config}.Overrides.{pool}");
                params = params
                    .set(format!("{overrides}.InstanceType"), instance_type)
                    .set_some(format!("{overrides}.SubnetId"), subnet.cloned());
                if market == Market::Spot {
                    params = params.set_some(
                        format!("{overrides}.MaxPrice"),
                        request.spec.max_price.clone(),
                    );
                }
            }
        }
        let key = Self::launch_key(request.run_id, request.attempt);
        params = self.tag_specification(params, "TagSpecification.1", "fleet", request);
        params = self.tag_specification(params, "TagSpecification.2", "instance", request);
        params = params.set("ClientToken", self.client_token(&key, market));
        params = match market {
            Market::Spot => {
                params.set("SpotOptions.AllocationStrategy", "price-capacity-optimized")
            }
            Market::OnDemand => params.set("OnDemandOptions.AllocationStrategy", "lowest-price"),
        };
        let answer = self
            .client
            .call("CreateFleet", &params)
            .await
            .map_err(|err| LaunchFailure {
                // Sent but unanswered: EC2 may have launched; the next try must look first.
                may_have_launched: err.may_have_taken_effect(),
                error: err.into_error("CreateFleet"),
                pool_errors: Vec::new(),
            })?;
        let pool_of = |item: &crate::aws::Element| {
            let overrides = item.at(&["launchTemplateAndOverrides", "overrides"]);
            let mut pool = overrides
                .and_then(|o| o.text_at(&["instanceType"]))
                .unwrap_or_default()
                .to_string();
            if let Some(subnet) = overrides.and_then(|o| o.text_at(&["subnetId"])) {
                pool = format!("{pool} in {subnet}");
            }
            pool
        };
        let errors = answer
            .items(&["errorSet"])
            .map(|e| {
                format!(
                    "{} {}: {}: {}",
                    e.text_at(&["lifecycle"]).unwrap_or("spot"),
                    pool_of(e),
                    e.text_at(&["errorCode"]).unwrap_or("unknown"),
                    e.text_at(&["errorMessage"]).unwrap_or("")
                )
            })
            .collect();
        let launched = answer.items(&["fleetInstanceSet"]).find_map(|instance| {
            let id = instance.items(&["instanceIds"]).next()?.text.clone();
            let text = |path: &[&str]| instance.text_at(path).map(str::to_string);
            Some(Launched {
                instance_id: id,
                instance_type: text(&["instanceType"]),
                lifecycle: Some(text(&["lifecycle"]).unwrap_or_else(|| "spot".into())),
                zone: text(&[
                    "launchTemplateAndOverrides",
                    "overrides",
                    "availabilityZone",
                ]),
                ..Launched::default()
            })
        });
        Ok((launched.filter(|l| !l.instance_id.is_empty()), errors))
    }

    pub async fn terminate(&self, instance_id: &str) -> Result<()> {
        let params = Params::new().list("InstanceId", [instance_id]);
        match self.client.call("TerminateInstances", &params).await {
            Ok(_) => Ok(()),
            Err(err) if err.code() == Some("InvalidInstanceID.NotFound") => Ok(()),
            Err(err) => Err(err.into_error("TerminateInstances")),
        }
    }

    /// Every live instance of the cluster.
    pub async fn instances(&self) -> Result<Vec<CloudInstance>> {
        let params = self
            .of_cluster(Params::new())
            .filter("instance-state-name", LIVE_STATES);
        let pages = ec2::describe_instances(&self.client, params)
            .await
            .map_err(|e| e.into_error("DescribeInstances"))?;
        Ok(pages
            .iter()
            .flat_map(ec2::instances)
            .filter_map(|instance| {
                let tags: HashMap<String, String> = instance.tags().into_iter().collect();
                Some(CloudInstance {
                    id: instance.text_at(&["instanceId"])?.to_string(),
                    run_id: tags.get(RUN_TAG).cloned(),
                    launched_at: ec2::time(instance, "launchTime"),
                })
            })
            .collect())
    }

    /// Cancels the cluster's spot requests still open after `max_age`, and deletes its non-instant
    /// fleets older than that (terminating what they launched).
    pub async fn cancel_stale_requests(&self, max_age: chrono::Duration) -> Result<usize> {
        let cutoff = chrono::Utc::now() - max_age;
        let params = self.of_cluster(Params::new()).filter("state", ["open"]);
        let requests = self
            .client
            .call("DescribeSpotInstanceRequests", &params)
            .await
            .map_err(|e| e.into_error("DescribeSpotInstanceRequests"))?;
        let stale: Vec<&str> = requests
            .items(&["spotInstanceRequestSet"])
            .filter(|r| ec2::time(r, "createTime").is_some_and(|t| t < cutoff))
            .filter_map(|r| r.text_at(&["spotInstanceRequestId"]))
            .collect();
        let mut cancelled = stale.len();
        if !stale.is_empty() {
            self.client
                .call(
                    "CancelSpotInstanceRequests",
                    &Params::new().list("SpotInstanceRequestId", stale),
                )
                .await
                .map_err(|e| e.into_error("CancelSpotInstanceRequests"))?;
        }
        let fleets = self
            .client
            .call("DescribeFleets", &Params::new())
            .await
            .map_err(|e| e.into_error("DescribeFleets"))?;
        let stale_fleets: Vec<&str> = fleets
            .items(&["fleetSet"])
            .filter(|f| f.text_at(&["type"]) != Some("instant"))
            .filter(|f| {
                f.tags()
                    .iter()
                    .any(|(k, v)| k == CLUSTER_TAG && *v == self.settings.cluster)
            })
            .filter(|f| ec2::time(f, "createTime").is_some_and(|t| t < cutoff))
            .filter_map(|f| f.text_at(&["fleetId"]))
            .collect();
        if !stale_fleets.is_empty() {
            cancelled += stale_fleets.len();
            let params = Params::new()
                .list("FleetId", stale_fleets)
                .set("TerminateInstances", "true");
            self.client
                .call("DeleteFleets", &params)
                .await
                .map_err(|e| e.into_error("DeleteFleets"))?;
        }
        Ok(cancelled)
    }
}
