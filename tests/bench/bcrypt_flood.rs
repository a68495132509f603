//! `bcrypt-flood`: what anonymous callers sending bogus bcrypt tokens do to an authenticated client.
//!
//! Method: one client sends `GET /v1/jobs` with its plain key, one request at a time, for 10 s idle
//! and for 10 s while 8 flood clients send `GET /v1/jobs` as fast as they can, each with a new token
//! that has the shape of a cost-10 bcrypt hash and matches no key (hashed at cost 4, relabelled `$10$`,
//! as an attacker would: costly to check, cheap to make). Twice: with the default per-address
//! throttle, and with it lifted (as if the flood came from many addresses), so that the bound on
//! concurrent verifications is measured alone. Prints the latencies and their ratio.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::{percentile, Options, Stack, KEY};

const FLOOD_CLIENTS: usize = 8;
/// How long each measurement lasts.
const MEASURE: Duration = Duration::from_secs(10);

pub async fn run(bin_dir: &Path, options: &Options) -> anyhow::Result<serde_json::Value> {
    let mut modes = Vec::new();
    for (mode, failures_per_minute) in [
        ("throttled per address (default)", None),
        (
            "throttle lifted: the concurrency bound alone",
            Some(100_000_000),
        ),
    ] {
        let options = Options {
            bcrypt_failures_per_minute: failures_per_minute,
            ..options.clone()
        };
        let stack = Stack::start(bin_dir, &options).await?;
        let client = reqwest::Client::new();
        let url = format!("{}/v1/jobs", stack.api);
        let idle = latencies_ms(&client, &url).await?;

        let stop = Arc::new(AtomicBool::new(false));
        let (sent, refused_429) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let flood: Vec<_> = (0..FLOOD_CLIENTS)
            .map(|_| {
                let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
                let (sent, refused_429) = (sent.clone(), refused_429.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let guess = spot_shared::ids::new_id();
                        let Ok(token) = bcrypt::hash(guess, 4) else {
                            continue;
                        };
                        let token = token.replacen("$04$", "$10$", 1);
                        if let Ok(response) =
                            client.get(&url).header("X-Auth-Token", token).send().await
                        {
                            sent.fetch_add(1, Ordering::Relaxed);
                            if response.status() == 429 {
                                refused_429.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (sent_before, refused_before) = (
            sent.load(Ordering::Relaxed),
            refused_429.load(Ordering::Relaxed),
        );
        let flooded = latencies_ms(&client, &url).await?;
        let flood_secs = MEASURE.as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let sent = sent.load(Ordering::Relaxed) - sent_before;
        let refused_429 = refused_429.load(Ordering::Relaxed) - refused_before;
        for task in flood {
            let _ = task.await;
        }
        stack.stop();
        let p = |v: &[f64], q: f64| {
            let micros: Vec<i64> = v.iter().map(|ms| (ms * 1000.0) as i64).collect();
            percentile(&micros, q) as f64 / 1000.0
        };
        modes.push(json!({
            "mode": mode,
            "idle_p50_ms": p(&idle, 50.0),
            "idle_p99_ms": p(&idle, 99.0),
            "flood_p50_ms": p(&flooded, 50.0),
            "flood_p99_ms": p(&flooded, 99.0),
            "ratio_p50": ((p(&flooded, 50.0) / p(&idle, 50.0).max(0.001)) * 100.0).round() / 100.0,
            "samples_idle": idle.len(),
            "samples_flood": flooded.len(),
            "flood_answers_per_s": (sent as f64 / flood_secs).round(),
            "flood_answered_429_per_s": (refused_429 as f64 / flood_secs).round(),
        }));
    }
    Ok(json!({"scenario": "bcrypt-flood", "flood_clients": FLOOD_CLIENTS, "modes": modes}))
}

/// Sequential authenticated requests for [`MEASURE`]: their latencies in milliseconds, sorted.
async fn latencies_ms(client: &reqwest::Client, url: &str) -> anyhow::Result<Vec<f64>> {
    let mut samples = Vec::new();
    let began = Instant::now();
    while began.elapsed() < MEASURE {
        let began = Instant::now();
        let response = client.get(url).header("X-Auth-Token", KEY).send().await?;
        anyhow::ensure!(response.status() == 200, "answered {}", response.status());
        response.bytes().await?;
        samples.push(began.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples)
}
