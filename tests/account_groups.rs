//! An account that uses one group keeps no index of that group (its jobs are all in the account's
//! index); its first job of a second group splits it, a few thousand entries a step for a large
//! account, and every listing stays whole and exact through the split, a crash in it included.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use spot_shared::model::Job;
use spot_shared::store::Store;
use spot_tests::*;

/// Ids of `account`'s jobs as the store lists them (of one group, if given), newest first.
async fn listed(store: &Store, account: &str, group: Option<&str>) -> Vec<String> {
    store.list_job_ids(account, group, 0).await.unwrap()
}

/// What the account's `one_group` key holds, and whether the group's own index exists.
fn group_keys(env: &TestEnv, account: &str, group: &str) -> (Option<String>, bool) {
    let one = env
        .raw_query(redis::cmd("GET").arg(env.plain_key(&format!("account:{account}:one_group"))));
    let index: bool = env.raw_query(
        redis::cmd("EXISTS").arg(env.plain_key(&format!("account:{account}:group:{group}:jobs"))),
    );
    (one, index)
}

/// `count` copies of `template` in `group`, created a millisecond apart (so listings have one order).
fn copies(template: &Job, group: &str, count: usize, tag: &str) -> Vec<Job> {
    (0..count)
        .map(|i| {
            let mut job = template.clone();
            job.id = format!("{}{tag}{i:05}", template.id);
            job.group = group.to_string();
            job.created_at = template.created_at + chrono::Duration::milliseconds(i as i64 + 1);
            job.updated_at = job.created_at;
            job
        })
        .collect()
}

async fn create_all(store: &Store, jobs: &[Job]) {
    let refs: Vec<_> = jobs.iter().map(|job| (job, u64::MAX)).collect();
    let created = store.create_jobs(&refs).await.unwrap();
    assert!(created
        .iter()
        .all(|c| *c == spot_shared::store::Created::Saved));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_of_one_group_lists_it_from_the_accounts_index_until_a_second_group_comes() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let ids_of = |page: Value| -> Vec<String> {
        page["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|job| job["id"].as_str().unwrap().to_string())
            .collect()
    };
    let mut made = Vec::new();
    for _ in 0..3 {
        made.push(
            app.create_job(
                ACCOUNT_KEY,
                json!({"schedule": "@hourly", "runner": {"type": "dummy", "template": "x"}}),
            )
            .await,
        );
    }
    assert_eq!(
        group_keys(&env, "acme", "default"),
        (Some("S:default".to_string()), false)
    );
    let page = |query: &'static str| {
        let app = &app;
        async move {
            app.get(query, ACCOUNT_KEY)
                .await
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let sorted = |mut ids: Vec<String>| {
        ids.sort();
        ids
    };
    made.sort();
    let default = ids_of(page("/v1/jobs?group=default").await);
    assert_eq!(sorted(default.clone()), made);
    assert_eq!(ids_of(page("/v1/jobs").await), default);
    assert_eq!(
        ids_of(page("/v1/jobs?group=default&offset=1&limit=1").await),
        [default[1].clone()]
    );
    assert!(ids_of(page("/v1/jobs?group=nightly").await).is_empty());

    let nightly = app
        .create_job(
            ACCOUNT_KEY,
            json!({"group": "nightly", "schedule": "@hourly",
                   "runner": {"type": "dummy", "template": "x"}}),
        )
        .await;
    assert_eq!(
        group_keys(&env, "acme", "default"),
        (Some("M:".to_string()), true)
    );
    assert_eq!(ids_of(page("/v1/jobs?group=default").await), default);
    assert_eq!(
        ids_of(page("/v1/jobs?group=nightly").await),
        std::slice::from_ref(&nightly)
    );
    assert_eq!(ids_of(page("/v1/jobs").await).len(), 4);

    // A batch's jobs of two groups for a new account: split as it is made.
    let store = env.store().await;
    let first = store.get_job(&nightly).await.unwrap().unwrap();
    let mut fresh = copies(&first, "a", 2, "a");
    fresh.extend(copies(&first, "b", 2, "b"));
    for job in &mut fresh {
        job.account = "fresh".into();
    }
    store.save_new_jobs(&fresh).await.unwrap();
    assert_eq!(group_keys(&env, "fresh", "a"), (Some("M:".into()), true));
    let ids = |jobs: &[Job]| -> Vec<String> { jobs.iter().rev().map(|j| j.id.clone()).collect() };
    assert_eq!(listed(&store, "fresh", Some("a")).await, ids(&fresh[..2]));
    assert_eq!(listed(&store, "fresh", Some("b")).await, ids(&fresh[2..]));
    assert_eq!(store.count_jobs("fresh").await.unwrap(), 4);
    app.service.stop().await;
}

/// Past the size split in one script, the second group's first create waits for a split made in
/// steps, while jobs of the first group are created and deleted beside it; then each group lists
/// exactly its own jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_account_is_split_in_steps_while_its_jobs_come_and_go() {
    let env = TestEnv::new();
    let (store, template) = stored_template(&env).await;
    let account = template.account.clone();
    let jobs = copies(&template, "default", 12_000, "x");
    create_all(&store, &jobs).await;
    assert_eq!(
        group_keys(&env, &account, "default"),
        (Some("S:default".into()), false)
    );

    let churn = {
        let store = store.clone();
        let doomed: Vec<Job> = jobs.iter().step_by(40).cloned().collect();
        let more = copies(&template, "default", 300, "y");
        tokio::spawn(async move {
            for (job, new) in doomed.iter().zip(more.chunks(1)) {
                store.delete_job(job).await.unwrap();
                create_all(&store, new).await;
            }
        })
    };
    let nightly = copies(&template, "nightly", 1, "n");
    create_all(&store, &nightly).await;
    churn.await.unwrap();

    assert_eq!(
        group_keys(&env, &account, "default"),
        (Some("M:".into()), true)
    );
    let every: BTreeSet<String> = listed(&store, &account, None).await.into_iter().collect();
    let default: BTreeSet<String> = listed(&store, &account, Some("default"))
        .await
        .into_iter()
        .collect();
    assert_eq!(every.len(), 12_000 + 1 - 300 + 300 + 1);
    let mut expected = every.clone();
    expected.remove(&nightly[0].id);
    assert_eq!(default, expected);
    assert_eq!(
        listed(&store, &account, Some("nightly")).await,
        [nightly[0].id.clone()]
    );
}

/// A split a crash left half done (`B`, its cursor midway, the group's index short) lists the
/// group whole meanwhile, and the next second-group create finishes it with another pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_left_half_done_lists_whole_and_is_finished_by_the_next_create() {
    let env = TestEnv::new();
    let (store, template) = stored_template(&env).await;
    let account = template.account.clone();
    create_all(&store, &copies(&template, "default", 11_000, "x")).await;
    let one = env.plain_key(&format!("account:{account}:one_group"));
    let _: () = env.raw_query(redis::cmd("SET").arg(&one).arg("B:default"));
    let _: () = env.raw_query(
        redis::cmd("HSET")
            .arg(format!("{one}:cursor"))
            .arg("at")
            .arg(6_000),
    );
    let every = listed(&store, &account, None).await;
    assert_eq!(every.len(), 11_001);
    assert_eq!(listed(&store, &account, Some("default")).await, every);

    let nightly = copies(&template, "nightly", 1, "n");
    create_all(&store, &nightly).await;
    assert_eq!(
        group_keys(&env, &account, "default"),
        (Some("M:".into()), true)
    );
    assert_eq!(listed(&store, &account, Some("default")).await, every);
    assert_eq!(store.count_jobs(&account).await.unwrap(), 11_002);
}
