//! Timer shards: provisioners share them out fairly by lease, take over the shards of one that
//! stopped or crashed, refuse a store laid out for another count, and jobs spread over the shards
//! fire once each however many provisioners pump.

use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use secrecy::ExposeSecret;
use serde_json::json;
use spot_provisioner::Provisioner;
use spot_tests::*;

const SHARDS: u16 = 8;

fn sharded(env: &mut TestEnv) {
    env.settings.redis.timer_shards = SHARDS;
}

async fn provisioner(env: &TestEnv) -> Provisioner {
    Provisioner::build(env.settings.clone())
        .await
        .expect("provisioner builds")
}

/// The shards each holds, after each has had a round in turn (as their tickers would).
async fn rounds(provisioners: &[&Provisioner]) -> Vec<Vec<u16>> {
    for provisioner in provisioners {
        provisioner.hold_shards_once().await.unwrap();
    }
    let mut held = Vec::new();
    for provisioner in provisioners {
        held.push(provisioner.held_shards().await);
    }
    held
}

/// Every shard held by exactly one of them.
fn assert_partition(held: &[Vec<u16>]) {
    let mut all: Vec<u16> = held.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..SHARDS).collect::<Vec<_>>(), "{held:?}");
}

#[tokio::test]
async fn provisioners_share_the_shards_fairly_and_take_over_those_let_go() {
    let mut env = TestEnv::new();
    sharded(&mut env);
    let a = provisioner(&env).await;
    assert_eq!(rounds(&[&a]).await, vec![(0..SHARDS).collect::<Vec<_>>()]);

    // A second joins: the first gives up half on its next round, the second takes them.
    let b = provisioner(&env).await;
    rounds(&[&b, &a]).await;
    let held = rounds(&[&b, &a]).await;
    assert_partition(&held);
    assert_eq!((held[0].len(), held[1].len()), (4, 4), "{held:?}");

    // A third: nobody holds more than ⌈8 / 3⌉ = 3 once all have had two rounds.
    let c = provisioner(&env).await;
    rounds(&[&c, &a, &b]).await;
    let held = rounds(&[&c, &a, &b]).await;
    assert_partition(&held);
    assert!(held.iter().all(|h| (2..=3).contains(&h.len())), "{held:?}");

    // One stops cleanly: its shards are free at once, and the two left take them.
    c.release_shards().await;
    let held = rounds(&[&a, &b]).await;
    assert_partition(&held);
    assert_eq!((held[0].len(), held[1].len()), (4, 4), "{held:?}");

    // One crashes (no more rounds, nothing given back): its leases and its place on the roll
    // expire, and the one left takes every shard.
    tokio::time::sleep(spot_provisioner::LEASE_TTL + Duration::from_millis(500)).await;
    let held = rounds(&[&a]).await;
    assert_eq!(held, vec![(0..SHARDS).collect::<Vec<_>>()]);
}

#[tokio::test]
async fn services_refuse_a_store_laid_out_for_other_shards() {
    let mut env = TestEnv::new();
    sharded(&mut env);
    let laid_out = provisioner(&env).await;
    laid_out.hold_shards_once().await.unwrap();
    laid_out.release_shards().await;

    env.settings.redis.timer_shards = 4;
    let refusals = [
        Provisioner::build(env.settings.clone()).await.err(),
        spot_api::Application::build(env.settings.clone())
            .await
            .err(),
    ];
    for refused in refusals {
        let refused = refused
            .expect("a service for 4 shards is refused")
            .to_string();
        assert!(refused.contains("laid out for 8 shards"), "{refused}");
    }
}

#[tokio::test]
async fn a_deployment_older_than_shards_is_kept_on_one() {
    let env = TestEnv::new();
    if env.settings.redis.cluster {
        // On a cluster the harness starts every deployment sharded: nothing older to find.
        return;
    }
    // A deployment of one shard with a job waiting, its count not recorded (older than shards).
    let app = spawn_app(&env).await;
    let due = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    app.create_job(
        ACCOUNT_KEY,
        json!({"schedule": due, "runner": {"type": "dummy", "template": "hi"}}),
    )
    .await;
    let mut conn = redis::Client::open(env.settings.redis.url.expose_secret())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let layout = format!("{}:layout:timer_shards", env.settings.redis.key_prefix);
    let _: () = redis::cmd("DEL")
        .arg(&layout)
        .query_async(&mut conn)
        .await
        .unwrap();

    let mut sharded = env.settings.clone();
    sharded.redis.timer_shards = SHARDS;
    let refused = Provisioner::build(sharded)
        .await
        .err()
        .expect("8 shards refused over a one-shard deployment");
    assert!(
        refused.to_string().contains("laid out for 1 shards"),
        "{refused}"
    );
    app.service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_spread_over_the_shards_fire_once_with_three_provisioners() {
    const JOBS: usize = 240;
    let mut env = TestEnv::new();
    sharded(&mut env);
    let app = spawn_app(&env).await;
    let provisioners = [
        spawn_provisioner(&env, &app.address).await,
        spawn_provisioner(&env, &app.address).await,
        spawn_provisioner(&env, &app.address).await,
    ];
    let store = env.store().await;
    let due = Utc::now() + chrono::Duration::seconds(6);
    let jobs: Vec<String> = futures::stream::iter(0..JOBS)
        .map(|i| {
            // Half one-shot, half every second from the due time on: cron fires move timers on in
            // every shard.
            let schedule = match i % 2 {
                0 => due.to_rfc3339(),
                _ => "* * * * * *".to_string(),
            };
            app.create_job(
                ACCOUNT_KEY,
                json!({"schedule": schedule, "runner": {"type": "dummy", "template": "hi"}}),
            )
        })
        .buffered(16)
        .collect()
        .await;
    let mut per_shard = vec![0usize; usize::from(SHARDS)];
    for job in &jobs {
        per_shard[usize::from(store.shards().of(job))] += 1;
    }
    assert!(per_shard.iter().all(|&n| n >= 10), "{per_shard:?}");

    let one_shots: Vec<String> = jobs.iter().step_by(2).cloned().collect();
    assert_each_fires_once(&store, &one_shots, Duration::from_secs(30)).await;
    for job in &one_shots {
        let runs = store.job_run_ids(job, 0).await.unwrap();
        // A run is in its job's shard, and is found from its id alone.
        let run = store.get_run(&runs[0]).await.unwrap().expect("the run");
        assert_eq!(run.job_id, *job);
    }
    // Each every-second job fired about once a second, never twice for one second.
    for job in jobs.iter().skip(1).step_by(2) {
        let runs = store.job_runs(job, 0).await.unwrap();
        assert!(!runs.is_empty(), "{job} fired");
        let mut seconds: Vec<i64> = runs.iter().map(|r| r.scheduled_at.timestamp()).collect();
        seconds.sort_unstable();
        let before = seconds.len();
        seconds.dedup();
        assert_eq!(seconds.len(), before, "{job} fired twice for one second");
    }
    // Listings read jobs from every shard, with their next fire times.
    let listed = app.get("/v1/jobs?limit=1000", ACCOUNT_KEY).await;
    let listed: serde_json::Value = listed.json().await.unwrap();
    let listed = listed["jobs"].as_array().expect("jobs").clone();
    assert_eq!(listed.len(), JOBS);
    assert!(listed
        .iter()
        .filter(|job| job["schedule"] == "* * * * * *")
        .all(|job| job["next_fire_at"].is_string()));
    for provisioner in provisioners {
        assert!(provisioner.is_running());
        provisioner.stop().await;
    }
    // The lateness histogram and the fires per minute, kept per shard, add up to every run written.
    let mut runs = 0;
    for job in &jobs {
        runs += store.job_run_ids(job, 0).await.unwrap().len() as u64;
    }
    assert_eq!(store.fire_lateness().await.unwrap().count, runs);
    let per_minute = store.fires_per_minute(5).await.unwrap();
    assert_eq!(per_minute.iter().map(|(_, fires)| fires).sum::<u64>(), runs);
    app.service.stop().await;
}

/// A Redis user that may write only the plain prefix of `env`'s store, on every node of the cluster;
/// deleted when dropped.
struct PlainPrefixUser {
    name: String,
}

impl PlainPrefixUser {
    fn create(env: &TestEnv) -> PlainPrefixUser {
        let name = format!("cut-{}", env.name);
        let keys = format!("~{{{}}}:*", env.name);
        redis_cluster::on_every_node(&[
            "ACL", "SETUSER", &name, "reset", "on", ">cut", &keys, "&*", "+@all",
        ]);
        PlainPrefixUser { name }
    }

    fn url(&self) -> String {
        format!("redis://{}:cut@127.0.0.1:7101", self.name)
    }
}

impl Drop for PlainPrefixUser {
    fn drop(&mut self) {
        redis_cluster::on_every_node(&["ACL", "DELUSER", &self.name]);
    }
}

/// On a cluster a job's save is two steps (the account's indexes, then the job in its shard's slot):
/// a crash between them leaves an index entry naming no job, which counts toward the quota. The cut
/// is made real with a Redis user that may write the indexes' slot but not the shards': its save's
/// first step lands and its second is refused. The reaper's sweep leaves the entry alone while it is
/// young, then removes it; an entry whose job exists is only settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_entry_left_by_a_save_cut_in_two_is_swept_on_the_cluster() {
    let mut env = TestEnv::on_redis_cluster(&redis_cluster::SEEDS);
    sharded(&mut env);
    let app = spawn_app(&env).await;
    let store = env.store().await;
    let kept = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "0 0 1 1 *", "runner": {"type": "dummy", "template": "hi"}}),
        )
        .await;
    let mut job = store.get_job(&kept).await.unwrap().expect("the job");
    let account = job.account.clone();

    let user = PlainPrefixUser::create(&env);
    let mut cut = env.settings.redis.clone();
    cut.url = user.url().into();
    cut.other_urls = Vec::new();
    let cut = spot_shared::store::Store::connect(&cut).await.unwrap();
    job.id = spot_shared::ids::new_id();
    let refused = cut
        .save_job(&job)
        .await
        .expect_err("the job's own step is refused");
    assert!(refused.to_string().contains("NoPerm"), "{refused}");
    assert!(store.get_job(&job.id).await.unwrap().is_none());
    assert_eq!(
        store.count_jobs(&account).await.unwrap(),
        2,
        "the entry is left"
    );
    let listed: serde_json::Value = app.get("/v1/jobs", ACCOUNT_KEY).await.json().await.unwrap();
    assert_eq!(
        listed["jobs"].as_array().map(Vec::len),
        Some(1),
        "and skipped"
    );

    // Young, it may be a save still under way: left alone.
    let mut settings = env.settings.clone();
    let reaper = spot_reaper::Reaper::build(settings.clone()).await.unwrap();
    assert_eq!(reaper.sweep_once().await.unwrap().index_entries, 0);
    assert_eq!(store.unsettled_index_entries().await.unwrap(), 2);
    // Past the grace: the entry naming no job goes, the other is settled.
    settings.reaper.index_grace_secs = 0;
    let reaper = spot_reaper::Reaper::build(settings).await.unwrap();
    assert_eq!(reaper.sweep_once().await.unwrap().index_entries, 1);
    assert_eq!(store.unsettled_index_entries().await.unwrap(), 0);
    assert_eq!(store.count_jobs(&account).await.unwrap(), 1);
    assert!(store.get_job(&kept).await.unwrap().is_some());
    let listed: serde_json::Value = app.get("/v1/jobs", ACCOUNT_KEY).await.json().await.unwrap();
    assert_eq!(listed["jobs"][0]["id"], kept.as_str());
    // A delete settles its own note.
    let deleted = app
        .client
        .delete(app.url(&format!("/v1/jobs/{kept}")))
        .header("X-Auth-Token", ACCOUNT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(store.unsettled_index_entries().await.unwrap(), 0);
    assert_eq!(store.count_jobs(&account).await.unwrap(), 0);
    app.service.stop().await;
}
