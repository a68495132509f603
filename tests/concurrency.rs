//! The concurrency policies are decided in the Redis script that records the fire: however many
//! deliveries, provisioners or fires race, `forbid` never lets two runs be under way and `replace`
//! never cancels the run its own fire created. Retries obey the policy too.

use chrono::{DateTime, Duration, Utc};
use futures::future::join_all;
use serde_json::json;
use spot_shared::model::{Job, RunState};
use spot_shared::store::{FireRecord, RecordedFire, Store};
use spot_tests::*;

async fn job(env: &TestEnv, app: &TestApp, policy: &str) -> Job {
    let id = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "0 0 1 1 *",
                   "runner": {"type": "container", "image": "busybox", "cmd": "true"},
                   "policies": {"concurrency": policy}}),
        )
        .await;
    env.store().await.get_job(&id).await.unwrap().unwrap()
}

fn instant(secs_ago: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis((Utc::now() - Duration::seconds(secs_ago)).timestamp_millis())
        .unwrap()
}

/// `times` deliveries of the fire of `job` at `at`, all at once.
async fn deliver(
    store: &Store,
    job: &Job,
    at: DateTime<Utc>,
    attempt: u32,
    times: usize,
) -> Vec<RecordedFire> {
    join_all((0..times).map(|_| store.record_fire_deciding(job, job.generation, at, attempt)))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

async fn live_runs(store: &Store, job: &Job) -> Vec<String> {
    let mut live = Vec::new();
    for id in store.job_run_ids(&job.id, 0).await.unwrap() {
        if let Some(run) = store.get_run(&id).await.unwrap() {
            if !run.state.is_terminal() {
                live.push(id);
            }
        }
    }
    live
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forbid_never_lets_two_runs_be_under_way() {
    let env = TestEnv::new();
    let store = env.store().await;
    let app = spawn_app(&env).await;
    let job = job(&env, &app, "forbid").await;

    // One fire delivered twenty times at once: one run, never forbidden by itself.
    let at = instant(30);
    let first = deliver(&store, &job, at, 1, 20).await;
    let new: Vec<_> = first
        .iter()
        .filter(|r| matches!(r.record, FireRecord::New(_)))
        .collect();
    assert_eq!(new.len(), 1, "{first:?}");
    let FireRecord::New(run_id) = &new[0].record else {
        unreachable!()
    };
    assert!(
        first
            .iter()
            .all(|r| r.record == FireRecord::New(run_id.clone())
                || r.record == FireRecord::Existing(run_id.clone())),
        "{first:?}"
    );

    // Ten other fires at once (and each delivered twice), while it is under way: all forbidden.
    let others = join_all((1..=10).map(|i| deliver(&store, &job, instant(30 - i), 1, 2))).await;
    for recorded in others.iter().flatten() {
        assert_eq!(recorded.record, FireRecord::Forbidden(run_id.clone()));
    }
    assert_eq!(live_runs(&store, &job).await, std::slice::from_ref(run_id));

    // An older fire arriving late is forbidden too.
    let late = deliver(&store, &job, instant(60), 1, 1).await;
    assert!(matches!(late[0].record, FireRecord::Forbidden(_)));
    // Once the run has ended, its retry is recorded once, and is then the run under way.
    store
        .advance_run(run_id, RunState::Provisioning, &[])
        .await
        .unwrap();
    store
        .advance_run(run_id, RunState::ProvisionFailed, &[])
        .await
        .unwrap();
    let retry = deliver(&store, &job, at, 2, 5).await;
    assert_eq!(
        retry
            .iter()
            .filter(|r| matches!(r.record, FireRecord::New(_)))
            .count(),
        1
    );
    let later = deliver(&store, &job, instant(5), 1, 1).await;
    assert!(
        matches!(later[0].record, FireRecord::Forbidden(_)),
        "the retry is under way"
    );
    assert_eq!(live_runs(&store, &job).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replace_cancels_the_run_under_way_but_never_its_own() {
    let env = TestEnv::new();
    let store = env.store().await;
    let app = spawn_app(&env).await;
    let job = job(&env, &app, "replace").await;

    let first = deliver(&store, &job, instant(30), 1, 1).await;
    let FireRecord::New(old) = first[0].record.clone() else {
        panic!("{first:?}")
    };
    // The next fire, delivered twenty times at once.
    let at = instant(20);
    let next = deliver(&store, &job, at, 1, 20).await;
    let new: Vec<_> = next
        .iter()
        .filter(|r| matches!(r.record, FireRecord::New(_)))
        .collect();
    assert_eq!(new.len(), 1, "{next:?}");
    let FireRecord::New(current) = new[0].record.clone() else {
        unreachable!()
    };
    // The old run was cancelled once, by the delivery that recorded the new one.
    let cancelled: Vec<_> = next.iter().flat_map(|r| r.cancelled.iter()).collect();
    assert_eq!(cancelled.len(), 1, "{next:?}");
    assert_eq!(cancelled[0].run_id, old);
    assert_eq!(new[0].cancelled.len(), 1);
    let old_run = store.get_run(&old).await.unwrap().unwrap();
    assert_eq!(old_run.state, RunState::Cancelled);
    assert!(old_run.transitions.contains_key(&RunState::Cancelled));
    // Its own duplicates never cancel it: the fire ends with a live run.
    assert_eq!(
        live_runs(&store, &job).await,
        std::slice::from_ref(&current)
    );
    let again = deliver(&store, &job, at, 1, 5).await;
    assert!(again
        .iter()
        .all(|r| r.record == FireRecord::Existing(current.clone()) && r.cancelled.is_empty()));
    assert_eq!(live_runs(&store, &job).await, [current]);
}
