//! Secrets (`runner.secrets`): an SSM parameter and a Secrets Manager secret on moto, read at launch
//! and given to the container as environment; the values found nowhere else: not in Redis, not in
//! any answer of the api, not in the agent's log. A secret that cannot be read fails the run naming
//! it; bad ARNs and a deployment without AWS are refused at save.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use spot_shared::aws::json::JsonClient;
use spot_shared::aws::CredentialChain;
use spot_tests::image::busybox_image;
use spot_tests::*;

fn client(moto: &Moto, service: (&'static str, &'static str)) -> JsonClient {
    let chain = Arc::new(CredentialChain::standard("us-east-1"));
    JsonClient::new(&moto.endpoint, "us-east-1", service, chain, 1)
}

/// Every value this test's Redis keys hold, as text.
async fn everything_in_redis(env: &TestEnv) -> String {
    let (mut conn, keys) = env.raw_keys("*").await;
    let mut all = String::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let command = match kind.as_str() {
            "string" => redis::cmd("GET").arg(&key).clone(),
            "hash" => redis::cmd("HGETALL").arg(&key).clone(),
            "zset" => redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).clone(),
            "list" => redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).clone(),
            "set" => redis::cmd("SMEMBERS").arg(&key).clone(),
            _ => continue,
        };
        let value: redis::Value = command.query_async(&mut conn).await.unwrap();
        all.push_str(&format!("{key} {value:?}\n"));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_reach_the_container_and_nowhere_else() {
    let moto = Moto::start().await;
    let mut env = TestEnv::new();
    env.settings.ec2.endpoint_url = moto.endpoint.clone();
    let password = format!("pw-{}", spot_shared::ids::new_id());
    let token = format!("tok-{}", spot_shared::ids::new_id());
    client(&moto, ("ssm", "AmazonSSM"))
        .call(
            "PutParameter",
            &json!({"Name": "/prod/db/password", "Value": password, "Type": "SecureString"}),
        )
        .await
        .expect("moto keeps the parameter");
    let created = client(&moto, ("secretsmanager", "secretsmanager"))
        .call(
            "CreateSecret",
            &json!({"Name": "api-token", "SecretString": token}),
        )
        .await
        .expect("moto keeps the secret");
    let secret_arn = created["ARN"].as_str().unwrap().to_string();
    let parameter_arn = "arn:aws:ssm:us-east-1:123456789012:parameter/prod/db/password";

    let app = spawn_app(&env).await;
    let _provisioner = spawn_provisioner(&env, &app.address).await;
    let _reaper = spawn_reaper(&env).await;
    let image = busybox_image().await;
    let job_id = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "@yearly",
                "runner": {"type": "container", "image": image,
                    "cmd": "sh -c 'echo -n \"$DB_PASSWORD\" | sha256sum; echo -n \"$API_TOKEN\" | sha256sum'",
                    "secrets": {"DB_PASSWORD": parameter_arn, "API_TOKEN": secret_arn}}}),
        )
        .await;
    app.run_now(&job_id).await;
    let run = eventually(Duration::from_secs(90), "the run to end", || async {
        app.runs(&job_id)
            .await
            .into_iter()
            .find(|run| ended(run).is_some())
    })
    .await;
    assert_eq!(run["state"], "succeeded", "{run}");
    let log = app.run_log(&run).await;
    for value in [&password, &token] {
        let digest = hex::encode(Sha256::digest(value.as_bytes()));
        assert!(
            log.contains(&digest),
            "the container saw {value:?}'s digest: {log}"
        );
    }

    // Nowhere else: Redis, every answer about the job and run, the agent's own log.
    let run_id = run["id"].as_str().unwrap();
    let mut seen = everything_in_redis(&env).await;
    for path in [
        format!("/v1/jobs/{job_id}"),
        format!("/v1/jobs/{job_id}/runs"),
        format!("/v1/runs/{run_id}"),
        format!("/v1/runs/{run_id}/logs"),
        "/v1/jobs".to_string(),
        "/v1/audit".to_string(),
        format!("/status/{job_id}"),
    ] {
        seen.push_str(&app.get(&path, ACCOUNT_KEY).await.text().await.unwrap());
    }
    for entry in std::fs::read_dir(env.settings.cloud.local.log_dir.clone()).unwrap() {
        seen.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default());
    }
    assert!(seen.contains("DB_PASSWORD"), "the names are shown");
    for value in [&password, &token] {
        assert!(!seen.contains(value.as_str()), "{value} leaked");
    }

    // A secret that cannot be read fails its run, naming it.
    let missing = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "@yearly",
                "runner": {"type": "container", "image": image, "cmd": "true",
                    "secrets": {"GONE": "arn:aws:ssm:us-east-1:123456789012:parameter/not/there"}}}),
        )
        .await;
    app.run_now(&missing).await;
    let failed = eventually(Duration::from_secs(60), "the run to fail", || async {
        app.runs(&missing)
            .await
            .into_iter()
            .find(|run| run["state"] == "failed")
    })
    .await;
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("secret GONE") && error.contains("ParameterNotFound"),
        "{error}"
    );
    assert!(
        failed["instance_id"].is_null(),
        "nothing launched: {failed}"
    );
}

#[tokio::test]
async fn bad_secrets_and_a_deployment_without_aws_are_refused() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let job = |secrets: Value| {
        json!({"schedule": "@yearly",
            "runner": {"type": "container", "image": "busybox:local", "secrets": secrets}})
    };
    let arn = "arn:aws:ssm:us-east-1:123456789012:parameter/x";
    for (secrets, field) in [
        (json!({"SPOT_RUN_ID": arn}), "secrets.SPOT_RUN_ID"),
        (json!({"A-B": arn}), "secrets.A-B"),
        (json!({"X": "arn:aws:s3:::bucket/key"}), "secrets.X"),
        (json!({"X": "hunter2"}), "secrets.X"),
        // Well formed, but nothing here can read it: no AWS configured.
        (json!({"X": arn}), "runner.secrets"),
    ] {
        let response = app
            .send(
                reqwest::Method::POST,
                "/v1/jobs",
                ACCOUNT_KEY,
                Some(job(secrets.clone())),
            )
            .await;
        assert_eq!(response.status(), 400, "{secrets}");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["field"].as_str().unwrap_or_default().ends_with(field),
            "{secrets}: {body}"
        );
    }
}
