//! What runs cost, on moto's EC2 (through the `ec2` provider, as deployed): a spot run is priced from
//! the spot price history and billed from its instance's recorded launch and termination; an
//! on-demand fallback is priced from the table; an account over its monthly budget gets
//! `provision_failed` naming it; `/v1/usage` and `/metrics` sum what the runs show.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use spot_tests::ec2_stack::Ec2Stack;
use spot_tests::{eventually, ACCOUNT_KEY};

/// moto's spot price for every type and zone.
const MOTO_SPOT_PRICE: f64 = 0.00001;

async fn get(stack: &Ec2Stack, path: &str) -> Value {
    stack
        .app
        .get(path, ACCOUNT_KEY)
        .await
        .json()
        .await
        .unwrap_or(Value::Null)
}

fn instant(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("an instant: {value}"))
}

/// Waits until the run's instance is terminated and its cost summed; returns the run (with `cost`)
/// and the instance.
async fn ended_and_priced(stack: &Ec2Stack, run_id: &str) -> (Value, Value) {
    eventually(
        Duration::from_secs(60),
        "the run's instance terminated and priced",
        || async {
            let run = get(stack, &format!("/v1/runs/{run_id}")).await;
            let instance_id = run["instance_id"].as_str()?.to_string();
            let instance = get(stack, &format!("/v1/instances/{instance_id}")).await;
            (instance["state"] == "terminated" && instance["billed_secs"].is_u64()).then_some(())?;
            // Read the run again: its cost is written with the instance's.
            let run = get(stack, &format!("/v1/runs/{run_id}")).await;
            Some((run, instance))
        },
    )
    .await
}

/// The cost EC2 bills for the instance as recorded: its price × whole seconds, a minute at least.
fn expected_usd(instance: &Value) -> (u64, f64) {
    let launched = instant(&instance["transitions"]["requested"]);
    let terminated = instant(&instance["transitions"]["terminated"]);
    let ms = (terminated - launched).num_milliseconds().max(0) as u64;
    let billed = ms.div_ceil(1000).max(60);
    let price = instance["usd_per_hour"].as_f64().unwrap();
    (billed, price * billed as f64 / 3600.0)
}

/// Equal to the nano-dollar costs are recorded in.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 0.5e-9 + 1e-9 * b.abs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spot_run_costs_its_spot_price_times_the_seconds_ec2_bills() {
    let stack = Ec2Stack::start(false).await.with_services().await;
    let job_id = stack.job("sh -c 'echo priced'", json!({})).await;
    let run = stack.run_in(&job_id, 1, &["succeeded", "failed"]).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    let run_id = run["id"].as_str().unwrap().to_string();
    let (run, instance) = ended_and_priced(&stack, &run_id).await;

    assert_eq!(instance["lifecycle"], "spot");
    assert_eq!(instance["price_source"], "spot-price-history");
    assert_eq!(instance["usd_per_hour"], MOTO_SPOT_PRICE);
    assert!(
        instance["zone"].is_string(),
        "the zone is known: {instance}"
    );
    let (billed, usd) = expected_usd(&instance);
    let cost = &run["cost"];
    assert_eq!(cost["market"], "spot", "{cost}");
    assert_eq!(cost["billed_seconds"], billed, "{cost}");
    assert!(close(cost["usd"].as_f64().unwrap(), usd), "{cost} vs {usd}");
    assert_eq!(cost["terminated"], true);
    assert_eq!(cost["leaked_seconds"], 0, "{cost}");
    assert!(close(run["cost_usd"].as_f64().unwrap(), usd), "{run}");

    // The same cost in seed 003's status, and as the job's total.
    let status = get(&stack, &format!("/status/{job_id}")).await;
    assert_eq!(status["cost"], *cost, "{status}");
    let job = get(&stack, &format!("/v1/jobs/{job_id}")).await;
    assert!(close(job["cost_usd_total"].as_f64().unwrap(), usd), "{job}");

    // /metrics: cost and instance-seconds by market, and the overhead phases.
    let metrics = stack
        .app
        .get("/metrics", ACCOUNT_KEY)
        .await
        .text()
        .await
        .unwrap();
    let line = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    assert!(close(
        line("spot_scheduler_cost_usd_total{market=\"spot\"}"),
        usd
    ));
    assert_eq!(
        line("spot_scheduler_instance_seconds_total{market=\"spot\"}"),
        billed as f64
    );
    for phase in ["boot", "exit_to_terminate", "terminate_to_terminated"] {
        let count = line(&format!(
            "spot_scheduler_instance_overhead_seconds_count{{phase=\"{phase}\"}}"
        ));
        assert_eq!(count, 1.0, "{phase}");
    }
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_on_demand_fallback_is_priced_from_the_table() {
    let stack = Ec2Stack::start(true).await;
    stack
        .faults()
        .no_spot_capacity
        .store(true, Ordering::SeqCst);
    let stack = stack.with_services().await;
    let job_id = stack.job("true", json!({"on_demand_fallback": true})).await;
    let run = stack.run_in(&job_id, 1, &["succeeded", "failed"]).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    let (run, instance) = ended_and_priced(&stack, run["id"].as_str().unwrap()).await;

    let table = &stack.env.settings.pricing.on_demand_usd_per_hour;
    let instance_type = instance["instance_type"].as_str().unwrap();
    assert_eq!(instance["price_source"], "on-demand-table", "{instance}");
    assert_eq!(instance["usd_per_hour"], table[instance_type], "{instance}");
    assert_ne!(instance["lifecycle"], "spot");
    let (billed, usd) = expected_usd(&instance);
    assert_eq!(run["cost"]["billed_seconds"], billed);
    assert!(close(run["cost"]["usd"].as_f64().unwrap(), usd), "{run}");
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_account_over_its_budget_gets_provision_failed_and_usage_sums_its_runs() {
    // A budget a single spot minute at moto's price (1.7e-7 USD) goes over.
    let stack = Ec2Stack::start_with(false, |env| {
        env.settings.quotas.monthly_budget_usd = Some(1e-7);
    })
    .await
    .with_services()
    .await;
    let before = get(&stack, "/v1/usage").await;
    assert_eq!(before["budget_usd"], 1e-7, "{before}");
    assert_eq!(before["budget_left_usd"], 1e-7, "{before}");

    let first = stack.job("true", json!({})).await;
    let run = stack.run_in(&first, 1, &["succeeded", "failed"]).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    let (run, _) = ended_and_priced(&stack, run["id"].as_str().unwrap()).await;
    let spent = run["cost_usd"].as_f64().unwrap();

    let second = stack.job("true", json!({})).await;
    let refused = stack.run_in(&second, 1, &["provision_failed"]).await;
    let error = refused["error"].as_str().unwrap();
    assert!(error.contains("monthly_budget_usd"), "{refused}");
    assert!(
        error.contains("1e-7") || error.contains("0.0000001"),
        "{refused}"
    );
    assert!(
        refused["instance_id"].is_null(),
        "nothing was launched: {refused}"
    );

    // The report sums the runs: one run of the first job, nothing of the refused one.
    let usage = get(&stack, "/v1/usage").await;
    assert!(close(usage["usd"].as_f64().unwrap(), spent), "{usage}");
    assert_eq!(usage["runs"], 1, "{usage}");
    assert_eq!(usage["budget_left_usd"], 0.0, "{usage}");
    assert!(close(usage["month_spent_usd"].as_f64().unwrap(), spent));
    let jobs = &usage["groups"][0]["jobs"];
    assert_eq!(jobs.as_array().map(Vec::len), Some(1), "{usage}");
    assert_eq!(jobs[0]["job_id"], first.as_str());
    assert_eq!(
        jobs[0]["instance_seconds"], run["cost"]["billed_seconds"],
        "{usage}"
    );
    // Bad ranges are refused, naming the field.
    let bad = stack
        .app
        .get("/v1/usage?from=2026-13-01", ACCOUNT_KEY)
        .await;
    assert_eq!(bad.status(), 400);
    let reversed = stack
        .app
        .get("/v1/usage?from=2026-05-02&to=2026-05-01", ACCOUNT_KEY)
        .await;
    assert_eq!(reversed.status(), 400);
    let body: Value = reversed.json().await.unwrap();
    assert_eq!(body["field"], "to");
    stack.finish().await;
}

/// The overhead around each job on the moto harness, as a measurement to run by hand (it prints
/// figures and asserts none of them; BENCHMARKS.md keeps them):
/// `cargo test -p spot-tests --test costs -- --ignored lifecycle_on_moto --nocapture`.
/// 40 container jobs (`true`), due together in waves of 10, through the `ec2` provider; from each
/// run's and instance's recorded transitions: the run's end → terminate requested, terminate
/// requested → terminated, the run's end → terminated, and the seconds billed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement: run by hand, figures in BENCHMARKS.md"]
async fn lifecycle_on_moto() {
    const JOBS: usize = 40;
    const WAVE: usize = 10;
    let stack = Ec2Stack::start(false).await.with_services().await;
    let mut jobs = Vec::new();
    for wave in 0..JOBS / WAVE {
        for _ in 0..WAVE {
            jobs.push(stack.job("true", json!({})).await);
        }
        for job in &jobs[wave * WAVE..] {
            stack.run_in(job, 1, &["succeeded", "failed"]).await;
        }
    }
    let mut exit_to_terminate = Vec::new();
    let mut terminate_to_terminated = Vec::new();
    let mut past_the_job = Vec::new();
    let mut billed = Vec::new();
    for job in &jobs {
        let run = stack.run_in(job, 1, &["succeeded"]).await;
        let (run, instance) = ended_and_priced(&stack, run["id"].as_str().unwrap()).await;
        let ended = instant(&run["transitions"]["succeeded"]);
        let terminating = instant(&instance["transitions"]["terminating"]);
        let terminated = instant(&instance["transitions"]["terminated"]);
        exit_to_terminate.push((terminating - ended).num_milliseconds());
        terminate_to_terminated.push((terminated - terminating).num_milliseconds());
        past_the_job.push((terminated - ended).num_milliseconds());
        billed.push(run["cost"]["billed_seconds"].as_i64().unwrap());
    }
    let figures = |mut values: Vec<i64>| {
        values.sort_unstable();
        let at =
            |p: f64| values[((values.len() as f64 * p).ceil() as usize).clamp(1, values.len()) - 1];
        json!({"p50": at(0.5), "p99": at(0.99), "max": values[values.len() - 1]})
    };
    println!(
        "{}",
        json!({
            "scenario": "lifecycle-on-moto",
            "jobs": JOBS,
            "exit_to_terminate_ms": figures(exit_to_terminate),
            "terminate_to_terminated_ms": figures(terminate_to_terminated),
            "past_the_job_ms": figures(past_the_job),
            "billed_secs": figures(billed),
        })
    );
    stack.finish().await;
}
