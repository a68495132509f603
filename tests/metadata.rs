//! The metadata address is never asked on a deployment without EC2 (issue 26): the only test of its
//! binary, since it points the credential chain's metadata endpoint (`AWS_EC2_METADATA_SERVICE_ENDPOINT`) at a listener of its own through the
//! process environment.

use std::sync::Arc;
use std::time::Duration;

use spot_tests::*;

/// With the local provider and no `[ec2]` endpoint, nothing looks for AWS credentials, so nothing
/// asks the metadata address: the metadata endpoint is pointed at a listener here that counts
/// connections, the api, provisioner and reaper run, a sweep runs and an instance task is refused.
/// The control (an EC2 client that is configured) does reach the listener, so the count can see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_asks_the_metadata_address_without_ec2() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let asked = Arc::new(AtomicUsize::new(0));
    let counted = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = socket
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
        }
    });
    // The only test of this binary: nothing else runs while the environment changes.
    std::env::set_var("AWS_EC2_METADATA_SERVICE_ENDPOINT", &endpoint);
    for key in [
        "AWS_EC2_METADATA_DISABLED",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_PROFILE",
    ] {
        std::env::remove_var(key);
    }
    std::env::set_var("AWS_CONFIG_FILE", "/nonexistent/aws-config");
    std::env::set_var(
        "AWS_SHARED_CREDENTIALS_FILE",
        "/nonexistent/aws-credentials",
    );

    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let _provisioner = spawn_provisioner(&env, &app.address).await;
    let reaper = spot_reaper::Reaper::build(env.settings.clone())
        .await
        .unwrap();
    reaper.sweep_once().await.unwrap();
    let ec2 = spot_shared::instance_power::Ec2::for_deployment(&env.settings).await;
    assert!(!ec2.is_configured());
    let refused = ec2.describe("i-0123456789abcdef0").await.unwrap_err();
    assert_eq!(refused.code, spot_shared::ErrorCode::InvalidInput);
    let form = "action_url=http%3A%2F%2F127.0.0.1%3A9%2Fx&instance_id=i-0123456789abcdef0\
        &access_key_id=AKIA&access_key_secret=s";
    let response = app.post_form("/tasks", ACCOUNT_KEY, form).await;
    assert_eq!(response.status(), 400);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        asked.load(Ordering::SeqCst),
        0,
        "the metadata address was asked"
    );

    // The control: a configured client goes looking for credentials, and asks the listener.
    let configured = spot_shared::instance_power::Ec2::from_settings(&env.settings.ec2).await;
    let _ = configured.describe("i-0123456789abcdef0").await;
    assert!(
        asked.load(Ordering::SeqCst) > 0,
        "the control reached the listener"
    );
}
