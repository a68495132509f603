//! A scheduled fire waits in `timers` alone until the pump's bound (`timers:unarmed:until`) comes near
//! it; only then does it join `timers:unarmed`. These tests hold the store to that: far fires cost no
//! unarmed entry, each is taken exactly once as the bound passes it (however many share a
//! millisecond, however small the pump's rounds), under the job's current generation, and a job
//! created beyond the pump's horizon fires once, on time, with a provisioner stopped midway.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::json;
use spot_tests::*;

fn dummy(due: DateTime<Utc>) -> serde_json::Value {
    json!({"schedule": due.to_rfc3339(), "runner": {"type": "dummy", "template": "x"}})
}

async fn unarmed_len(env: &TestEnv) -> usize {
    let (mut conn, _) = env.raw_keys("timers:unarmed").await;
    redis::cmd("ZCARD")
        .arg(format!("{}:timers:unarmed", env.name))
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_fire_joins_the_unarmed_set_only_when_the_pump_comes_near_it() {
    let env = TestEnv::new();
    let store = env.store().await;
    let app = spawn_app(&env).await;
    let now = Utc::now();
    // A first round with nothing due sets the bound 30 s out.
    assert!(store
        .claim_unarmed(now + chrono::Duration::seconds(30), 100)
        .await
        .unwrap()
        .is_empty());

    let far = app
        .create_job(ACCOUNT_KEY, dummy(now + chrono::Duration::hours(1)))
        .await;
    let near = app
        .create_job(ACCOUNT_KEY, dummy(now + chrono::Duration::seconds(10)))
        .await;
    assert_eq!(unarmed_len(&env).await, 1, "only the near fire is unarmed");

    let taken = store
        .claim_unarmed(now + chrono::Duration::seconds(30), 100)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].fire.job_id, near);

    // Edited twice while far: taken once, under its latest generation, at its latest instant.
    let later = now + chrono::Duration::hours(2);
    for due in [now + chrono::Duration::minutes(90), later] {
        let response = app
            .send(
                Method::PUT,
                &format!("/v1/jobs/{far}"),
                ACCOUNT_KEY,
                Some(dummy(due)),
            )
            .await;
        assert_eq!(response.status(), 200);
    }
    assert_eq!(unarmed_len(&env).await, 0);
    let taken = store
        .claim_unarmed(now + chrono::Duration::hours(3), 100)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1, "{taken:?}");
    assert_eq!(taken[0].fire.job_id, far);
    assert_eq!(taken[0].fire.generation, 3);
    assert_eq!(taken[0].due.timestamp_millis(), later.timestamp_millis());
    assert!(store
        .claim_unarmed(now + chrono::Duration::hours(4), 100)
        .await
        .unwrap()
        .is_empty());

    // A fire set at or before the bound is armed at once: the bound never skips a timer.
    let response = app
        .send(
            Method::PUT,
            &format!("/v1/jobs/{far}"),
            ACCOUNT_KEY,
            Some(dummy(now + chrono::Duration::hours(3))),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(unarmed_len(&env).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_rounds_take_every_far_fire_once_even_many_in_one_millisecond() {
    let env = TestEnv::new();
    let store = env.store().await;
    let app = spawn_app(&env).await;
    let now = Utc::now();
    store.claim_unarmed(now, 10).await.unwrap();
    // 30 jobs in one millisecond, then 10 one millisecond apart, then one disabled and one deleted.
    let instant = now + chrono::Duration::hours(1);
    let mut jobs = Vec::new();
    for i in 0..40 {
        let due = instant + chrono::Duration::milliseconds((i - 29).max(0));
        jobs.push(app.create_job(ACCOUNT_KEY, dummy(due)).await);
    }
    let disabled = app.create_job(ACCOUNT_KEY, dummy(instant)).await;
    let response = app
        .send(
            Method::POST,
            &format!("/v1/jobs/{disabled}/disable"),
            ACCOUNT_KEY,
            None,
        )
        .await;
    assert!(response.status().is_success(), "{}", response.status());
    let deleted = app.create_job(ACCOUNT_KEY, dummy(instant)).await;
    let response = app
        .send(
            Method::DELETE,
            &format!("/v1/jobs/{deleted}"),
            ACCOUNT_KEY,
            None,
        )
        .await;
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(unarmed_len(&env).await, 0);

    // Rounds of 7, the bound creeping a millisecond a round, then leaping.
    let mut taken: BTreeMap<String, usize> = BTreeMap::new();
    let mut bound = instant - chrono::Duration::milliseconds(5);
    for _ in 0..200 {
        for timer in store.claim_unarmed(bound, 7).await.unwrap() {
            *taken.entry(timer.fire.job_id).or_default() += 1;
        }
        bound += chrono::Duration::milliseconds(
            if bound < instant + chrono::Duration::milliseconds(12) {
                1
            } else {
                1000
            },
        );
    }
    let expected: BTreeMap<String, usize> = jobs.iter().map(|id| (id.clone(), 1)).collect();
    assert_eq!(taken, expected, "each enabled job taken once, no other");
}

/// With the pump handing timers over in their last unit (about a second ahead), jobs created 3 to
/// 6 s ahead are all beyond its bound when saved. The provisioner is stopped midway and another
/// started: each job runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_created_beyond_the_pump_fire_once_across_a_provisioner_restart() {
    let mut env = TestEnv::new();
    env.settings.rabbitmq.timer_pump_level = -1;
    let store = env.store().await;
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    eventually(
        Duration::from_secs(10),
        "the pump's first round",
        || async {
            let (mut conn, _) = env.raw_keys("timers:unarmed:until").await;
            let bound: Option<i64> = redis::cmd("GET")
                .arg(format!("{}:timers:unarmed:until", env.name))
                .query_async(&mut conn)
                .await
                .ok()?;
            bound.map(|_| ())
        },
    )
    .await;
    let start = Utc::now() + chrono::Duration::seconds(3);
    let mut jobs = Vec::new();
    for i in 0..60 {
        let due = start + chrono::Duration::milliseconds(50 * i);
        jobs.push(app.create_job(ACCOUNT_KEY, dummy(due)).await);
    }
    assert!(
        unarmed_len(&env).await < jobs.len(),
        "most were saved beyond the bound"
    );
    let midway = start + chrono::Duration::milliseconds(1500) - Utc::now();
    tokio::time::sleep(midway.to_std().unwrap_or_default()).await;
    provisioner.stop().await;
    let _again = spawn_provisioner(&env, &app.address).await;
    assert_each_fires_once(&store, &jobs, Duration::from_secs(60)).await;
}
