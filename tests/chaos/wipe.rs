//! The `--wipe JOBS` scenario: a burst lost with the queues after its handover, healed by the
//! reconciler.

use std::time::{Duration, Instant};

use anyhow::bail;
use chrono::Utc;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use spot_shared::store::Store;
use spot_tests::TestEnv;

use crate::supervisor::Supervisor;
use crate::Client;

/// The `--wipe` scenario (see the module doc).
pub async fn wipe_scenario(
    jobs: usize,
    env: &TestEnv,
    supervisor: &Supervisor,
    client: &Client,
) -> anyhow::Result<Value> {
    use futures::StreamExt;
    let store = Store::connect(&env.settings.redis).await?;
    let created = Instant::now();
    // Time to create them all (about 10,000 a second in release), then a margin.
    let due = Utc::now() + chrono::Duration::seconds(20 + (jobs / 4000) as i64);
    let body = json!({"schedule": due.to_rfc3339(), "runner": {"type": "dummy", "template": "x"}});
    let ids: Vec<String> = futures::stream::iter(0..jobs)
        .map(|_| client.create(body.clone()))
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    eprintln!(
        "[chaos] {jobs} jobs created in {:?}, due {due}",
        created.elapsed()
    );
    if Utc::now() > due - chrono::Duration::seconds(2) {
        bail!("creating the jobs took too long for their instant");
    }
    // The pump hands timers over in their last second: just before the instant all are in RabbitMQ.
    tokio::time::sleep((due - chrono::Duration::milliseconds(300) - Utc::now()).to_std()?).await;
    for label in ["provisioner-1", "provisioner-2"] {
        supervisor.hold_down(label);
    }
    let redis = redis::Client::open(env.settings.redis.url.expose_secret())?;
    let mut conn = redis.get_multiplexed_async_connection().await?;
    let unarmed: usize = redis::cmd("ZCARD")
        .arg(format!("{}:timers:unarmed", env.name))
        .query_async(&mut conn)
        .await?;
    let deleted = env.wipe_queues();
    eprintln!("[chaos] provisioners killed, {deleted} queues deleted; {unarmed} timers were still in Redis");
    let returned = Instant::now();
    for label in ["provisioner-1", "provisioner-2"] {
        supervisor.resume(label);
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last_count = 0;
    while last_count < jobs as u64 && Instant::now() < deadline {
        last_count = store
            .fire_lateness()
            .await
            .map(|h| h.count)
            .unwrap_or(last_count);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let healed = returned.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Exactly once: every job's run count.
    let (mut lost, mut duplicated) = (0, 0);
    for chunk in ids.chunks(1000) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.zcard(format!("{}:job:{id}:runs", env.name));
        }
        let counts: Vec<usize> = pipe.query_async(&mut conn).await?;
        lost += counts.iter().filter(|&&n| n == 0).count();
        duplicated += counts.iter().map(|&n| n.saturating_sub(1)).sum::<usize>();
    }
    Ok(json!({
        "scenario": "wipe",
        "jobs": jobs,
        "queues_deleted": deleted,
        "timers_in_redis_at_the_wipe": unarmed,
        "seconds_to_fire_all_after_return": healed.as_secs_f64(),
        "lost": lost,
        "duplicated": duplicated,
    }))
}
