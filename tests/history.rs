//! `history_limit` deletes only ended runs: a run still under way keeps its record (and with it its
//! instance and its log) however many runs come after it, and goes once it has ended.

use chrono::{Duration, Utc};
use serde_json::json;
use spot_shared::messages::FireMessage;
use spot_shared::model::RunState;
use spot_shared::store::{CostRecord, FireRecord, Store};
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

/// A container job that fires once a year (its runs are recorded by hand), keeping `history_limit`.
async fn yearly_container_job(app: &TestApp, history_limit: usize) -> String {
    app.create_job(
        ACCOUNT_KEY,
        json!({"schedule": "0 0 1 1 *",
               "runner": {"type": "container", "image": "busybox", "cmd": "true"},
               "policies": {"history_limit": history_limit}}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_keeps_a_run_still_under_way() {
    let env = TestEnv::new();
    let store = env.store().await;
    let app = spawn_app(&env).await;
    let job_id = yearly_container_job(&app, 1).await;
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
            relaunch: false,
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
        relaunch: false,
        ..FireMessage::scheduled(&job_id, job.generation, now)
    };
    provisioner.handle_fire(&fire).await.unwrap();
    let runs = store.job_run_ids(&job_id, 0).await.unwrap();
    assert_eq!(runs.len(), 2);
    assert!(!runs.contains(&first));
}

/// A run's cost, as the reaper records it when the run's instance is terminated.
fn cost_of(job_id: &str, run_id: &str, nano_usd: u64) -> CostRecord {
    CostRecord {
        instance_id: format!("i-{run_id}"),
        run_id: run_id.to_string(),
        account: "acme".into(),
        group: "default".into(),
        job_id: job_id.to_string(),
        market: "spot".into(),
        terminated_at: Utc::now(),
        billed_secs: 60,
        nano_usd,
        leaked_secs: 0,
        overheads: Vec::new(),
    }
}

/// `cost_usd_total` is one read of a total kept with the runs: a run's cost adds to it once however
/// often it is recorded, a trimmed run's cost leaves it, and a job without a total yet (its runs
/// costed before totals were kept) gets it summed from its kept runs the first time it is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_cost_total_follows_its_kept_runs() {
    let env = TestEnv::new();
    let store = env.store().await;
    let app = spawn_app(&env).await;
    let job_id = yearly_container_job(&app, 2).await;
    let app = &app;
    let cost_total = move |id: String| async move {
        let job: serde_json::Value = app
            .get(&format!("/v1/jobs/{id}"), ACCOUNT_KEY)
            .await
            .json()
            .await
            .unwrap();
        (job["cost_usd_total"].as_f64().unwrap() * 1e9).round() as u64
    };
    let total = || cost_total(job_id.clone());
    let now = Utc::now();
    let mut runs = Vec::new();
    for ago in [3, 2, 1] {
        let run = record(&store, &job_id, now - Duration::seconds(ago)).await;
        for state in [RunState::Provisioning, RunState::ProvisionFailed] {
            store.advance_run(&run, state, &[]).await.unwrap();
        }
        runs.push(run);
    }
    // One costed before totals were kept: on the run only.
    store
        .set_run_fields(&runs[1], &[("cost_nano_usd", "500".to_string())])
        .await
        .unwrap();
    assert!(store
        .account_cost(&cost_of(&job_id, &runs[0], 7_000))
        .await
        .unwrap());
    assert_eq!(
        total().await,
        7_500,
        "the first cost makes the total from the kept runs'"
    );
    // Recorded again (a reaper retrying): counted once.
    assert!(!store
        .account_cost(&cost_of(&job_id, &runs[0], 7_000))
        .await
        .unwrap());
    assert!(store
        .account_cost(&cost_of(&job_id, &runs[2], 40_000))
        .await
        .unwrap());
    assert_eq!(total().await, 47_500);

    // history_limit 2: the oldest goes, and its cost with it.
    assert_eq!(store.trim_runs(&job_id, 2).await.unwrap(), 1);
    assert_eq!(total().await, 40_500);
    let kept: u64 = store
        .job_runs(&job_id, 0)
        .await
        .unwrap()
        .iter()
        .filter_map(|run| run.cost_usd)
        .map(|usd| (usd * 1e9).round() as u64)
        .sum();
    assert_eq!(kept, 40_500, "the total is the kept runs' sum");

    // Another job costed before totals were kept, and then only read: its total is made from its
    // kept runs when first asked for.
    let other = yearly_container_job(app, 2).await;
    let run = record(&store, &other, now).await;
    store
        .set_run_fields(&run, &[("cost_nano_usd", "300".to_string())])
        .await
        .unwrap();
    assert_eq!(cost_total(other.clone()).await, 300);
    assert_eq!(cost_total(other).await, 300);
}
