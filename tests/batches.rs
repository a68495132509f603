//! Batches of fires from the timer pump, on real Redis and RabbitMQ: light fires recorded at their
//! instants, once; other fires sent on as messages of their own; stale ones dropped; histories trimmed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::options::BasicGetOptions;
use serde_json::json;
use spot_provisioner::{BatchOutcome, FireOutcome, Provisioner};
use spot_shared::messages::{FireBatch, FireDelivery, FireMessage};
use spot_shared::model::RunState;
use spot_shared::store::{FireRecord, Store};
use spot_tests::*;

fn dummy(schedule: &str, template: &str) -> serde_json::Value {
    json!({"schedule": schedule, "runner": {"type": "dummy", "template": template}})
}

/// The scheduled fire of a job at its next fire time, as the pump would send it.
async fn next_fire(store: &Store, job_id: &str) -> FireMessage {
    let job = store.get_job(job_id).await.unwrap().unwrap();
    FireMessage::scheduled(job_id, job.generation, job.next_fire_at.unwrap())
}

async fn provisioner(env: &TestEnv) -> Provisioner {
    Provisioner::build(env.settings.clone()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_fires_light_jobs_at_their_instants_once_and_sends_the_others_on() {
    let env = TestEnv::new();
    let store = env.store().await;
    let broker = env.broker().await;
    let provisioner = provisioner(&env).await;
    let app = spawn_app(&env).await;

    let soon = |ms: i64| (Utc::now() + chrono::Duration::milliseconds(ms)).to_rfc3339();
    let first = app
        .create_job(ACCOUNT_KEY, dummy(&soon(800), "one for {{.Account}}"))
        .await;
    let second = app.create_job(ACCOUNT_KEY, dummy(&soon(800), "two")).await;
    let every_second = app
        .create_job(ACCOUNT_KEY, dummy("* * * * * *", "tick"))
        .await;
    let with_policy = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": soon(900), "runner": {"type": "dummy", "template": "x"},
                   "policies": {"concurrency": "forbid"}}),
        )
        .await;
    let deleted = app.create_job(ACCOUNT_KEY, dummy(&soon(900), "gone")).await;
    let changed = app.create_job(ACCOUNT_KEY, dummy(&soon(900), "old")).await;

    let mut fires = Vec::new();
    for id in [
        &first,
        &second,
        &every_second,
        &with_policy,
        &deleted,
        &changed,
    ] {
        fires.push(next_fire(&store, id).await);
    }
    fires[5].generation += 1; // armed for a generation the job no longer has (or not yet)
    let job = store.get_job(&deleted).await.unwrap().unwrap();
    store.delete_job(&job).await.unwrap();
    let batch = FireBatch { fires };

    let outcome = provisioner.handle_batch(&batch).await.unwrap();
    assert_eq!(
        outcome,
        BatchOutcome {
            fired: 3,
            recorded_before: 0,
            stale: 2,
            handed_off: 1
        }
    );
    for (job_id, output) in [
        (&first, "one for acme".to_string()),
        (&second, "two".to_string()),
        (&every_second, "tick".to_string()),
    ] {
        let scheduled = batch
            .fires
            .iter()
            .find(|f| &f.job_id == job_id)
            .unwrap()
            .scheduled_at;
        let runs = store.job_run_ids(job_id, 0).await.unwrap();
        assert_eq!(runs.len(), 1, "runs of {job_id}");
        let run = store.get_run(&runs[0]).await.unwrap().unwrap();
        assert_eq!(run.state, RunState::Succeeded);
        assert_eq!(run.exit_code, Some(0));
        assert_eq!(run.scheduled_at, scheduled);
        let fired = run.transitions[&RunState::Pending];
        let late = (fired - scheduled).num_milliseconds();
        assert!(
            (0..1000).contains(&late),
            "fired {late} ms after its instant"
        );
        assert_eq!(
            store.get_log(&run.id).await.unwrap(),
            output.as_bytes(),
            "output of {job_id}"
        );
    }
    // Each fire is in the lateness histogram the api serves.
    let lateness = store.fire_lateness().await.unwrap();
    assert_eq!(lateness.count, 3);
    assert!(lateness.quantile_bound(1.0).is_some_and(|ms| ms <= 1000));
    let metrics = app.get("/metrics", ACCOUNT_KEY).await.text().await.unwrap();
    assert!(
        metrics.contains("spot_scheduler_fire_lateness_seconds_count 3"),
        "{metrics}"
    );
    assert!(metrics.contains("spot_scheduler_fire_lateness_seconds_bucket{le=\"+Inf\"} 3"));
    // One-shot jobs have no next fire; the recurring one moved on past the fire.
    assert_eq!(
        store.get_job(&first).await.unwrap().unwrap().next_fire_at,
        None
    );
    let ticked = store.get_job(&every_second).await.unwrap().unwrap();
    assert!(ticked.next_fire_at.unwrap() > batch.fires[2].scheduled_at);
    // The job with a policy went on as a fire of its own, unrecorded here.
    assert!(store.job_run_ids(&with_policy, 0).await.unwrap().is_empty());
    let channel = broker.channel().await.unwrap();
    let queue = broker.topology().fires_queue();
    let delivery = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the fire sent on");
    let sent: FireDelivery = serde_json::from_slice(&delivery.data).unwrap();
    assert_eq!(sent, FireDelivery::One(batch.fires[3].clone()));

    // Delivered again (a crash before the ack): nothing fires twice.
    let again = provisioner.handle_batch(&batch).await.unwrap();
    assert_eq!(
        again,
        BatchOutcome {
            fired: 0,
            recorded_before: 3,
            stale: 2,
            handed_off: 1
        }
    );
    for job_id in [&first, &second, &every_second] {
        assert_eq!(store.job_run_ids(job_id, 0).await.unwrap().len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_light_jobs_history_is_trimmed_to_its_limit() {
    let env = TestEnv::new();
    let store = env.store().await;
    let provisioner = provisioner(&env).await;
    let app = spawn_app(&env).await;
    let job_id = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "* * * * * *", "runner": {"type": "dummy", "template": "t"},
                   "policies": {"history_limit": 2}}),
        )
        .await;

    let mut run_ids = Vec::new();
    for _ in 0..3 {
        let fire = next_fire(&store, &job_id).await;
        let outcome = provisioner
            .handle_batch(&FireBatch { fires: vec![fire] })
            .await
            .unwrap();
        assert_eq!(outcome.fired, 1);
        run_ids.push(store.latest_run(&job_id).await.unwrap().unwrap().id);
    }
    assert_eq!(
        store.job_run_ids(&job_id, 0).await.unwrap(),
        vec![run_ids[2].clone(), run_ids[1].clone()]
    );
    assert!(store.get_run(&run_ids[0]).await.unwrap().is_none());
    assert!(store.get_log(&run_ids[0]).await.unwrap().is_empty());
}

/// A fire recorded by an earlier delivery that stopped half-way (run left `running`) is finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_light_fire_left_half_done_is_finished_by_the_batch() {
    let env = TestEnv::new();
    let store = env.store().await;
    let provisioner = provisioner(&env).await;
    let app = spawn_app(&env).await;
    let due: DateTime<Utc> = Utc::now() + chrono::Duration::milliseconds(300);
    let job_id = app
        .create_job(ACCOUNT_KEY, dummy(&due.to_rfc3339(), "late"))
        .await;
    let fire = next_fire(&store, &job_id).await;
    let job = store.get_job(&job_id).await.unwrap().unwrap();
    let FireRecord::New(run_id) = store
        .record_fire(&job, fire.generation, fire.scheduled_at, 1)
        .await
        .unwrap()
    else {
        panic!("recorded before")
    };
    store
        .advance_run(&run_id, RunState::Running, &[])
        .await
        .unwrap();

    let outcome = provisioner
        .handle_batch(&FireBatch { fires: vec![fire] })
        .await
        .unwrap();
    assert_eq!(outcome.recorded_before, 1);
    let run = eventually(Duration::from_secs(5), "the run to end", || async {
        let run = store.get_run(&run_id).await.unwrap()?;
        run.state.is_terminal().then_some(run)
    })
    .await;
    assert_eq!(run.state, RunState::Succeeded);
    assert_eq!(store.job_run_ids(&job_id, 0).await.unwrap(), vec![run_id]);
}

/// The pump sends the timers of a round `pump_message_fires` to a message, in order of their instants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pump_sends_timers_several_to_a_message_in_order() {
    let mut env = TestEnv::new();
    env.settings.provisioner.pump_message_fires = 2;
    // A round hands each shard's timers over on their own: one shard, for the three to meet.
    env.settings.redis.timer_shards = 1;
    let store = env.store().await;
    let broker = env.broker().await;
    let provisioner = provisioner(&env).await;
    let app = spawn_app(&env).await;
    let now = Utc::now();
    let mut jobs = Vec::new();
    // Created out of order; all come within the pump's horizon (about a second) within a second.
    for ms in [1_600, 1_200, 1_400] {
        let due = (now + chrono::Duration::milliseconds(ms)).to_rfc3339();
        jobs.push(app.create_job(ACCOUNT_KEY, dummy(&due, "x")).await);
    }
    // Wait until all three are within the horizon, so that one round takes them together.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(provisioner.pump_once().await.unwrap(), 3);

    let channel = broker.channel().await.unwrap();
    let queue = broker.topology().fires_queue();
    let mut batches = Vec::new();
    while let Some(delivery) = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        match serde_json::from_slice(&delivery.data).unwrap() {
            FireDelivery::Batch(batch) => batches.push(batch),
            other => panic!("a single fire from the pump: {other:?}"),
        }
    }
    let mut sizes: Vec<usize> = batches.iter().map(|b| b.fires.len()).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [1, 2]);
    let pair = batches.iter().find(|b| b.fires.len() == 2).unwrap();
    // The two earliest travel together, earliest first.
    assert_eq!(pair.fires[0].job_id, jobs[1]);
    assert_eq!(pair.fires[1].job_id, jobs[2]);
    // Handed over, they wait in RabbitMQ only.
    assert!(store
        .claim_unarmed(Utc::now() + chrono::Duration::hours(1), 10)
        .await
        .unwrap()
        .is_empty());
}

/// A fire twice in one batch is recorded once: the light-fire script reads every fire's job and
/// timer before it writes, so the store gives each script fires of different jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fire_twice_in_one_batch_is_recorded_once() {
    let env = TestEnv::new();
    let store = env.store().await;
    let provisioner = provisioner(&env).await;
    let app = spawn_app(&env).await;
    let every_second = app
        .create_job(ACCOUNT_KEY, dummy("* * * * * *", "tick"))
        .await;
    let fire = next_fire(&store, &every_second).await;
    let batch = FireBatch {
        fires: vec![fire.clone(), fire],
    };

    let outcome = provisioner.handle_batch(&batch).await.unwrap();
    assert_eq!(
        outcome,
        BatchOutcome {
            fired: 1,
            recorded_before: 1,
            stale: 0,
            handed_off: 0
        }
    );
    assert_eq!(store.job_run_ids(&every_second, 0).await.unwrap().len(), 1);
}

/// A light fire delivered on its own (a hand-off, the reconciler's re-arm) is recorded once too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_light_fire_delivered_twice_runs_once() {
    let env = TestEnv::new();
    let store = env.store().await;
    let provisioner = provisioner(&env).await;
    let app = spawn_app(&env).await;
    let due = (Utc::now() + chrono::Duration::milliseconds(200)).to_rfc3339();
    let job_id = app.create_job(ACCOUNT_KEY, dummy(&due, "once")).await;
    let fire = next_fire(&store, &job_id).await;

    let first = provisioner.handle_fire(&fire).await.unwrap();
    assert!(
        matches!(first, FireOutcome::Launched { new: true, .. }),
        "{first:?}"
    );
    let second = provisioner.handle_fire(&fire).await.unwrap();
    assert_eq!(second, FireOutcome::Passed);
    let runs = store.job_run_ids(&job_id, 0).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(store.get_log(&runs[0]).await.unwrap(), b"once");
}

/// `POST /v1/jobs:batch`: each job created or refused on its own (a 400 naming `jobs[i].field`, the
/// account's job quota counted in order), the created ones listed and each fired once; on the Redis
/// Cluster (scripts/test runs this file again there) the save spans shards and the account's slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_jobs_is_created_each_on_its_own_and_each_fires_once() {
    let mut env = TestEnv::new();
    env.settings.quotas.max_jobs = 5;
    let store = env.store().await;
    let app = spawn_app(&env).await;
    let soon = |ms: i64| (Utc::now() + chrono::Duration::milliseconds(ms)).to_rfc3339();
    let before = app
        .create_job(ACCOUNT_KEY, dummy(&soon(2_000), "alone"))
        .await;

    let mut bad_field = dummy(&soon(2_000), "x");
    bad_field["bogus"] = json!(1);
    let batch = json!({"jobs": [
        dummy(&soon(2_000), "first"),
        dummy(&soon(2_500), "second"),
        dummy("not a schedule", "x"),
        bad_field,
        dummy(&soon(3_000), "third"),
        dummy("*/5 * * * *", "fourth"),
        dummy(&soon(3_000), "over the quota"),
    ]});
    let response = app
        .send(
            reqwest::Method::POST,
            "/v1/jobs:batch",
            ACCOUNT_KEY,
            Some(batch),
        )
        .await;
    assert_eq!(response.status(), 200);
    let reply: serde_json::Value = response.json().await.unwrap();
    let statuses: Vec<u64> = reply["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [201, 201, 400, 400, 201, 201, 429], "{reply}");
    assert_eq!(
        (reply["created"].as_u64(), reply["refused"].as_u64()),
        (Some(4), Some(3))
    );
    let error = |i: usize| reply["results"][i]["error"].clone();
    assert_eq!(error(2)["field"], "jobs[2].schedule", "{reply}");
    assert_eq!(error(3)["field"], "jobs[3].bogus", "{reply}");
    assert_eq!(error(6)["field"], "jobs[6].quotas.max_jobs", "{reply}");
    assert!(error(6)["message"].as_str().unwrap().contains("quota"));
    let created: Vec<String> = [0, 1, 4, 5]
        .iter()
        .map(|&i| {
            reply["results"][i]["job"]["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(reply["results"][5]["job"]["runner"]["template"], "fourth");
    assert!(reply["results"][5]["next_fire_at"].is_null());
    assert!(!reply["results"][5]["job"]["next_fire_at"].is_null());

    // Listed like any job, and read back as created.
    let listed: serde_json::Value = app.get("/v1/jobs", ACCOUNT_KEY).await.json().await.unwrap();
    let mut listed: Vec<String> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["id"].as_str().unwrap().to_string())
        .collect();
    listed.sort();
    let mut expected = created.clone();
    expected.push(before.clone());
    expected.sort();
    assert_eq!(listed, expected);
    let second = store.get_job(&created[1]).await.unwrap().unwrap();
    assert_eq!(second.generation, 1);
    assert!(second.next_fire_at.is_some());

    // Every one-shot of the batch fires once.
    let _provisioner = spawn_provisioner(&env, &app.address).await;
    let one_shots = [
        created[0].clone(),
        created[1].clone(),
        created[2].clone(),
        before,
    ];
    assert_each_fires_once(&store, &one_shots, Duration::from_secs(30)).await;

    // Not a batch: refused whole, naming the field, nothing stored.
    for (body, field) in [
        (json!({"jobs": []}), "jobs"),
        (
            json!({"jobs": vec![dummy("*/5 * * * *", "x"); 1001]}),
            "jobs",
        ),
        (json!({"jobs": [], "extra": 1}), "extra"),
        (json!([dummy("*/5 * * * *", "x")]), "body"),
    ] {
        let response = app
            .send(
                reqwest::Method::POST,
                "/v1/jobs:batch",
                ACCOUNT_KEY,
                Some(body),
            )
            .await;
        assert_eq!(response.status(), 400);
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["field"], field, "{error}");
    }
    assert_eq!(store.count_jobs("acme").await.unwrap(), 5);
}
