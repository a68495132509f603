//! Timers on a stock RabbitMQ: binary TTL levels chained by dead-letter exchanges.

use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use lapin::options::BasicAckOptions;
use spot_shared::messages::FireMessage;
use spot_tests::*;

fn fire(job: &str, due: chrono::DateTime<Utc>) -> FireMessage {
    FireMessage::scheduled(job, 1, due)
}

#[tokio::test]
async fn a_short_timer_armed_after_a_long_one_is_not_blocked_by_it() {
    let env = TestEnv::new();
    let broker = env.broker().await;
    let now = Utc::now();
    let hour = now + chrono::Duration::hours(1);
    let soon = now + chrono::Duration::seconds(2);
    broker
        .arm_timer(&fire("in-an-hour", hour), hour)
        .await
        .unwrap();
    broker
        .arm_timer(&fire("in-two-seconds", soon), soon)
        .await
        .unwrap();

    let queue = broker.topology().fires_queue();
    let mut consumer = broker.consume(&queue, 10, "test").await.unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("the 2 s timer arrives well before 10 s")
        .unwrap()
        .unwrap();
    let arrived = Utc::now();
    let message: FireMessage = serde_json::from_slice(&delivery.data).unwrap();
    assert_eq!(message.job_id, "in-two-seconds");
    delivery.ack(BasicAckOptions::default()).await.unwrap();
    // It waited in the levels (1 s of its 2 s; the consumer holds the rest), so it is not early by
    // more than one unit plus the lead.
    let early = (message.scheduled_at - arrived).num_milliseconds();
    assert!(early <= 1050, "arrived {early} ms early");
    // The hour-long one is still waiting.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), consumer.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn past_timers_fire_at_once_and_delays_sort_by_due_time() {
    let env = TestEnv::new();
    let broker = env.broker().await;
    let now = Utc::now();
    // Armed in reverse order of due time, each at least a unit apart (below one unit, ordering is the
    // consumer's job: it holds each message until its instant).
    for (job, secs) in [("c", 5), ("b", 3), ("a", -5)] {
        let due = now + chrono::Duration::seconds(secs);
        broker.arm_timer(&fire(job, due), due).await.unwrap();
    }
    let queue = broker.topology().fires_queue();
    let mut consumer = broker.consume(&queue, 10, "test").await.unwrap();
    let mut order = Vec::new();
    while order.len() < 3 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("every timer arrives")
            .unwrap()
            .unwrap();
        let message: FireMessage = serde_json::from_slice(&delivery.data).unwrap();
        order.push(message.job_id);
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert_eq!(order, ["a", "b", "c"]);
}
