//! What the chaos harness counts at the end: each job's runs against what it must show.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use spot_shared::model::Run;
use spot_shared::store::Store;
use spot_tests::image;

/// What each job must show at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Exactly this many runs, attempts 1..=n.
    Runs(usize),
    /// A cron job: no instant twice, and its last instant in the window fired (or a late fire,
    /// written at or after it, caught up on it).
    Cron { last: DateTime<Utc> },
    /// As many runs as run-nows were accepted (counted in `accepted`).
    RunNows,
}

/// The counts at one moment.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub expected: usize,
    pub runs: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub runs_not_ended: usize,
    /// Cron instants skipped because a fault delayed them (a recurring job fires once for what it
    /// missed): reported, not a failure.
    pub collapsed: usize,
    /// Runs the sweeps ended as lost (then retried where the policy allows): reported.
    pub lost_runs: usize,
    /// Fires whose last attempt did not end by the user's code (succeeded, failed with its own exit
    /// code, timed out): ended lost, `provision_failed`, interrupted with no attempt after. Counted
    /// in `lost` too.
    pub undelivered: usize,
    /// Relaunches of runs that never started, summed over the runs.
    pub relaunched: usize,
    /// Those runs, as `(job id, run id, attempt, error)`: printed, to see which fault lost them.
    pub lost_run_errors: Vec<(String, String, u32, String)>,
    /// Cron jobs whose last instant was caught up on by a late fire rather than fired: reported.
    pub cron_caught_up: usize,
    /// Runs of cron jobs (not in `runs`: how many a cron job gets depends on what it missed).
    pub cron_runs: usize,
    /// The latest first fire of any one-shot, from its instant to its run's record, in seconds: how
    /// long the worst fault held work up.
    pub max_fire_lateness_secs: f64,
    /// The latest first fires (lateness in seconds, instant, job id), latest first: which fault
    /// held work up longest.
    pub latest_fires: Vec<(f64, DateTime<Utc>, String)>,
    /// Whether all work due before the last fault is done.
    pub due_before_fault_done: bool,
    pub run_ids: HashSet<String>,
    /// For each job counted lost or duplicated: its id, what it had to show and its runs (instant,
    /// attempt, when recorded), printed when the scenario fails.
    pub suspects: Vec<String>,
}

async fn runs_of(store: &Store, job_id: &str) -> anyhow::Result<Vec<Run>> {
    let mut runs = Vec::new();
    for id in store.job_run_ids(job_id, 0).await? {
        if let Some(run) = store.get_run(&id).await? {
            runs.push(run);
        }
    }
    Ok(runs)
}

pub async fn tally(
    store: &Store,
    jobs: &[(String, Expect, Option<DateTime<Utc>>)],
    accepted: &HashMap<String, usize>,
    last_fault: DateTime<Utc>,
) -> anyhow::Result<Tally> {
    let mut tally = Tally {
        due_before_fault_done: true,
        ..Tally::default()
    };
    for (job_id, expect, due) in jobs {
        let runs = runs_of(store, job_id).await?;
        if !matches!(expect, Expect::Cron { .. }) {
            tally.runs += runs.len();
        }
        for run in runs.iter().filter(|r| r.attempt == 1) {
            if let Some(recorded) = run.transitions.values().min() {
                let late = (*recorded - run.scheduled_at).num_milliseconds() as f64 / 1000.0;
                tally.max_fire_lateness_secs = tally.max_fire_lateness_secs.max(late);
                tally
                    .latest_fires
                    .push((late, run.scheduled_at, job_id.clone()));
            }
        }
        tally.runs_not_ended += runs.iter().filter(|r| !r.state.is_terminal()).count();
        for run in &runs {
            if let Some(error) = run.error.as_deref().filter(|e| e.starts_with("lost")) {
                tally.lost_runs += 1;
                tally.lost_run_errors.push((
                    job_id.clone(),
                    run.id.clone(),
                    run.attempt,
                    error.to_string(),
                ));
            }
        }
        tally.run_ids.extend(runs.iter().map(|r| r.id.clone()));
        tally.relaunched += runs.iter().map(|r| r.relaunches as usize).sum::<usize>();
        let undelivered = undelivered_fires(&runs);
        if undelivered > 0 {
            tally.undelivered += undelivered;
            tally.lost += undelivered;
            tally
                .suspects
                .push(describe(store, job_id, expect, &runs).await);
        }
        let mut seen: BTreeMap<(i64, u32), usize> = BTreeMap::new();
        for run in &runs {
            *seen
                .entry((run.scheduled_at.timestamp_millis(), run.attempt))
                .or_default() += 1;
        }
        let twice: usize = seen.values().map(|n| n - 1).sum();
        let (wanted, extra) = match expect {
            Expect::Runs(n) => (*n, runs.len().saturating_sub(*n)),
            Expect::RunNows => {
                let n = accepted.get(job_id).copied().unwrap_or(0);
                (n, runs.len().saturating_sub(n))
            }
            Expect::Cron { last } => {
                // Lost: the schedule stopped: its last instant in the window never fired, and no
                // fire written at or after it caught up on it. (A fire a fault held up past the
                // last instant runs once for what it missed and moves on past the window's end.)
                let caught_up = |r: &Run| r.transitions.values().min().is_some_and(|t| t >= last);
                let fired_last = runs.iter().any(|r| r.scheduled_at == *last);
                if !fired_last && runs.iter().any(caught_up) {
                    tally.cron_caught_up += 1;
                }
                if !fired_last && !runs.iter().any(caught_up) {
                    tally.lost += 1;
                    tally
                        .suspects
                        .push(describe(store, job_id, expect, &runs).await);
                }
                if twice > 0 {
                    tally
                        .suspects
                        .push(describe(store, job_id, expect, &runs).await);
                }
                tally.cron_runs += runs.len();
                // Instants every 5 s from the first run to the last one expected.
                if let Some(first) = runs.iter().map(|r| r.scheduled_at).min() {
                    let instants = ((*last - first).num_seconds() / 5 + 1).max(0) as usize;
                    tally.collapsed += instants.saturating_sub(seen.len());
                }
                tally.duplicated += twice;
                continue;
            }
        };
        tally.expected += wanted;
        tally.lost += wanted.saturating_sub(runs.len());
        tally.duplicated += extra.max(twice);
        if runs.len() != wanted || twice > 0 {
            tally
                .suspects
                .push(describe(store, job_id, expect, &runs).await);
        }
        if due.is_some_and(|due| due < last_fault) && runs.len() < wanted {
            tally.due_before_fault_done = false;
        }
    }
    tally.latest_fires.sort_by(|a, b| b.0.total_cmp(&a.0));
    tally.latest_fires.truncate(LATEST_FIRES_SHOWN);
    Ok(tally)
}

const LATEST_FIRES_SHOWN: usize = 5;

/// Whether the user's code ran to its own end in this run: it succeeded, failed with an exit code
/// of its own, or ran out its time. A run still under way is not judged yet.
fn ended_by_the_users_code(run: &Run) -> Option<bool> {
    use spot_shared::model::RunState::*;
    match run.state {
        Succeeded | TimedOut => Some(true),
        Failed => Some(run.exit_code.is_some()),
        ProvisionFailed | Interrupted | Cancelled => Some(false),
        Queued | Pending | Provisioning | Booting | Running => None,
    }
}

/// Fires (instants) whose last attempt ended without the user's code having run to its end.
fn undelivered_fires(runs: &[Run]) -> usize {
    let mut last_attempts: BTreeMap<i64, &Run> = BTreeMap::new();
    for run in runs {
        let slot = last_attempts
            .entry(run.scheduled_at.timestamp_millis())
            .or_insert(run);
        if run.attempt > slot.attempt {
            *slot = run;
        }
    }
    last_attempts
        .values()
        .filter(|run| ended_by_the_users_code(run) == Some(false))
        .count()
}

/// One job's runs, for a look at what went wrong: instant, attempt, state and when recorded.
async fn describe(store: &Store, job_id: &str, expect: &Expect, runs: &[Run]) -> String {
    // What the store holds of the job: its runner, state and the timer it waits on.
    let job = match store.get_job(job_id).await {
        Ok(Some(job)) => format!(
            "{} enabled={} generation={} timer={:?}",
            serde_json::to_value(&job.runner).unwrap_or_default()["type"],
            job.enabled,
            job.generation,
            job.next_fire_at
        ),
        Ok(None) => "job missing from Redis".to_string(),
        Err(err) => format!("job unreadable: {err}"),
    };
    let mut runs: Vec<&Run> = runs.iter().collect();
    runs.sort_by_key(|r| (r.scheduled_at, r.attempt));
    let shown: Vec<String> = runs
        .iter()
        .map(|r| {
            let recorded = r
                .transitions
                .values()
                .min()
                .map(|t| t.format("%H:%M:%S%.3f").to_string())
                .unwrap_or_else(|| "-".into());
            format!(
                "{}#{} {} recorded {recorded}",
                r.scheduled_at.format("%H:%M:%S%.3f"),
                r.attempt,
                r.state
            )
        })
        .collect();
    format!("{job_id} {expect:?} ({job}): [{}]", shown.join(", "))
}

/// Containers, running or not, left by this scenario's runs.
pub async fn containers_of(run_ids: &HashSet<String>) -> usize {
    use bollard::query_parameters::ListContainersOptionsBuilder;
    let docker = image::docker().await;
    let filters = HashMap::from([("label", vec![spot_shared::cloud::RUN_LABEL])]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let Ok(containers) = docker.list_containers(Some(options)).await else {
        return usize::MAX;
    };
    containers
        .iter()
        .filter(|c| {
            c.labels
                .as_ref()
                .and_then(|l| l.get(spot_shared::cloud::RUN_LABEL))
                .is_some_and(|run| run_ids.contains(run))
        })
        .count()
}
