//! Chaining (`policies.on_success`, `policies.on_failure`): the jobs a run's ending starts, each
//! once per ending however often the ending is reported.
//!
//! The step that ends the run notes it in `chains:pending` with the instant the chained fires take
//! (see [`crate::store::Store::end_run`]); only that step can, so a repeated report notes nothing. The
//! chained fires are then scheduled as run-nows at that instant, each told the parent run in
//! `SPOT_PARENT_RUN_ID` (a container's environment), and the note is taken off. A crash in between
//! leaves the note for the reaper's sweep, which schedules them again: the same job at the same
//! instant is the same fire, recorded once by its marker.

use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::messages::FireMessage;
use crate::model::{Job, Run, RunOverrides, RunState};
use crate::store::Store;

/// The jobs an ending in `ended` starts: `on_success` for a success, `on_failure` for a failure with
/// no retry armed; none for a cancel, or an attempt that is retried.
pub fn targets(job: &Job, ended: RunState, retried: bool) -> &[String] {
    match ended {
        _ if retried => &[],
        RunState::Succeeded => &job.policies.on_success,
        RunState::Failed
        | RunState::TimedOut
        | RunState::Interrupted
        | RunState::ProvisionFailed => &job.policies.on_failure,
        _ => &[],
    }
}

/// Schedules the fires `run` of `job` (ended, as the run says) chains to, at `at`, and takes its
/// note off. Chained jobs gone, disabled or of another account are skipped. Returns how many fires
/// were scheduled.
pub async fn start(store: &Store, job: &Job, run: &Run, at: DateTime<Utc>) -> Result<usize> {
    let mut started = 0;
    for child_id in targets(job, run.state, false) {
        let child = match store.get_job(child_id).await? {
            Some(child) if child.account == job.account && child.enabled => child,
            _ => {
                tracing::warn!(job_id = %job.id, child_id, "chained job gone, disabled or not the account's: skipped");
                continue;
            }
        };
        if child.container().is_some() {
            let parent = RunOverrides {
                env: vec![format!("SPOT_PARENT_RUN_ID={}", run.id)],
                ..RunOverrides::default()
            };
            store.set_fire_overrides(&child.id, at, &parent).await?;
        }
        let fire = FireMessage {
            manual: true,
            ..FireMessage::scheduled(&child.id, child.generation, at)
        };
        store.schedule_fire(&fire, at).await?;
        started += 1;
        tracing::info!(job_id = %job.id, run_id = %run.id, child_id, "chained job started");
    }
    store.chain_started(&run.id).await?;
    Ok(started)
}
