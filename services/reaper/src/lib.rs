//! The reaper: terminates the instances of ended runs, through the cloud provider, and records them
//! terminated. Requests come on the terminate queue; several reapers may consume it at once, since
//! terminating an instance twice is harmless and the state only moves forward.
//!
//! It also sweeps, every `reaper.sweep_interval_secs` ([`Reaper::sweep_once`], in `sweep`):
//! instances whose run is gone, over, or names another instance; runs past their timeout plus a
//! grace; runs whose agent went silent (lost); runs with no instance left pending or provisioning by
//! a lost message or a crashed provisioner (launched again: they never started), or running an HTTP
//! action whose provisioner died (lost, retried if allowed); spot requests left open. One reaper
//! sweeps per period (a lease), and every step is idempotent, so reapers racing each other or the
//! api do no harm.
//!
//! The crate's modules: this one (the reaper, its terminate consumer, `run`), `sweep`, `costs`
//! (what an ended instance cost, summed once) and `notifier` (the runs' notifications, delivered).

mod costs;
mod notifier;
mod sweep;

pub use notifier::{DeliveryReport, Notifier};
pub use sweep::SweepReport;

use std::sync::Arc;

use anyhow::Context;
use lapin::message::Delivery;
use spot_shared::broker::{decode, serve, settle, Broker};
use spot_shared::cloud::Cloud;
use spot_shared::config::ReaperSettings;
use spot_shared::config::Settings;
use spot_shared::instance_power::Ec2;
use spot_shared::messages::TerminateRequest;
use spot_shared::model::{Instance, InstanceState};
use spot_shared::store::{SlotKind, Store};
use spot_shared::supervise::supervise;
use spot_shared::{ErrorCode, Result};

#[derive(Clone)]
pub struct Reaper {
    store: Store,
    broker: Arc<Broker>,
    cloud: Arc<Cloud>,
    /// For the instances HRM tasks run on (see [`spot_shared::task_instances`]).
    ec2: Arc<Ec2>,
    settings: Arc<ReaperSettings>,
    /// `provisioner.max_relaunches`: how often a run that never started is launched again.
    max_relaunches: u32,
    pricing: Arc<spot_shared::pricing::PricingSettings>,
    /// Delivers the notifications of runs' events (`policies.notify`).
    notifier: Notifier,
}

impl Reaper {
    pub async fn build(settings: Settings) -> anyhow::Result<Reaper> {
        let (store, broker) = spot_shared::connect(&settings).await?;
        let cloud = Cloud::from_settings(&settings)
            .await
            .context("setting up the cloud provider")?;
        let ec2 = Ec2::for_deployment(&settings).await;
        Ok(Reaper {
            notifier: Notifier::new(&settings, store.clone()),
            store,
            broker: Arc::new(broker),
            cloud: Arc::new(cloud),
            ec2: Arc::new(ec2),
            settings: Arc::new(settings.reaper.clone()),
            max_relaunches: settings.provisioner.max_relaunches,
            pricing: Arc::new(settings.pricing.clone()),
        })
    }

    /// The notifier this reaper runs (tests drain the outbox through it).
    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// Terminates at once: what the sweep ends (past its timeout and grace, lost, orphaned) has had
    /// its chance to stop.
    async fn terminate(&self, instance_id: &str, run_id: &str, reason: &str) -> Result<()> {
        self.handle_terminate(&TerminateRequest {
            instance_id: instance_id.to_string(),
            run_id: run_id.to_string(),
            reason: reason.to_string(),
            stop_grace_secs: 0,
        })
        .await
    }

    /// Terminates one instance and records it. Idempotent.
    pub async fn handle_terminate(&self, request: &TerminateRequest) -> Result<()> {
        let instance = self.store.get_instance(&request.instance_id).await?;
        if let Some(instance) = &instance {
            if instance.state == InstanceState::Terminated {
                // A redelivery after a crash between the move and the sum: sum it now (once).
                return self.account_cost(&instance.id).await;
            }
            self.record_instance(&instance.id, InstanceState::Terminating)
                .await?;
        }
        let grace = std::time::Duration::from_secs(request.stop_grace_secs);
        self.cloud.terminate(&request.instance_id, grace).await?;
        if let Some(instance) = &instance {
            self.record_instance(&request.instance_id, InstanceState::Terminated)
                .await?;
            self.account_cost(&instance.id).await?;
            self.release_instance_slot(instance).await?;
        }
        self.store.note_event("instance_terminated", 1).await;
        tracing::info!(instance_id = %request.instance_id, run_id = %request.run_id,
            reason = %request.reason, "instance terminated");
        Ok(())
    }

    /// Gives the run's slot among the account's live instances back, unless a later attempt of the run
    /// has an instance of its own by now.
    async fn release_instance_slot(&self, instance: &Instance) -> Result<()> {
        let Some(run) = self.store.get_run(&instance.run_id).await? else {
            return Ok(());
        };
        if run
            .instance_id
            .as_deref()
            .is_some_and(|id| id != instance.id)
        {
            return Ok(());
        }
        self.store
            .release_slot(SlotKind::Instance, &run.account, &run.id)
            .await
    }

    /// Moves an instance's record on; a record another reaper moved further already is fine.
    async fn record_instance(&self, instance_id: &str, state: InstanceState) -> Result<()> {
        match self.store.advance_instance(instance_id, state, &[]).await {
            Ok(_) => Ok(()),
            Err(err) if err.code == ErrorCode::Conflict => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Processes one delivery: ack on success, requeue when retryable, dead-letter otherwise.
    pub async fn process_delivery(&self, delivery: Delivery) {
        let outcome = match decode::<TerminateRequest>(&delivery) {
            Ok(request) => self.handle_terminate(&request).await,
            Err(err) => Err(err),
        };
        let queue = self.broker.topology().terminate_queue();
        settle(&self.broker, &queue, &delivery, outcome, "terminate").await;
    }

    /// Consumes terminate requests and sweeps every period until `shutdown` resolves; requests in
    /// hand then get `shutdown_grace_secs` to finish. RabbitMQ or Redis going away stops nothing for
    /// good: the consumer resumes on the next link, a failed sweep is retried next period.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let queue = self.broker.topology().terminate_queue();
        let mut requests = self
            .broker
            .subscribe(&queue, self.settings.prefetch, "reaper");
        tracing::info!(queue, "reaper starting");
        let sweeper = {
            let this = self.clone();
            supervise("reaper_sweep", Some(self.store.clone()), move || {
                let this = this.clone();
                async move { this.sweep_forever().await }
            })
        };
        let notifier = {
            let notifier = self.notifier.clone();
            supervise("notifier", Some(self.store.clone()), move || {
                let notifier = notifier.clone();
                async move { notifier.deliver_forever().await }
            })
        };
        let grace = std::time::Duration::from_secs(self.settings.shutdown_grace_secs);
        let this = self.clone();
        serve(&mut requests, shutdown, grace, move |delivery| {
            let this = this.clone();
            async move { this.process_delivery(delivery).await }
        })
        .await;
        sweeper.abort();
        notifier.abort();
        self.broker.close().await;
        Ok(())
    }
}

/// [`run`] on a multi-threaded runtime of its own: what `main` calls. The runtime is built here, not
/// by `#[tokio::main]` in `main.rs`, so the service's futures are compiled once, in this crate: polled
/// from the binary they were compiled again there (BENCHMARKS.md, "A fresh machine").
pub fn run_blocking(settings: Settings) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(settings))
}

/// Runs the reaper until Ctrl-C or SIGTERM.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let reaper = Reaper::build(settings).await?;
    reaper
        .run_until_stopped(spot_shared::shutdown_signal())
        .await
}
