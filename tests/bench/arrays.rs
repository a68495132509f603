//! `array-10k`: what an array fire (`runner.array_size`) costs Redis. One fire of a job of 10,000
//! copies is recorded and expanded (every copy recorded `queued`, 500 a script): the expansion's
//! time, the longest script it ran (Redis runs nothing else meanwhile: read from `SLOWLOG`, every
//! command over 1 ms logged while it runs) and the bytes each copy holds. Then every copy is moved through its life at the store (running,
//! succeeded, and the array's step its end takes, which starts the next) with no containers, at a
//! parallelism of 100 and of 10,000: copies a second, which must not fall with the parallelism (a
//! copy's end settles its own index, whatever the number under way).

use std::time::Instant;

use anyhow::{bail, Context};
use chrono::Utc;
use serde_json::{json, Value};
use spot_shared::model::RunState;
use spot_shared::store::{ArrayStep, FireRecord, Store};

async fn connect(store_url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(store_url)?;
    Ok(client.get_multiplexed_async_connection().await?)
}

async fn set_slowlog_threshold(
    conn: &mut redis::aio::MultiplexedConnection,
    micros: &str,
) -> anyhow::Result<()> {
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(micros)
        .query_async(conn)
        .await?;
    Ok(())
}

async fn used_memory(store_url: &str) -> anyhow::Result<f64> {
    let mut conn = connect(store_url).await?;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO memory has no used_memory")
}

pub async fn run(copies: usize) -> anyhow::Result<Value> {
    let env = spot_tests::TestEnv::new();
    let app = spot_tests::spawn_app(&env).await;
    let store = env.store().await;
    let url = {
        use secrecy::ExposeSecret;
        env.settings.redis.url.expose_secret().to_string()
    };
    let mut figures = json!({"scenario": "array-10k", "copies": copies});
    for parallelism in [100, copies] {
        let job_id = app
            .create_job(
                spot_tests::ACCOUNT_KEY,
                json!({"schedule": "@yearly", "policies": {"history_limit": 10},
                    "runner": {"type": "container",
                    "image": "busybox:local", "cmd": "true",
                    "array_size": copies, "array_parallelism": parallelism}}),
            )
            .await;
        let job = store.get_job(&job_id).await?.context("the job")?;
        let FireRecord::New(parent_id) = store
            .record_fire(&job, job.generation, Utc::now(), 1)
            .await?
        else {
            bail!("the fire was not recorded");
        };
        let parent = store.get_run(&parent_id).await?.context("the parent")?;
        let before = used_memory(&url).await?;
        let mut conn = connect(&url).await?;
        let threshold: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("slowlog-log-slower-than")
            .query_async(&mut conn)
            .await?;
        set_slowlog_threshold(&mut conn, "1000").await?;
        let () = redis::cmd("SLOWLOG")
            .arg("RESET")
            .query_async(&mut conn)
            .await?;
        let began = Instant::now();
        let expanded = store.expand_array(&job, &parent).await;
        let expand_ms = began.elapsed().as_secs_f64() * 1000.0;
        // Each entry is [id, time, microseconds, command, ...].
        let slow_micros: Vec<i64> = redis::cmd("SLOWLOG")
            .arg("GET")
            .arg(1000)
            .query_async::<Vec<redis::Value>>(&mut conn)
            .await?
            .into_iter()
            .filter_map(|entry| match entry {
                redis::Value::Array(fields) => redis::from_redis_value(fields.get(2)?.clone()).ok(),
                _ => None,
            })
            .collect();
        let was = threshold.get(1).map_or("10000", String::as_str);
        set_slowlog_threshold(&mut conn, was).await?;
        if !expanded? {
            bail!("not expanded");
        }
        let longest_script_ms = slow_micros.iter().max().copied().unwrap_or(0) as f64 / 1000.0;
        let per_copy = ((used_memory(&url).await? - before) / copies as f64).round();

        let began = Instant::now();
        let mut under_way = std::collections::VecDeque::new();
        if let ArrayStep::Started(started) =
            spot_shared::arrays::advance(&store, Some(&job), &parent_id, None).await?
        {
            under_way.extend(started);
        }
        let mut ended = 0;
        while let Some(copy_id) = under_way.pop_front() {
            if let ArrayStep::Started(started) = end_copy(&store, &job, &copy_id).await? {
                under_way.extend(started);
            }
            ended += 1;
        }
        let copies_per_s = ended as f64 / began.elapsed().as_secs_f64();
        let parent = store.get_run(&parent_id).await?.context("the parent")?;
        if ended != copies || parent.state != RunState::Succeeded {
            bail!("{ended} copies ended, the parent is {}", parent.state);
        }
        let at = format!("parallelism_{parallelism}");
        figures[at] = json!({
            "expand_ms": expand_ms.round(),
            "longest_script_ms": longest_script_ms,
            "redis_bytes_per_copy": per_copy,
            "copies_per_s": copies_per_s.round(),
        });
    }
    app.service.stop().await;
    Ok(figures)
}

/// A copy's life at the store: running, then succeeded, and the array's step its end takes (what
/// `policy::end_run` does for a copy, taken apart to see the copies the step starts).
async fn end_copy(
    store: &Store,
    job: &spot_shared::model::Job,
    copy_id: &str,
) -> anyhow::Result<ArrayStep> {
    store.advance_run(copy_id, RunState::Running, &[]).await?;
    let copy = store.get_run(copy_id).await?.context("the copy")?;
    let fields = [("exit_code", "0".to_string())];
    store
        .end_run(copy_id, RunState::Succeeded, &fields, None, None)
        .await?;
    let parent = copy.array_parent().context("a copy")?;
    Ok(spot_shared::arrays::advance(store, Some(job), parent, copy.array_index()).await?)
}
