//! An edit never re-fires the past: replacing a one-shot job whose instant has fired leaves it done;
//! only a new instant in the future arms it again.

use std::time::Duration;

use chrono::Utc;
use reqwest::Method;
use serde_json::{json, Value};
use spot_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_fired_one_shot_does_not_fire_it_again() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let _provisioner = spawn_provisioner(&env, &app.address).await;
    let due = (Utc::now() + chrono::Duration::milliseconds(300)).to_rfc3339();
    let body = json!({"schedule": due, "runner": {"type": "dummy", "template": "once"}});
    let id = app.create_job(ACCOUNT_KEY, body.clone()).await;
    eventually(Duration::from_secs(10), "the fire", || async {
        (app.runs(&id).await.len() == 1).then_some(())
    })
    .await;

    // The same job, replaced as it is (and once more with another name): still one run.
    for name in ["", "renamed"] {
        let mut edited = body.clone();
        edited["name"] = json!(name);
        let response = app
            .send(
                Method::PUT,
                &format!("/v1/jobs/{id}"),
                ACCOUNT_KEY,
                Some(edited),
            )
            .await;
        assert_eq!(response.status(), 200);
        let job: Value = response.json().await.unwrap();
        assert!(job["next_fire_at"].is_null(), "{job}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        app.runs(&id).await.len(),
        1,
        "an edit did not re-fire the past"
    );

    // A new instant in the future arms it again.
    let mut later = body.clone();
    later["schedule"] = json!((Utc::now() + chrono::Duration::milliseconds(500)).to_rfc3339());
    let response = app
        .send(
            Method::PUT,
            &format!("/v1/jobs/{id}"),
            ACCOUNT_KEY,
            Some(later),
        )
        .await;
    assert_eq!(response.status(), 200);
    eventually(
        Duration::from_secs(10),
        "the new instant's fire",
        || async { (app.runs(&id).await.len() == 2).then_some(()) },
    )
    .await;
}

/// An edit that lands between a fire's record and the move of its job's timer, and arms the very
/// instant that fired for its new generation: the old fire's move must not carry the new timer off
/// (it would delay the job's next fire to the old schedule's, or lose it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_move_compares_the_generation_as_well_as_the_time() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let store = env.store().await;
    let body = json!({"schedule": "0 * * * *", "runner": {"type": "dummy", "template": "once"}});
    let id = app.create_job(ACCOUNT_KEY, body.clone()).await;
    let first = store.get_job(&id).await.unwrap().unwrap();
    let fired = first.next_fire_at.expect("a timer");

    // The edit: the same schedule (so the same next instant), a new generation.
    let mut edited = body.clone();
    edited["name"] = json!("edited");
    let response = app
        .send(
            Method::PUT,
            &format!("/v1/jobs/{id}"),
            ACCOUNT_KEY,
            Some(edited),
        )
        .await;
    assert_eq!(response.status(), 200);
    let second = store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(second.generation, first.generation + 1);
    assert_eq!(second.next_fire_at, Some(fired));

    // The first generation's fire now moves the timer on from the instant it fired.
    let moved = store
        .advance_timer(
            &id,
            first.generation,
            fired,
            Some(fired + chrono::Duration::hours(1)),
        )
        .await
        .unwrap();
    assert!(!moved, "a stale generation moved the timer");
    let far = fired + chrono::Duration::days(1);
    assert_eq!(
        store.due_timers(far, 10).await.unwrap(),
        vec![(id.clone(), fired)]
    );
    let unarmed = store.claim_unarmed(far, 10).await.unwrap();
    assert_eq!(unarmed.len(), 1, "{unarmed:?}");
    assert_eq!(unarmed[0].fire.generation, second.generation);
    assert_eq!(unarmed[0].due, fired);

    // The current generation's fire moves it.
    store.unclaim(&unarmed).await.unwrap();
    let next = fired + chrono::Duration::hours(1);
    assert!(store
        .advance_timer(&id, second.generation, fired, Some(next))
        .await
        .unwrap());
    assert_eq!(
        store.due_timers(far, 10).await.unwrap(),
        vec![(id.clone(), next)]
    );
}

/// Minion's PUT edits through the same path: a fired one-shot replaced as it is stays done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minions_put_of_a_fired_one_shot_does_not_fire_it_again() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let _provisioner = spawn_provisioner(&env, &app.address).await;
    let due = (Utc::now() + chrono::Duration::milliseconds(300)).to_rfc3339();
    let body = json!({"job": {
        "details": {"runner": "dummyRunner"},
        "group": "edits",
        "name": "once",
        "schedule_expression": due,
        "enabled": true
    }});
    let response = app
        .send(
            Method::POST,
            "/v1/minion/acme/jobs/edits",
            ACCOUNT_KEY,
            Some(body.clone()),
        )
        .await;
    assert_eq!(response.status(), 200);
    let created: Value = response.json().await.unwrap();
    let id = created["job"]["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(10), "the fire", || async {
        (app.runs(&id).await.len() == 1).then_some(())
    })
    .await;

    let response = app
        .send(
            Method::PUT,
            &format!("/v1/minion/acme/jobs/edits/{id}"),
            ACCOUNT_KEY,
            Some(body),
        )
        .await;
    assert_eq!(response.status(), 202);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        app.runs(&id).await.len(),
        1,
        "minion's PUT re-fired the past"
    );
}

/// A job edited into another group leaves the old group's listing and joins the new one's, in one
/// step with its save (no crash between the two leaves it in neither).
#[tokio::test]
async fn an_edit_moves_a_job_from_one_groups_listing_to_the_others() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let mut body = json!({
        "group": "nightly",
        "schedule": "0 3 * * *",
        "runner": {"type": "dummy", "template": "hi"},
    });
    let id = app.create_job(ACCOUNT_KEY, body.clone()).await;
    let listed = |group: &'static str| {
        let app = &app;
        async move {
            let page: Value = app
                .get(&format!("/v1/jobs?group={group}"), ACCOUNT_KEY)
                .await
                .json()
                .await
                .unwrap();
            let ids: Vec<String> = page["jobs"]
                .as_array()
                .map(|jobs| {
                    jobs.iter()
                        .filter_map(|j| j["id"].as_str())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            ids
        }
    };
    assert_eq!(listed("nightly").await, [id.as_str()]);

    body["group"] = json!("weekly");
    let response = app
        .send(
            Method::PUT,
            &format!("/v1/jobs/{id}"),
            ACCOUNT_KEY,
            Some(body),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert!(listed("nightly").await.is_empty(), "still in the old group");
    assert_eq!(listed("weekly").await, [id.as_str()]);
    let all: Value = app.get("/v1/jobs", ACCOUNT_KEY).await.json().await.unwrap();
    assert_eq!(all["jobs"].as_array().map(Vec::len), Some(1), "{all}");
}
