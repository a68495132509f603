//! An armed timer survives a restart of RabbitMQ. In a test binary of its own: restarting the broker
//! would disturb other tests, and cargo runs test binaries one after another.

use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use lapin::options::BasicAckOptions;
use spot_shared::broker::Broker;
use spot_shared::messages::FireMessage;
use spot_tests::*;

fn rabbitmqctl(args: &[&str]) {
    let status = std::process::Command::new("rabbitmqctl")
        .args(args)
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {args:?}");
}

#[tokio::test]
async fn an_armed_timer_survives_a_broker_restart() {
    let env = TestEnv::new();
    let broker = env.broker().await;
    let due = Utc::now() + chrono::Duration::seconds(12);
    let fire = FireMessage::scheduled("survivor", 1, due);
    broker.arm_timer(&fire, due).await.unwrap();
    broker.close().await;

    rabbitmqctl(&["stop_app"]);
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);

    let broker = eventually(
        Duration::from_secs(60),
        "RabbitMQ to accept connections",
        || async { Broker::connect(&env.settings.rabbitmq).await.ok() },
    )
    .await;
    let queue = broker.topology().fires_queue();
    let mut consumer = broker.consume(&queue, 10, "test").await.unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(60), consumer.next())
        .await
        .expect("the timer still fires after the restart")
        .unwrap()
        .unwrap();
    let message: FireMessage = serde_json::from_slice(&delivery.data).unwrap();
    assert_eq!(message, fire);
    assert!(
        Utc::now() >= due - chrono::Duration::milliseconds(1100),
        "it did not fire early"
    );
    delivery.ack(BasicAckOptions::default()).await.unwrap();
}
