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
