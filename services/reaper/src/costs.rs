//! Once an instance is terminated: what it cost (its launch price × the seconds EC2 bills), the
//! seconds it outlived its run beyond the allowance (leaked), and the overhead around the job, summed
//! once by the store ([`Store::account_cost`]).
//!
//! [`Store::account_cost`]: spot_shared::store::Store::account_cost

use chrono::{DateTime, Utc};
use spot_shared::model::{Instance, InstanceState};
use spot_shared::pricing;
use spot_shared::store::CostRecord;
use spot_shared::Result;

use crate::Reaper;

/// How long an instance may outlive its run before the extra seconds count as leaked.
pub const LEAK_ALLOWANCE_SECS: i64 = 5;

impl Reaper {
    /// Sums a terminated instance's cost into its run, the usage report, the budget and the metrics;
    /// a second call for the same instance changes nothing.
    pub(crate) async fn account_cost(&self, instance_id: &str) -> Result<()> {
        let Some(instance) = self.store.get_instance(instance_id).await? else {
            return Ok(());
        };
        let (Some(usd_per_hour), Some(&launched), Some(&terminated)) = (
            instance.usd_per_hour,
            instance.transitions.get(&InstanceState::Requested),
            instance.transitions.get(&InstanceState::Terminated),
        ) else {
            // Unpriced (launched before prices were recorded) or not terminated: nothing to sum.
            return Ok(());
        };
        if instance.billed_secs.is_some() {
            return Ok(());
        }
        let run = self.store.get_run(&instance.run_id).await?;
        let job = match &run {
            Some(run) => self.store.get_job(&run.job_id).await?,
            None => None,
        };
        let run_ended = run.as_ref().and_then(|run| {
            run.transitions
                .iter()
                .filter(|(state, _)| state.is_terminal())
                .map(|(_, at)| *at)
                .max()
        });
        let billed_secs = pricing::billed_secs(launched, terminated, self.pricing.min_billed_secs);
        let record = CostRecord {
            instance_id: instance.id.clone(),
            run_id: instance.run_id.clone(),
            account: run.as_ref().map(|r| r.account.clone()).unwrap_or_default(),
            group: job.as_ref().map(|j| j.group.clone()).unwrap_or_default(),
            job_id: run.as_ref().map(|r| r.job_id.clone()).unwrap_or_default(),
            market: instance
                .lifecycle
                .clone()
                .unwrap_or_else(|| "unknown".into()),
            terminated_at: terminated,
            billed_secs,
            nano_usd: pricing::nano_usd(usd_per_hour, billed_secs),
            leaked_secs: leaked_secs(run_ended, terminated),
            overheads: overheads(&instance, run_ended),
        };
        if self.store.account_cost(&record).await? && record.leaked_secs > 0 {
            tracing::warn!(instance_id, run_id = %record.run_id, leaked_secs = record.leaked_secs,
                "instance outlived its run");
        }
        Ok(())
    }
}

/// Whole seconds the instance lived past its run's end beyond the allowance.
fn leaked_secs(run_ended: Option<DateTime<Utc>>, terminated: DateTime<Utc>) -> u64 {
    let Some(ended) = run_ended else { return 0 };
    let past = (terminated - ended).num_seconds() - LEAK_ALLOWANCE_SECS;
    u64::try_from(past).unwrap_or(0)
}

/// The overhead phases the records show, in milliseconds: `boot` (launch to the agent's first word),
/// `exit_to_terminate` (the run's end to the terminate call), `terminate_to_terminated`.
fn overheads(instance: &Instance, run_ended: Option<DateTime<Utc>>) -> Vec<(&'static str, u64)> {
    let at = |state| instance.transitions.get(&state).copied();
    let span = |from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>| {
        let (from, to) = (from?, to?);
        u64::try_from((to - from).num_milliseconds()).ok()
    };
    [
        (
            "boot",
            span(at(InstanceState::Requested), at(InstanceState::Running)),
        ),
        (
            "exit_to_terminate",
            span(run_ended, at(InstanceState::Terminating)),
        ),
        (
            "terminate_to_terminated",
            span(
                at(InstanceState::Terminating),
                at(InstanceState::Terminated),
            ),
        ),
    ]
    .into_iter()
    .filter_map(|(phase, ms)| Some((phase, ms?)))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn only_seconds_past_the_allowance_are_leaked() {
        assert_eq!(leaked_secs(Some(at(0)), at(3)), 0);
        assert_eq!(leaked_secs(Some(at(0)), at(5)), 0);
        assert_eq!(leaked_secs(Some(at(0)), at(65)), 60);
        assert_eq!(leaked_secs(Some(at(10)), at(0)), 0, "ended after: none");
        assert_eq!(leaked_secs(None, at(100)), 0);
    }

    #[test]
    fn overheads_are_the_phases_the_records_show() {
        let instance = Instance {
            id: "i".into(),
            run_id: "r".into(),
            provider: "ec2".into(),
            state: InstanceState::Terminated,
            instance_type: None,
            dns_name: None,
            ip_address: None,
            lifecycle: None,
            ready: true,
            transitions: [
                (InstanceState::Requested, at(0)),
                (InstanceState::Running, at(30)),
                (InstanceState::Terminating, at(41)),
                (InstanceState::Terminated, at(42)),
            ]
            .into(),
            zone: None,
            usd_per_hour: Some(0.01),
            price_source: None,
            billed_secs: None,
            cost_nano_usd: None,
            leaked_secs: None,
        };
        assert_eq!(
            overheads(&instance, Some(at(40))),
            vec![
                ("boot", 30_000),
                ("exit_to_terminate", 1_000),
                ("terminate_to_terminated", 1_000)
            ]
        );
        assert_eq!(overheads(&instance, None).len(), 2);
    }
}
