//! Far timers on real Redis and RabbitMQ: a job due beyond the horizon waits in a compact bucket,
//! not in `timers`, and is brought in and fired once, on its instant; a parked timer whose job
//! changed or went is dropped, never fired.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{json, Value};
use spot_shared::store::{Promoted, Store};
use spot_tests::*;

fn dummy(due: DateTime<Utc>) -> Value {
    json!({"schedule": due.to_rfc3339(), "runner": {"type": "dummy", "template": "x"}})
}

/// A key of job `id`'s shard, as the store names it.
fn shard_key(store: &Store, id: &str, parts: &str) -> String {
    let shards = store.shards();
    format!("{}:{parts}", shards.prefix(shards.of(id)))
}

/// Job `id`'s far bucket, as the store names it (by the id's last two characters).
fn bucket_of(store: &Store, id: &str) -> String {
    shard_key(store, id, &format!("timers:far:{}", &id[id.len() - 2..]))
}

/// Where a job's timer is, read past the store: its instant in `timers`, its parked value.
fn timer_of(env: &TestEnv, store: &Store, id: &str) -> (Option<f64>, Option<String>) {
    let near: Option<f64> = env.raw_query(
        redis::cmd("ZSCORE")
            .arg(shard_key(store, id, "timers"))
            .arg(id),
    );
    let parked: Option<String> =
        env.raw_query(redis::cmd("HGET").arg(bucket_of(store, id)).arg(id));
    (near, parked)
}

/// The far horizon of every shard, once each has one.
fn far_until(env: &TestEnv, store: &Store) -> Option<Vec<i64>> {
    let shards = store.shards();
    shards
        .all()
        .map(|shard| {
            let key = format!("{}:timers:far:until", shards.prefix(shard));
            env.raw_query::<Option<i64>>(redis::cmd("GET").arg(key))
        })
        .collect()
}

/// Jobs due past a 6 s horizon are parked, show their next fire, and fire once on their instant;
/// of four changed while parked, the one deleted and the one disabled never fire, the one moved to
/// another far instant fires then, and the one moved near fires near and not again at its old time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parked_jobs_fire_once_on_their_instant_and_changed_ones_as_changed() {
    let mut env = TestEnv::new();
    env.settings.provisioner.far_timer_horizon_secs = 6;
    env.settings.provisioner.far_timer_promote_secs = 1;
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let store = env.store().await;
    eventually(Duration::from_secs(20), "the first promotion", || async {
        far_until(&env, &store)
    })
    .await;

    let start = Utc::now();
    let at = |secs: i64| {
        let t = start + chrono::Duration::seconds(secs);
        DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap()
    };
    let mut jobs = Vec::new();
    for i in 0..24 {
        jobs.push(app.create_job(ACCOUNT_KEY, dummy(at(14 + i % 3))).await);
    }
    let deleted = app.create_job(ACCOUNT_KEY, dummy(at(15))).await;
    let disabled = app.create_job(ACCOUNT_KEY, dummy(at(15))).await;
    let moved_far = app.create_job(ACCOUNT_KEY, dummy(at(15))).await;
    let moved_near = app.create_job(ACCOUNT_KEY, dummy(at(15))).await;

    // Parked, not in `timers`, and every view shows the instant.
    for id in jobs
        .iter()
        .chain([&deleted, &disabled, &moved_far, &moved_near])
    {
        let (near, parked) = timer_of(&env, &store, id);
        assert_eq!(near, None, "{id} is not in timers");
        assert!(parked.is_some(), "{id} is parked");
        let job: Value = app
            .get(&format!("/v1/jobs/{id}"), ACCOUNT_KEY)
            .await
            .json()
            .await
            .unwrap();
        let instant = |field: &str| {
            job[field]
                .as_str()
                .and_then(|t| t.parse::<DateTime<Utc>>().ok())
        };
        assert_eq!(instant("next_fire_at"), instant("schedule"), "{job}");
    }
    let page: Value = app
        .get("/v1/jobs?limit=100", ACCOUNT_KEY)
        .await
        .json()
        .await
        .unwrap();
    let listed = page["jobs"].as_array().expect("a page of jobs");
    assert_eq!(listed.len(), 28, "{page}");
    assert!(
        listed.iter().all(|job| !job["next_fire_at"].is_null()),
        "{page}"
    );

    let response = app
        .send(
            Method::DELETE,
            &format!("/v1/jobs/{deleted}"),
            ACCOUNT_KEY,
            None,
        )
        .await;
    assert_eq!(response.status(), 204);
    let response = app
        .send(
            Method::POST,
            &format!("/v1/jobs/{disabled}/disable"),
            ACCOUNT_KEY,
            None,
        )
        .await;
    assert_eq!(response.status(), 200);
    for (id, due) in [(&moved_far, at(17)), (&moved_near, at(3))] {
        let response = app
            .send(
                Method::PUT,
                &format!("/v1/jobs/{id}"),
                ACCOUNT_KEY,
                Some(dummy(due)),
            )
            .await;
        assert_eq!(response.status(), 200);
    }
    assert_eq!(timer_of(&env, &store, &deleted), (None, None));
    assert_eq!(timer_of(&env, &store, &disabled), (None, None));
    let (near, _) = timer_of(&env, &store, &moved_near);
    assert_eq!(near, Some(at(3).timestamp_millis() as f64), "moved near");

    let mut firing = jobs.clone();
    firing.push(moved_far.clone());
    firing.push(moved_near.clone());
    assert_each_fires_once(&store, &firing, Duration::from_secs(40)).await;
    // Every old instant has passed by now: the one moved near fired once, at its new time.
    for id in &firing {
        let runs = app.runs(id).await;
        assert_eq!(runs.len(), 1, "{id}: {runs:?}");
        let scheduled: DateTime<Utc> = runs[0]["scheduled_at"].as_str().unwrap().parse().unwrap();
        let expected = if *id == moved_near {
            at(3)
        } else if *id == moved_far {
            at(17)
        } else {
            let index = jobs.iter().position(|j| j == id).unwrap() as i64;
            at(14 + index % 3)
        };
        assert_eq!(scheduled, expected, "{id} fired for its instant");
    }
    assert!(app.runs(&disabled).await.is_empty());
    assert!(store.job_run_ids(&deleted, 0).await.unwrap().is_empty());
    provisioner.stop().await;
}

/// A timer parked before its job changed (as a service of an older version, which knows only
/// `timers`, would leave it) is dropped when its time comes, not fired: one whose job was edited
/// since, one whose job was deleted. The current one is brought in with its instant, and a full
/// bucket stays a listpack (the compact encoding that is the point of parking).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_timer_whose_job_changed_or_went_is_dropped_not_brought_in() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let store = env.store().await;
    // The horizon a second ahead: what a provisioner's promotion leaves.
    let promote = |horizon: DateTime<Utc>| {
        let store = store.clone();
        async move {
            let mut all = Promoted::default();
            for shard in store.shards().all() {
                let promoted = store.promote_far_timers(shard, horizon).await.unwrap();
                all.moved += promoted.moved;
                all.dropped += promoted.dropped;
            }
            all
        }
    };
    let promoted = promote(Utc::now() + chrono::Duration::seconds(1)).await;
    assert_eq!(promoted, Promoted::default());
    let due = DateTime::from_timestamp_millis(
        (Utc::now() + chrono::Duration::seconds(60)).timestamp_millis(),
    )
    .unwrap();
    let current = app.create_job(ACCOUNT_KEY, dummy(due)).await;
    let edited = app.create_job(ACCOUNT_KEY, dummy(due)).await;
    let deleted = app.create_job(ACCOUNT_KEY, dummy(due)).await;
    for id in [&current, &edited, &deleted] {
        assert_eq!(timer_of(&env, &store, id).0, None, "parked");
    }
    let (_, stale) = timer_of(&env, &store, &edited);
    let stale = stale.expect("parked at generation 1");
    assert_eq!(stale, format!("{}000001", due.timestamp_millis()));

    // An older api edits one (generation 2, its timer in `timers` only) and deletes one (its
    // record gone): both leave their parked timers behind.
    let later = due + chrono::Duration::seconds(30);
    let response = app
        .send(
            Method::PUT,
            &format!("/v1/jobs/{edited}"),
            ACCOUNT_KEY,
            Some(dummy(later)),
        )
        .await;
    assert_eq!(response.status(), 200);
    let () = env.raw_query(
        redis::cmd("HSET")
            .arg(bucket_of(&store, &edited))
            .arg(&edited)
            .arg(&stale),
    );
    let () = env.raw_query(
        redis::cmd("ZADD")
            .arg(shard_key(&store, &edited, "timers"))
            .arg(later.timestamp_millis())
            .arg(&edited),
    );
    let parked_gone: String = env.raw_query(
        redis::cmd("HGET")
            .arg(bucket_of(&store, &deleted))
            .arg(&deleted),
    );
    let () = env.raw_query(redis::cmd("DEL").arg(shard_key(
        &store,
        &deleted,
        &format!("job:{deleted}"),
    )));
    assert!(parked_gone.starts_with(&due.timestamp_millis().to_string()));

    // A promotion that passes `due`, but not `later`.
    let promoted = promote(due + chrono::Duration::seconds(1)).await;
    assert_eq!(promoted.moved, 1, "{promoted:?}");
    assert_eq!(promoted.dropped, 2, "{promoted:?}");
    assert_eq!(
        timer_of(&env, &store, &current),
        (Some(due.timestamp_millis() as f64), None)
    );
    assert_eq!(
        timer_of(&env, &store, &edited),
        (Some(later.timestamp_millis() as f64), None),
        "the newer timer stands"
    );
    assert_eq!(timer_of(&env, &store, &deleted), (None, None));
    let due_now = store
        .due_timers(due + chrono::Duration::minutes(5), 10)
        .await
        .unwrap();
    let ids: Vec<&str> = due_now.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, [current.as_str(), edited.as_str()]);

    // 300 jobs parked in one bucket-sized spread: every bucket they fill is still a listpack.
    let bodies: Vec<Value> = (0..300).map(|_| dummy(later)).collect();
    let response = app
        .send(
            Method::POST,
            "/v1/jobs:batch",
            ACCOUNT_KEY,
            Some(json!({ "jobs": bodies })),
        )
        .await;
    assert_eq!(response.status(), 200);
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["created"], 300, "{reply}");
    for result in reply["results"].as_array().unwrap() {
        let id = result["job"]["id"].as_str().unwrap();
        let encoding: String = env.raw_query(
            redis::cmd("OBJECT")
                .arg("ENCODING")
                .arg(bucket_of(&store, id)),
        );
        assert_eq!(encoding, "listpack", "{id}");
    }
}

/// A provisioner stopped in the middle of a promotion (its Redis link slowed to 1.5 s, so the
/// promotion of 40 parked timers takes several calls, and it is stopped once some are moved and
/// some still parked) leaves each timer either moved or parked, never lost: a provisioner started
/// after brings in the rest, and every job fires once, for its instant.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provisioner_stopped_mid_promotion_leaves_every_timer_for_the_next() {
    use spot_tests::fault_proxy::FaultProxy;
    if redis_cluster_nodes().is_some() {
        // A cluster client finds the other nodes past the proxy: the slow link needs one Redis.
        return;
    }
    let mut env = TestEnv::new();
    env.settings.provisioner.far_timer_horizon_secs = 6;
    env.settings.provisioner.far_timer_promote_secs = 1;
    let app = spawn_app(&env).await;
    let store = env.store().await;
    let redis_url = secrecy::ExposeSecret::expose_secret(&env.settings.redis.url).to_string();
    let (slow_link, slow_url) = FaultProxy::in_front_of(&redis_url).await;
    let mut slow_settings = env.settings.clone();
    slow_settings.redis.url = secrecy::SecretString::from(slow_url);
    let provisioner = spawn_provisioner_with(slow_settings, &app.address).await;
    eventually(Duration::from_secs(20), "the first promotion", || async {
        far_until(&env, &store)
    })
    .await;

    let due = DateTime::from_timestamp_millis(
        (Utc::now() + chrono::Duration::seconds(24)).timestamp_millis(),
    )
    .unwrap();
    let jobs: Vec<String> =
        futures::future::join_all((0..40).map(|_| app.create_job(ACCOUNT_KEY, dummy(due)))).await;
    assert!(jobs.iter().all(|id| timer_of(&env, &store, id).1.is_some()));
    slow_link.slow_down(Duration::from_millis(1500), Duration::ZERO);
    let moved = || {
        jobs.iter()
            .filter(|id| timer_of(&env, &store, id).0.is_some())
            .count()
    };
    let moved_when_stopped = eventually(
        Duration::from_secs(40),
        "the promotion under way",
        || async {
            let moved = moved();
            (moved > 0).then_some(moved)
        },
    )
    .await;
    provisioner.stop().await;
    drop(slow_link);
    assert!(
        moved_when_stopped < jobs.len(),
        "stopped mid-promotion: {moved_when_stopped} of {} moved",
        jobs.len()
    );
    // Each timer is in one place or the other, none lost.
    for id in &jobs {
        let (near, parked) = timer_of(&env, &store, id);
        assert!(
            near.is_some() != parked.is_some(),
            "{id}: {near:?} {parked:?}"
        );
    }

    let _provisioner = spawn_provisioner(&env, &app.address).await;
    assert_each_fires_once(&store, &jobs, Duration::from_secs(40)).await;
    for id in &jobs {
        let runs = app.runs(id).await;
        let scheduled: DateTime<Utc> = runs[0]["scheduled_at"].as_str().unwrap().parse().unwrap();
        assert_eq!(scheduled, due, "{id}");
    }
}
