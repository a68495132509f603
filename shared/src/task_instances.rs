//! The EC2 instances HRM tasks run on: which live tasks need each (`hrm:instance:{id}:runs`), which
//! the system started itself (`hrm:controlled:{account}`), and stopping one that no task needs any
//! more, if the system started it. Used by the provisioner when a task ends, and by the reaper's sweep
//! when it ends a task whose provisioner went away.

use crate::error::Result;
use crate::instance_power::{Ec2, PowerAction};
use crate::model::HttpSpec;
use crate::store::Store;

/// Lets go of `instance_id` for the run `run_id`; stops the instance if the system started it and
/// no other live task needs it. Returns whether it was stopped.
pub async fn release(
    store: &Store,
    ec2: &Ec2,
    run_id: &str,
    instance_id: &str,
    account: &str,
) -> Result<bool> {
    store
        .set_remove(&HttpSpec::users_set(instance_id), run_id)
        .await?;
    let controlled = store
        .set_members(&HttpSpec::controlled_set(account))
        .await?
        .iter()
        .any(|id| id == instance_id);
    let users = store.set_members(&HttpSpec::users_set(instance_id)).await?;
    if !controlled || !users.is_empty() {
        return Ok(false);
    }
    ec2.power(instance_id, account, PowerAction::Stop).await?;
    store
        .set_remove(&HttpSpec::controlled_set(account), instance_id)
        .await?;
    tracing::info!(instance_id, "stopped the idle instance");
    Ok(true)
}
