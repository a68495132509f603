//! `history_limit` deletes only ended runs: a run still under way keeps its record (and with it its
//! instance and its log) however many runs come after it, and goes once it has ended.

use chrono::{Duration, Utc};
use serde_json::json;
use spot_shared::messages::FireMessage;
use spot_shared::model::RunState;
use spot_shared::store::{FireRecord, Store};
use spot_tests::*;

async fn record(store: &Store, job_id: &str, at: chrono::DateTime<Utc>) -> String {
    let job = store.get_job(job_id).await.unwrap().unwrap();
    match store
        .record_fire(&job, job.generation, at, 1)
        .await
        .unwrap()
    {
        FireRecord::New(run_id) => run_id,
        other => panic!("a new run: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_keeps_a_run_still_under_way() {
    let env = TestEnv::new();
    let store = env.store().await;
    let app = spawn_app(&env).await;
    let job_id = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "0 0 1 1 *",
                   "runner": {"type": "container", "image": "busybox", "cmd": "true"},
                   "policies": {"history_limit": 1}}),
        )
        .await;
    let now = Utc::now();
    let first = record(&store, &job_id, now - Duration::seconds(2)).await;
    store
        .advance_run(&first, RunState::Provisioning, &[])
        .await
        .unwrap();
    let second = record(&store, &job_id, now - Duration::seconds(1)).await;
    assert_eq!(store.trim_runs(&job_id, 1).await.unwrap(), 0);
    assert_eq!(store.job_run_ids(&job_id, 0).await.unwrap().len(), 2);

    // Ended, it goes at the next trim; the newest stays.
    store
        .advance_run(&first, RunState::ProvisionFailed, &[])
        .await
        .unwrap();
    assert_eq!(store.trim_runs(&job_id, 1).await.unwrap(), 1);
    assert_eq!(store.job_run_ids(&job_id, 0).await.unwrap(), [second]);
    assert!(store.get_run(&first).await.unwrap().is_none());
}

/// The case on the light path: `history_limit: 2`, a fourth fire while the first run is still
/// running; the first keeps running and ends normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_fires_never_trim_a_running_run() {
    let env = TestEnv::new();
    let store = env.store().await;
    let app = spawn_app(&env).await;
    let provisioner = spot_provisioner::Provisioner::build(env.settings.clone())
        .await
        .unwrap();
    let job_id = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "0 0 1 1 *", "runner": {"type": "dummy", "template": "x"},
                   "policies": {"history_limit": 2}}),
        )
        .await;
    let job = store.get_job(&job_id).await.unwrap().unwrap();
    let now = Utc::now();
    let first = record(&store, &job_id, now - Duration::seconds(10)).await;
    store
        .advance_run(&first, RunState::Running, &[])
        .await
        .unwrap();
    for i in 1..=3 {
        let instant = chrono::DateTime::from_timestamp_millis(
            (now - Duration::seconds(10 - i)).timestamp_millis(),
        )
        .unwrap();
        let fire = FireMessage {
            manual: true,
            ..FireMessage::scheduled(&job_id, job.generation, instant)
        };
        provisioner.handle_fire(&fire).await.unwrap();
    }
    let runs = store.job_run_ids(&job_id, 0).await.unwrap();
    assert_eq!(
        runs.len(),
        3,
        "the newest two and the running one: {runs:?}"
    );
    assert!(runs.contains(&first));
    assert_eq!(
        store.get_run(&first).await.unwrap().unwrap().state,
        RunState::Running
    );
    store
        .advance_run(&first, RunState::Succeeded, &[])
        .await
        .unwrap();
    assert_eq!(
        store.get_run(&first).await.unwrap().unwrap().state,
        RunState::Succeeded,
        "it ended normally"
    );
    // Ended, the next fire trims it.
    let fire = FireMessage {
        manual: true,
        ..FireMessage::scheduled(&job_id, job.generation, now)
    };
    provisioner.handle_fire(&fire).await.unwrap();
    let runs = store.job_run_ids(&job_id, 0).await.unwrap();
    assert_eq!(runs.len(), 2);
    assert!(!runs.contains(&first));
}
