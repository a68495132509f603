//! The sweep: what the reaper finds by looking, every `reaper.sweep_interval_secs`, rather than
//! being told (see the crate's doc for the list). One reaper sweeps per period (a lease); every step
//! is idempotent and stands alone.

use std::collections::{HashMap, HashSet};

use spot_shared::cloud::CloudInstance;
use spot_shared::config::ReaperSettings;
use spot_shared::model::{HttpSpec, InstanceState, Job, Run, RunState, Runner};
use spot_shared::policy::Relaunched;
use spot_shared::store::{ArrayStep, Moved, QueueStep};
use spot_shared::{policy, task_instances, ErrorCode, Result};

use crate::Reaper;

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Instances terminated because no live run owns them.
    pub orphans: usize,
    pub timed_out: usize,
    pub lost: usize,
    /// Runs that never started, launched again (the same attempt).
    pub relaunched: usize,
    /// Runs that never started and had every relaunch: ended `provision_failed`.
    pub provision_failed: usize,
    /// Spot instances reclaimed without their agent's word.
    pub interrupted: usize,
    pub stale_requests: usize,
    /// Account index entries naming no job, left by a crash on a cluster, removed.
    pub index_entries: usize,
    /// Queued and backfill runs started because the run before them had ended without starting
    /// them (a crash between the two steps), or cancelled with their disabled job.
    pub queued_started: usize,
    /// Runs marked late or long running (`policies.alert_late_secs`, `alert_running_secs`).
    pub alerts: usize,
    /// Chained jobs started for endings whose own step to start them was lost (a crash).
    pub chained: usize,
}

/// How long an ending's own step has to start its chained jobs before the sweep does.
const CHAIN_GRACE_SECS: i64 = 5;

impl Reaper {
    /// One sweep, unless another reaper holds this period's sweep (then `None`).
    pub async fn sweep_if_due(&self) -> Result<Option<SweepReport>> {
        let period = std::time::Duration::from_secs(self.settings.sweep_interval_secs.max(1));
        if !self.store.take_turn("reaper:sweep", period).await? {
            return Ok(None);
        }
        self.sweep_once().await.map(Some)
    }

    /// Sweeps once: runs whose instances must end, instances no run owns, runs that never started,
    /// stale spot requests, and on a cluster account index entries naming no job. Each step stands
    /// alone: a step that fails (the cloud's listing, say) is logged and skips only what needs it,
    /// and a failure on one instance skips only that instance.
    pub async fn sweep_once(&self) -> Result<SweepReport> {
        let mut report = SweepReport::default();
        let now = chrono::Utc::now();
        // Listed before the recorded instances are looked at: one the cloud no longer lists is gone.
        match self.cloud.instances().await {
            Ok(in_cloud) => self.sweep_instances(&in_cloud, now, &mut report).await,
            Err(err) => {
                tracing::warn!(error = %err, "sweep: instances skipped (the cloud's listing failed)")
            }
        }
        if let Err(err) = self.sweep_live_runs(now, &mut report).await {
            tracing::warn!(error = %err, "sweep: live runs skipped");
        }
        if let Err(err) = self.sweep_chains(now, &mut report).await {
            tracing::warn!(error = %err, "sweep: chains skipped");
        }
        if let Err(err) = self.sweep_alerts(now, &mut report).await {
            tracing::warn!(error = %err, "sweep: alerts skipped");
        }
        if let Err(err) = self.sweep_queues(&mut report).await {
            tracing::warn!(error = %err, "sweep: queues skipped");
        }
        let index_grace = chrono::Duration::seconds(self.settings.index_grace_secs as i64);
        match self.store.settle_index_entries(index_grace).await {
            Ok(settled) => report.index_entries = settled.removed,
            Err(err) => tracing::warn!(error = %err, "sweep: index entries skipped"),
        }
        let max_age = chrono::Duration::seconds(self.settings.stale_request_secs as i64);
        match self.cloud.cancel_stale_requests(max_age).await {
            Ok(cancelled) => report.stale_requests = cancelled,
            Err(err) => tracing::warn!(error = %err, "sweep: stale spot requests skipped"),
        }
        if report != SweepReport::default() {
            tracing::warn!(?report, "sweep ended runs or instances");
        }
        for (event, count) in [
            ("swept_orphan", report.orphans),
            ("swept_timed_out", report.timed_out),
            ("swept_lost", report.lost),
            ("relaunched", report.relaunched),
            ("swept_provision_failed", report.provision_failed),
            ("swept_interrupted", report.interrupted),
            ("stale_request_cancelled", report.stale_requests),
            ("swept_index_entry", report.index_entries),
            ("swept_queued_started", report.queued_started),
            ("swept_chained", report.chained),
        ] {
            self.store.note_event(event, count as u64).await;
        }
        Ok(report)
    }

    /// Starts the chained jobs of endings noted more than [`CHAIN_GRACE_SECS`] ago and still pending:
    /// their own start step was lost. The same job at the same instant is the same fire, so one
    /// started twice (the step was only slow) still runs once.
    async fn sweep_chains(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        report: &mut SweepReport,
    ) -> Result<()> {
        let before = now - chrono::Duration::seconds(CHAIN_GRACE_SECS);
        for (run_id, at) in self.store.pending_chains(before).await? {
            let run = self.store.get_run(&run_id).await?;
            let job = match &run {
                Some(run) => self.store.get_job(&run.job_id).await?,
                None => None,
            };
            match (run, job) {
                (Some(run), Some(job)) => {
                    let started = spot_shared::chain::start(&self.store, &job, &run, at).await?;
                    tracing::warn!(run_id, started, "sweep: chained jobs started");
                    report.chained += started;
                }
                // The run or its job is gone: nothing to start.
                _ => self.store.chain_started(&run_id).await?,
            }
        }
        Ok(())
    }

    /// Marks the runs not ended that their job's alert policies say are late or long running, each
    /// alert once (the mark is set only if absent), counted as `alert_late` / `alert_long_running`.
    async fn sweep_alerts(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        report: &mut SweepReport,
    ) -> Result<()> {
        let mut jobs: HashMap<String, Option<Job>> = HashMap::new();
        // Runs under way, then runs waiting in a line (`concurrency: queue`), which are late too
        // when their instant is long past.
        let mut run_ids = self.store.live_run_ids(LIVE_RUNS_SCANNED).await?;
        for job_id in self.store.jobs_with_queues().await? {
            run_ids.extend(
                self.store
                    .queued_run_ids(&job_id, QUEUED_RUNS_SCANNED)
                    .await?,
            );
        }
        for run_id in run_ids {
            let Some(run) = self.store.get_run(&run_id).await? else {
                continue;
            };
            if !jobs.contains_key(&run.job_id) {
                let job = self.store.get_job(&run.job_id).await?;
                jobs.insert(run.job_id.clone(), job);
            }
            let Some(Some(job)) = jobs.get(&run.job_id) else {
                continue;
            };
            for alert in spot_shared::alerts::due(job, &run, now) {
                if self.store.mark_run_alert(&run.id, alert, now).await? {
                    tracing::warn!(job_id = %job.id, run_id = %run.id, alert = alert.as_str(), "run alert");
                    self.store
                        .note_event(&format!("alert_{}", alert.as_str()), 1)
                        .await;
                    report.alerts += 1;
                }
            }
        }
        Ok(())
    }

    /// Starts the next waiting run of every job with a line and no run under way: the step a run's
    /// end takes, taken again for an end whose process died before it (or a line of a job since
    /// disabled, which is cancelled).
    async fn sweep_queues(&self, report: &mut SweepReport) -> Result<()> {
        for (job_id, parent) in self.store.running_arrays().await? {
            if let Err(err) = self.sweep_array(&job_id, &parent, report).await {
                tracing::warn!(job_id, run_id = parent, error = %err, "sweep: array skipped");
            }
        }
        for (job_id, backfill) in self.store.running_backfills().await? {
            match self.store.get_job(&job_id).await? {
                Some(job) => {
                    let started = self.store.start_backfill_runs(&job, &backfill).await?;
                    if !started.is_empty() {
                        tracing::warn!(
                            job_id,
                            backfill,
                            started = started.len(),
                            "sweep: backfill runs started"
                        );
                    }
                    report.queued_started += started.len();
                }
                None => {
                    self.store.cancel_backfill(&job_id, &backfill).await?;
                }
            }
        }
        for job_id in self.store.jobs_with_queues().await? {
            let job = self.store.get_job(&job_id).await?;
            match self.store.start_next_queued(&job_id, job.as_ref()).await? {
                QueueStep::Started(run_id) => {
                    tracing::warn!(job_id, run_id, "sweep: queued run started");
                    report.queued_started += 1;
                }
                QueueStep::Cancelled(n) => report.queued_started += n as usize,
                QueueStep::Busy | QueueStep::Empty => {}
            }
        }
        Ok(())
    }

    /// Takes the step of an array fire that a copy's end takes, for an end whose process died
    /// before it: copies started, the parent ended once they all have, or (the parent cancelled)
    /// the copies still under way cancelled and their instances terminated.
    async fn sweep_array(
        &self,
        job_id: &str,
        parent: &str,
        report: &mut SweepReport,
    ) -> Result<()> {
        let job = self.store.get_job(job_id).await?;
        match spot_shared::arrays::advance(&self.store, job.as_ref(), parent, None).await? {
            ArrayStep::Started(started) if !started.is_empty() => {
                tracing::warn!(
                    job_id,
                    run_id = parent,
                    started = started.len(),
                    "sweep: array copies started"
                );
                report.queued_started += started.len();
            }
            // What the sweep ends is killed at once, as everywhere in the sweep.
            ArrayStep::Ended(copies) => {
                for copy in copies {
                    if let Some(instance_id) = &copy.instance_id {
                        self.terminate(instance_id, &copy.run_id, "its array fire was cancelled")
                            .await?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The instance steps of a sweep, given what the cloud lists: every instance Redis holds live,
    /// then every instance the cloud lists for this deployment.
    async fn sweep_instances(
        &self,
        in_cloud: &[CloudInstance],
        now: chrono::DateTime<chrono::Utc>,
        report: &mut SweepReport,
    ) {
        let alive: HashSet<&str> = in_cloud.iter().map(|i| i.id.as_str()).collect();
        match self.store.live_instance_ids().await {
            Ok(recorded) => {
                for instance_id in recorded {
                    if let Err(err) = self
                        .sweep_recorded_instance(&instance_id, &alive, now, report)
                        .await
                    {
                        tracing::warn!(instance_id, error = %err, "sweep: instance skipped");
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "sweep: recorded instances skipped"),
        }
        for instance in in_cloud {
            if let Err(err) = self.sweep_cloud_instance(instance, now, report).await {
                tracing::warn!(instance_id = %instance.id, error = %err, "sweep: instance skipped");
            }
        }
    }

    fn orphan_grace(&self) -> chrono::Duration {
        chrono::Duration::seconds(self.settings.orphan_grace_secs as i64)
    }

    /// An instance Redis holds live: terminated if no live run owns it, and its run ended if it is
    /// past its timeout or its agent went silent. A silent spot instance the cloud no longer lists
    /// was reclaimed without its agent seeing the notice: its run ends `interrupted` (and is retried
    /// as interruptions are), not `failed`. A run whose container never started is relaunched instead
    /// ([`Reaper::relaunch`]), after its instance is terminated.
    async fn sweep_recorded_instance(
        &self,
        instance_id: &str,
        alive: &HashSet<&str>,
        now: chrono::DateTime<chrono::Utc>,
        report: &mut SweepReport,
    ) -> Result<()> {
        let Some(instance) = self.store.get_instance(instance_id).await? else {
            return Ok(());
        };
        let run = self.store.get_run(&instance.run_id).await?;
        let orphaned = match &run {
            None => Some("its run is gone".to_string()),
            Some(run) if run.state.is_terminal() => Some(format!("its run is {}", run.state)),
            Some(run) if run.instance_id.as_deref() != Some(instance_id) => {
                // The launch records the instance, then names it on the run: give it time.
                let recorded_long_ago = instance
                    .transitions
                    .get(&InstanceState::Requested)
                    .is_some_and(|at| now - *at >= self.orphan_grace());
                if !recorded_long_ago {
                    return Ok(());
                }
                Some("its run names another instance".to_string())
            }
            Some(_) => None,
        };
        if let Some(reason) = orphaned {
            report.orphans += 1;
            return self.terminate(instance_id, &instance.run_id, &reason).await;
        }
        let Some(run) = run else { return Ok(()) };
        let timeout_secs = match self.store.get_job(&run.job_id).await? {
            Some(job) => job.policies.timeout_secs,
            None => spot_shared::model::Policies::default().timeout_secs,
        };
        if let Some((mut state, mut why)) = overdue(&self.settings, &run, timeout_secs, now) {
            let spot = instance.lifecycle.as_deref() == Some("spot");
            if state == RunState::Failed && spot && !alive.contains(instance_id) {
                state = RunState::Interrupted;
                why = format!(
                    "interrupted: the spot instance is gone and its agent never said ({why})"
                );
            }
            // The user's container never started (the instance never booted, its agent was lost
            // or the cloud reclaimed it first): not the job's failure. The instance goes first,
            // then the run is launched again as the same attempt.
            if run.state == RunState::Booting && state != RunState::TimedOut {
                let why = format!("instance {instance_id} never started the container: {why}");
                self.terminate(instance_id, &run.id, &why).await?;
                return self.relaunch(&run, &why, report).await;
            }
            if self.end_run(&run, state, &why).await? {
                match state {
                    RunState::TimedOut => report.timed_out += 1,
                    RunState::Interrupted => report.interrupted += 1,
                    _ => report.lost += 1,
                }
            }
            self.terminate(instance_id, &run.id, &why).await?;
        }
        Ok(())
    }

    /// Runs no instance speaks for: one still `pending` or `provisioning` long after it was recorded
    /// with no launch under way (its fire message or its provisioner was lost) never started the
    /// user's code, and is launched again ([`Reaper::relaunch`]); so is one running without an
    /// instance (an HTTP action) whose provisioner stopped heartbeating: its action is called again.
    /// Runs with an instance are the instance sweep's.
    async fn sweep_live_runs(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        report: &mut SweepReport,
    ) -> Result<()> {
        for entry in self
            .store
            .live_runs_without_instance(LIVE_RUNS_SCANNED)
            .await?
        {
            let run = match self.store.get_run(&entry.run_id).await {
                Ok(Some(run)) if !run.state.is_terminal() => run,
                // Ended (or trimmed) since: the index only lags.
                Ok(_) => {
                    self.store.forget_live_run(&entry.run_id).await?;
                    continue;
                }
                Err(err) => {
                    tracing::warn!(run_id = %entry.run_id, error = %err, "sweep: run skipped");
                    continue;
                }
            };
            if run.instance_id.is_some() {
                continue;
            }
            if let Err(err) = self.sweep_live_run(&run, now, report).await {
                tracing::warn!(run_id = %run.id, error = %err, "sweep: run skipped");
            }
        }
        Ok(())
    }

    /// One run without an instance: relaunched if it never started, or if the provisioner holding
    /// its HTTP action went silent (the action is called again, as the same attempt: whether the
    /// first call reached it and ran to its end is unknown, and `X-Spot-Run-Id` lets the receiver
    /// tell the second call from a new run).
    async fn sweep_live_run(
        &self,
        run: &Run,
        now: chrono::DateTime<chrono::Utc>,
        report: &mut SweepReport,
    ) -> Result<()> {
        let launching = self.store.lease_held(&format!("launch:{}", run.id)).await?;
        match stuck(&self.settings, run, launching, now) {
            Some(Stuck::NeverStarted(why) | Stuck::HolderLost(why)) => {
                self.relaunch(run, &why, report).await
            }
            None => Ok(()),
        }
    }

    /// Launches a run that never started again ([`policy::relaunch`]), counting what it did.
    async fn relaunch(&self, run: &Run, why: &str, report: &mut SweepReport) -> Result<()> {
        let job = self.store.get_job(&run.job_id).await?;
        match policy::relaunch(&self.store, job.as_ref(), run, why, self.max_relaunches).await? {
            Relaunched::Armed(_) => report.relaunched += 1,
            Relaunched::JobGone => report.lost += 1,
            Relaunched::ProvisionFailed => {
                tracing::warn!(run_id = %run.id, why, "run ended by the sweep: relaunches ran out");
                report.provision_failed += 1;
                self.release_task_instance(run).await?;
            }
            Relaunched::Moved => {}
        }
        Ok(())
    }

    /// An HTTP task the sweep ended may have held an instance it started: stop it if no other live
    /// task needs it, as the task's own end would have.
    async fn release_task_instance(&self, run: &Run) -> Result<()> {
        let Some(job) = self.store.get_job(&run.job_id).await? else {
            return Ok(());
        };
        let Runner::Http(HttpSpec {
            instance_id: Some(instance_id),
            ..
        }) = &job.runner
        else {
            return Ok(());
        };
        task_instances::release(&self.store, &self.ec2, &run.id, instance_id, &run.account).await?;
        Ok(())
    }

    /// An instance the cloud lists for this deployment: terminated if no live run owns it.
    async fn sweep_cloud_instance(
        &self,
        instance: &CloudInstance,
        now: chrono::DateTime<chrono::Utc>,
        report: &mut SweepReport,
    ) -> Result<()> {
        let run = match &instance.run_id {
            Some(run_id) => self.store.get_run(run_id).await?,
            None => None,
        };
        let orphan = match &run {
            None => true,
            Some(run) if run.state.is_terminal() => true,
            // Not (yet) the run's instance: a launch still being recorded, or a duplicate.
            Some(run) => {
                run.instance_id.as_deref() != Some(instance.id.as_str())
                    && instance
                        .launched_at
                        .is_some_and(|at| now - at >= self.orphan_grace())
            }
        };
        if orphan {
            report.orphans += 1;
            let run_id = instance.run_id.clone().unwrap_or_default();
            self.terminate(&instance.id, &run_id, "no live run owns it")
                .await?;
        }
        Ok(())
    }

    /// Ends a run the sweep found overdue, and retries it if its policy allows. `false` if it ended
    /// some other way meanwhile.
    async fn end_run(&self, run: &Run, state: RunState, why: &str) -> Result<bool> {
        let job = self.store.get_job(&run.job_id).await?;
        let fields = [("error", why.to_string())];
        match policy::end_run(&self.store, job.as_ref(), run, state, &fields).await {
            Ok(Moved::From(_)) => {}
            Ok(Moved::AlreadyThere) => return Ok(false),
            Err(err) if err.code == ErrorCode::Conflict => return Ok(false),
            Err(err) => return Err(err),
        }
        tracing::warn!(run_id = %run.id, %state, why, "run ended by the sweep");
        Ok(true)
    }

    /// Sweeps every period (one reaper per period, by lease) until dropped.
    pub(crate) async fn sweep_forever(&self) {
        let mut sweeps = tokio::time::interval(std::time::Duration::from_secs(
            self.settings.sweep_interval_secs.max(1),
        ));
        sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            sweeps.tick().await;
            if let Err(err) = self.sweep_if_due().await {
                tracing::warn!(error = %err, "sweep failed; the next one will retry");
            }
        }
    }
}

/// Live-run index entries a sweep walks at most per shard (state and instance read in pipelines of
/// 2,000): far more than a deployment keeps under way, so none is out of its reach.
const LIVE_RUNS_SCANNED: usize = 1_000_000;

/// Waiting runs a sweep reads per job line for the lateness alert: the oldest, which are the first to
/// be late; those behind them are read as the line moves.
const QUEUED_RUNS_SCANNED: usize = 100;

/// How a run without an instance is stuck.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stuck {
    /// The user's code never started (its launch was lost): to be launched again.
    NeverStarted(String),
    /// Its HTTP action was called by a provisioner that went silent: to be called again.
    HolderLost(String),
}

/// Whether a run without an instance is stuck, and why: `pending` or `provisioning` past the pending
/// timeout (since it was recorded, or last relaunched) with no launch holding it, or running (an
/// HTTP action) with no heartbeat from its provisioner for the heartbeat timeout.
fn stuck(
    settings: &ReaperSettings,
    run: &Run,
    launching: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<Stuck> {
    let secs = |s: u64| chrono::Duration::seconds(s as i64);
    let since = |state: RunState| run.transitions.get(&state).copied();
    match run.state {
        RunState::Pending | RunState::Provisioning if !launching => {
            let at = since(RunState::Provisioning)
                .or_else(|| since(RunState::Pending))?
                .max(run.relaunch_at.unwrap_or_default());
            (now - at > secs(settings.pending_timeout_secs)).then(|| {
                Stuck::NeverStarted(format!(
                    "{} for over {} s with no launch under way",
                    run.state, settings.pending_timeout_secs
                ))
            })
        }
        RunState::Booting | RunState::Running => {
            let last_sign = run
                .heartbeat_at
                .or_else(|| since(RunState::Running))
                .or_else(|| since(RunState::Booting))?;
            (now - last_sign > secs(settings.heartbeat_timeout_secs)).then(|| {
                Stuck::HolderLost(format!(
                    "lost: no heartbeat from its provisioner for over {} s",
                    settings.heartbeat_timeout_secs
                ))
            })
        }
        _ => None,
    }
}

/// Whether a run still under way has overrun its timeout or lost its agent: the state to end it
/// in and why.
fn overdue(
    settings: &ReaperSettings,
    run: &Run,
    timeout_secs: u64,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<(RunState, String)> {
    let started = run
        .transitions
        .get(&RunState::Booting)
        .or_else(|| run.transitions.get(&RunState::Provisioning))
        .copied()?;
    let secs = |s: u64| chrono::Duration::seconds(s as i64);
    let timeout = secs(timeout_secs) + secs(settings.timeout_grace_secs);
    if now - started > timeout {
        return Some((
            RunState::TimedOut,
            format!(
                "ran past its timeout plus {} s grace",
                settings.timeout_grace_secs
            ),
        ));
    }
    let (last_sign, limit) = match run.heartbeat_at {
        Some(at) => (at, settings.heartbeat_timeout_secs),
        None => (started, settings.boot_timeout_secs),
    };
    if now - last_sign > secs(limit) {
        return Some((
            RunState::Failed,
            format!("lost: no word from its agent for over {limit} s"),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, Utc};

    fn settings() -> ReaperSettings {
        spot_shared::config::Settings::defaults().reaper
    }

    fn run(state: RunState, booted_secs_ago: i64, heartbeat_secs_ago: Option<i64>) -> Run {
        let now = Utc::now();
        Run {
            id: "r".into(),
            job_id: "j".into(),
            account: "a".into(),
            attempt: 1,
            scheduled_at: now,
            state,
            transitions: [(RunState::Booting, now - Duration::seconds(booted_secs_ago))].into(),
            instance_id: Some("i-1".into()),
            container_id: None,
            exit_code: None,
            error: None,
            heartbeat_at: heartbeat_secs_ago.map(|s| now - Duration::seconds(s)),
            ..Run::default()
        }
    }

    #[test]
    fn a_heartbeating_run_within_its_timeout_is_left_alone() {
        let s = settings();
        let r = run(RunState::Running, 600, Some(5));
        assert_eq!(overdue(&s, &r, 1800, Utc::now()), None);
    }

    #[test]
    fn a_run_past_its_timeout_and_grace_times_out() {
        let s = settings();
        let r = run(
            RunState::Running,
            60 + s.timeout_grace_secs as i64 + 5,
            Some(1),
        );
        let (state, why) = overdue(&s, &r, 60, Utc::now()).unwrap();
        assert_eq!(state, RunState::TimedOut);
        assert!(why.contains("timeout"), "{why}");
        // Inside the grace, not yet.
        let r = run(RunState::Running, 61, Some(1));
        assert_eq!(overdue(&s, &r, 60, Utc::now()), None);
    }

    #[test]
    fn silence_past_the_heartbeat_timeout_is_lost_and_booting_gets_longer() {
        let s = settings();
        let r = run(
            RunState::Running,
            600,
            Some(s.heartbeat_timeout_secs as i64 + 1),
        );
        let (state, why) = overdue(&s, &r, 3600, Utc::now()).unwrap();
        assert_eq!(state, RunState::Failed);
        assert!(why.starts_with("lost"), "{why}");
        // Never heard from: measured from booting, against the boot timeout.
        let r = run(RunState::Booting, s.heartbeat_timeout_secs as i64 + 1, None);
        assert_eq!(overdue(&s, &r, 3600, Utc::now()), None);
        let r = run(RunState::Booting, s.boot_timeout_secs as i64 + 1, None);
        assert!(overdue(&s, &r, 3600, Utc::now()).is_some());
    }

    #[test]
    fn a_run_that_never_started_is_stuck_from_its_last_relaunch() {
        let s = settings();
        let now = Utc::now();
        let mut r = run(RunState::Pending, 0, None);
        r.instance_id = None;
        let recorded = now - Duration::seconds(s.pending_timeout_secs as i64 + 1);
        r.transitions = [(RunState::Pending, recorded)].into();
        assert!(matches!(
            stuck(&s, &r, false, now),
            Some(Stuck::NeverStarted(_))
        ));
        assert_eq!(stuck(&s, &r, true, now), None, "a launch is under way");
        r.relaunch_at = Some(now - Duration::seconds(1));
        assert_eq!(stuck(&s, &r, false, now), None, "relaunched a moment ago");
    }
}
