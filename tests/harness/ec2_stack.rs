//! The stack a test of the `ec2` provider runs: moto (behind a fault proxy if asked), a
//! [`CloudPlayer`] that plays EC2's part, the api, and the provisioner and reaper the test starts.

use std::time::Duration;

use serde_json::{json, Value};

use crate::cloud::{CloudPlayer, Ec2Proxy};
use crate::image::busybox_image;
use crate::{
    eventually, spawn_app, spawn_provisioner, spawn_reaper, Moto, Running, TestApp, TestEnv,
    ACCOUNT_KEY,
};

/// Everything a test of the ec2 provider runs: moto, optionally a proxy, the player and the services.
pub struct Ec2Stack {
    pub env: TestEnv,
    pub moto: Moto,
    pub proxy: Option<Ec2Proxy>,
    pub player: CloudPlayer,
    pub app: TestApp,
    /// Provisioners and reapers the test started, stopped by [`Ec2Stack::finish`].
    pub services: Vec<Running>,
}

impl Ec2Stack {
    /// Starts moto (behind a fault proxy if `with_proxy`), the player and the api; the provisioner and
    /// reaper are the test's to start ([`Ec2Stack::with_services`], or its own way).
    pub async fn start(with_proxy: bool) -> Ec2Stack {
        Self::start_with(with_proxy, |_| {}).await
    }

    /// As [`Ec2Stack::start`], with the settings changed first (quotas, say).
    pub async fn start_with(with_proxy: bool, configure: impl FnOnce(&mut TestEnv)) -> Ec2Stack {
        let moto = Moto::start().await;
        let proxy = with_proxy.then(|| Ec2Proxy::start(&moto));
        let endpoint = proxy
            .as_ref()
            .map_or(moto.endpoint.clone(), |p| p.endpoint.clone());
        let mut env = TestEnv::new();
        env.use_ec2(&endpoint, &moto.image_id().await);
        configure(&mut env);
        let player = CloudPlayer::start(&moto, &env.name, env.dir().join("agents")).await;
        let app = spawn_app(&env).await;
        // Agents (and provisioners run as processes) reach this api.
        env.settings.api.public_url = app.address.clone();
        env.overrides
            .push(("SPOT__API__PUBLIC_URL".into(), app.address.clone()));
        Ec2Stack {
            env,
            moto,
            proxy,
            player,
            app,
            services: Vec::new(),
        }
    }

    /// Starts a provisioner and a reaper, as deployed.
    pub async fn with_services(mut self) -> Ec2Stack {
        self.services
            .push(spawn_provisioner(&self.env, &self.app.address).await);
        self.services.push(spawn_reaper(&self.env).await);
        self
    }

    pub fn faults(&self) -> &crate::cloud::Faults {
        &self.proxy.as_ref().expect("a proxy").faults
    }

    /// Schedules a container job to run now through `/v1/jobs`; returns its id.
    pub async fn job(&self, cmd: &str, extra: Value) -> String {
        let mut body = json!({
            "schedule": chrono::Utc::now().to_rfc3339(),
            "runner": {"type": "container", "image": busybox_image().await, "cmd": cmd,
                       "instance_types": ["t3.micro", "t3a.micro"]},
        });
        if let (Some(runner), Some(extra)) = (body["runner"].as_object_mut(), extra.as_object()) {
            for (key, value) in extra {
                runner.insert(key.clone(), value.clone());
            }
        }
        self.app.create_job(ACCOUNT_KEY, body).await
    }

    pub async fn job_with_policies(&self, cmd: &str, policies: Value) -> String {
        let body = json!({
            "schedule": chrono::Utc::now().to_rfc3339(),
            "runner": {"type": "container", "image": busybox_image().await, "cmd": cmd},
            "policies": policies,
        });
        self.app.create_job(ACCOUNT_KEY, body).await
    }

    /// Waits for the job's run of `attempt` to reach one of `states`.
    pub async fn run_in(&self, job_id: &str, attempt: u64, states: &[&str]) -> Value {
        eventually(
            Duration::from_secs(90),
            &format!("attempt {attempt} of {job_id} to be {states:?}"),
            || async {
                self.app.runs(job_id).await.into_iter().find(|run| {
                    run["attempt"] == attempt
                        && states.contains(&run["state"].as_str().unwrap_or(""))
                })
            },
        )
        .await
    }

    /// `GET /v1/instances/{id}`, if it answers JSON.
    pub async fn instance(&self, instance_id: &str) -> Option<Value> {
        self.app
            .get(&format!("/v1/instances/{instance_id}"), ACCOUNT_KEY)
            .await
            .json()
            .await
            .ok()
    }

    pub async fn log(&self, run_id: &str) -> String {
        let response = self
            .app
            .get(&format!("/v1/runs/{run_id}/logs"), ACCOUNT_KEY)
            .await;
        response.text().await.unwrap_or_default()
    }

    pub async fn finish(self) {
        self.moto.assert_none_running(&self.env.name).await;
        for service in self.services {
            service.stop().await;
        }
        self.player.stop().await;
        if let Some(proxy) = self.proxy {
            proxy.stop().await;
        }
    }
}
