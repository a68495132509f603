//! The run-time quotas, checked when a run is about to launch something: fires a minute, live
//! instances, HTTP tasks held open (`shared::quotas`). A run over one ends `provision_failed` with
//! the quota named, and the refusal is counted; its job's retry policy may try it again later.

use std::time::Duration;

use chrono::Utc;
use spot_shared::model::{Job, Run, RunState, Runner};
use spot_shared::pricing;
use spot_shared::quotas::Quotas;
use spot_shared::store::SlotKind;
use spot_shared::{policy, Error, Result};

use crate::launch::LaunchOutcome;
use crate::Provisioner;

/// How long an HTTP task's slot lasts without renewal; its heartbeat renews it well before.
pub(crate) const HTTP_SLOT_HOLD: Duration = Duration::from_secs(45);
/// How long past its timeout an instance's slot lasts if its termination is never recorded.
const INSTANCE_SLOT_SLACK: Duration = Duration::from_secs(3600);

impl Provisioner {
    /// Admits a run that is about to launch, or ends it over a quota (`Some(Failed)`). A redelivered
    /// fire keeps its place and its slot.
    pub(crate) async fn admit(&self, run: &Run, job: &Job) -> Result<Option<LaunchOutcome>> {
        let slot = match &job.runner {
            Runner::Dummy(_) => return Ok(None),
            Runner::Container(_) => Some(SlotKind::Instance),
            Runner::Http(_) => Some(SlotKind::HttpTask),
            Runner::Instance(_) => None,
        };
        if !matches!(run.state, RunState::Pending | RunState::Provisioning) {
            return Ok(None);
        }
        let quotas = self.settings.quotas.for_account(&run.account);
        // An array's copies share their fire's instant but start over time, as their turns come:
        // each counts in the minute it launches.
        let counted_at = match run.array_parent() {
            Some(_) => Utc::now(),
            None => run.scheduled_at,
        };
        let place = self
            .store
            .fire_place_in_minute(&run.account, counted_at, &run.id)
            .await?;
        if let Err(refusal) = quotas.check_fire_place(place) {
            return self.refuse(run, job, refusal).await.map(Some);
        }
        if let Some(refusal) = self.over_budget(run, &quotas).await? {
            return self.refuse(run, job, refusal).await.map(Some);
        }
        let Some(kind) = slot else {
            return Ok(None);
        };
        let (limit, hold, quota) = match kind {
            SlotKind::Instance => (
                quotas.max_live_instances,
                Duration::from_secs(job.policies.timeout_secs) + INSTANCE_SLOT_SLACK,
                "max_live_instances",
            ),
            SlotKind::HttpTask => (
                quotas.max_open_http_tasks,
                HTTP_SLOT_HOLD,
                "max_open_http_tasks",
            ),
        };
        if self
            .store
            .take_slot(kind, &run.account, &run.id, limit, hold)
            .await?
        {
            return Ok(None);
        }
        let refusal = spot_shared::quotas::over(
            quota,
            format!("the account holds {limit}, its quota; try again when one ends"),
        );
        self.refuse(run, job, refusal).await.map(Some)
    }

    /// The refusal of a run whose account has spent its monthly budget (`quotas.monthly_budget_usd`).
    /// Only instances cost money: other runners are not held to it.
    async fn over_budget(&self, run: &Run, quotas: &Quotas) -> Result<Option<Error>> {
        let Some(budget) = quotas.monthly_budget_usd else {
            return Ok(None);
        };
        let spent = pricing::usd(self.store.month_spend(&run.account, Utc::now()).await?);
        if spent < budget {
            return Ok(None);
        }
        Ok(Some(spot_shared::quotas::over(
            "monthly_budget_usd",
            format!(
                "the account has spent {spent:.6} USD this month, over its monthly budget of {budget} USD"
            ),
        )))
    }

    /// Whether the account is far enough into its budget that on-demand fallback is refused (past
    /// `quotas.on_demand_budget_fraction` of it): spot only.
    pub(crate) async fn on_demand_refused(&self, account: &str) -> Result<bool> {
        let quotas = self.settings.quotas.for_account(account);
        let Some(budget) = quotas.monthly_budget_usd else {
            return Ok(false);
        };
        let spent = pricing::usd(self.store.month_spend(account, Utc::now()).await?);
        Ok(spent >= budget * quotas.on_demand_budget_fraction)
    }

    async fn refuse(&self, run: &Run, job: &Job, refusal: Error) -> Result<LaunchOutcome> {
        let quota = refusal.field.as_deref().unwrap_or_default();
        let quota = quota.strip_prefix("quotas.").unwrap_or(quota);
        tracing::warn!(run_id = %run.id, account = %run.account, quota, "run over a quota");
        self.store.note_quota_refusal(quota, &run.account).await;
        self.store.note_event("provision_failed", 1).await;
        // A refused run went as far as provisioning: the state machine ends runs there.
        if run.state == RunState::Pending {
            self.store
                .advance_run(&run.id, RunState::Provisioning, &[])
                .await?;
        }
        policy::end_run(
            &self.store,
            Some(job),
            run,
            RunState::ProvisionFailed,
            &[("error", refusal.to_string())],
        )
        .await?;
        Ok(LaunchOutcome::Failed)
    }
}
