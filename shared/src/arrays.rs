//! Array jobs (`runner.array_size`): moving an array fire along. Each copy is a run of its own,
//! launched, retried and costed as any container run; what is particular to an array is here: the
//! step taken after the fire is expanded and after each copy ends (start the next copies, or end
//! the parent once every copy has ended for good), the same step the reaper's sweep takes again
//! after a crash. The Redis side is [`crate::store::Store::step_array`].

use crate::error::Result;
use crate::model::{Job, Run, RunState};
use crate::store::{ArrayStep, Moved, Store};

/// Takes one step of array fire `parent_id` (see [`ArrayStep`]), settling index `settle` (the copy
/// that ended) or, with `None`, every index under way; once every copy has ended for good the
/// parent ends as its job's policies say (succeeded only if every copy did; chained jobs,
/// notifications and pauses as for any run) and leaves the sweep's set.
pub async fn advance(
    store: &Store,
    job: Option<&Job>,
    parent_id: &str,
    settle: Option<u32>,
) -> Result<ArrayStep> {
    let Some(parent) = store.get_run(parent_id).await? else {
        return Ok(ArrayStep::Ended(Vec::new()));
    };
    let generation = job.map_or(0, |job| job.generation);
    let step = store
        .step_array(&parent.job_id, generation, &parent, settle)
        .await?;
    match &step {
        ArrayStep::Started(started) if !started.is_empty() => {
            tracing::info!(run_id = %parent.id, started = started.len(), "array copies started");
        }
        ArrayStep::Started(_) => {}
        ArrayStep::Done { succeeded, failed } => {
            end_parent(store, job, &parent, *succeeded, *failed).await?;
        }
        ArrayStep::Ended(_) => store.forget_array(&parent.job_id, &parent.id).await?,
    }
    Ok(step)
}

/// Ends a parent whose copies have all ended for good, then takes it off the sweep's set (a crash
/// in between leaves it there: the sweep's next step finds it ended and takes it off).
async fn end_parent(
    store: &Store,
    job: Option<&Job>,
    parent: &Run,
    succeeded: u32,
    failed: u32,
) -> Result<()> {
    let (state, fields) = match failed {
        0 => (RunState::Succeeded, Vec::new()),
        _ => (
            RunState::Failed,
            vec![(
                "error",
                format!(
                    "{failed} of {} copies failed",
                    u64::from(succeeded) + u64::from(failed)
                ),
            )],
        ),
    };
    // Boxed: ending a run may take an array step, which may end a run.
    match Box::pin(crate::policy::end_run(store, job, parent, state, &fields)).await {
        Ok(Moved::From(_)) => {
            tracing::info!(run_id = %parent.id, %state, succeeded, failed, "array fire ended");
        }
        Ok(Moved::AlreadyThere) => {}
        // Cancelled meanwhile: its copies had all ended anyway.
        Err(err) if err.code == crate::ErrorCode::Conflict => {}
        Err(err) => return Err(err),
    }
    store.forget_array(&parent.job_id, &parent.id).await
}
