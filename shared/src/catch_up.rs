//! Catch-up: what a scheduled fire handled late does under its job's `policies.catch_up`, decided
//! where the fire is recorded (so every provisioner and redelivery decides alike), with the job's
//! timer moved in the same step.
//!
//! - `latest`: the fire runs, and the timer jumps to the first instant after now: one run for all
//!   that was missed.
//! - `all`: the newest `max_catch_up` missed instants run, oldest first: the timer steps to the next
//!   of them (already due, so the pump hands it over at once), and a fire older than them is skipped.
//! - `none`: a fire handled after its next instant has come is skipped; the timer jumps past now.
//!
//! In every mode a fire later than `misfire_grace_secs` (the catch-up window) is skipped, and `all`
//! reaches no further back than it.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::model::{CatchUp, Job};

/// The most instants `all` walks past to find the newest it runs (a dense schedule after a long
/// outage): beyond it, the catch-up moves on from where the walk stopped, a fire at a time.
const MAX_SCAN: usize = 100_000;

/// What one scheduled fire does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchUpStep {
    /// Whether the fire runs (else it is skipped as late).
    pub run: bool,
    /// Where the job's timer moves: the next fire to hand over, `None` when the schedule is over.
    pub next: Option<DateTime<Utc>>,
}

/// The step for `job`'s scheduled fire at `fired_at` (its fire time, jitter included), handled at
/// `now`.
pub fn step(job: &Job, fired_at: DateTime<Utc>, now: DateTime<Utc>) -> Result<CatchUpStep> {
    let after_now = || job.next_fire_after(fired_at.max(now));
    match job.policies.catch_up {
        CatchUp::Latest => Ok(CatchUpStep {
            run: true,
            next: after_now()?,
        }),
        CatchUp::Skip => {
            let missed = job
                .next_fire_after(fired_at)?
                .is_some_and(|next| next <= now);
            Ok(CatchUpStep {
                run: !missed,
                next: after_now()?,
            })
        }
        CatchUp::All => catch_up_all(job, fired_at, now),
    }
}

fn catch_up_all(job: &Job, fired_at: DateTime<Utc>, now: DateTime<Utc>) -> Result<CatchUpStep> {
    let limit = job.policies.max_catch_up.max(1) as usize;
    // The window: nothing older than the grace runs, so the walk starts there.
    let window_start = job
        .policies
        .misfire_grace_secs
        .and_then(|secs| i64::try_from(secs).ok())
        .and_then(chrono::Duration::try_seconds)
        .and_then(|grace| now.checked_sub_signed(grace));
    let mut cursor = match window_start {
        Some(start) if fired_at < start => {
            job.next_fire_after(start - chrono::Duration::milliseconds(1))?
        }
        _ => Some(fired_at),
    };
    // The newest `limit` fires due by now, from the fire (or the window's start) on.
    let mut due: VecDeque<DateTime<Utc>> = VecDeque::with_capacity(limit + 1);
    for _ in 0..MAX_SCAN {
        match cursor {
            Some(at) if at <= now => {
                due.push_back(at);
                if due.len() > limit {
                    due.pop_front();
                }
                cursor = job.next_fire_after(at)?;
            }
            _ => break,
        }
    }
    let next = match due.iter().find(|at| **at > fired_at) {
        Some(at) => Some(*at),
        None => job.next_fire_after(fired_at.max(now))?,
    };
    Ok(CatchUpStep {
        run: due.front() == Some(&fired_at),
        next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DummySpec, Policies, Runner};

    fn job(catch_up: CatchUp, max_catch_up: u32, grace: Option<u64>) -> Job {
        let runner = Runner::Dummy(DummySpec {
            template: "x".into(),
            runner_name: None,
        });
        let mut job = Job::for_tests(
            runner,
            Policies {
                catch_up,
                max_catch_up,
                misfire_grace_secs: grace,
                ..Policies::default()
            },
        );
        job.created_at = at(0);
        job
    }

    /// Minute `m` of a fixed hour: the test jobs fire every minute.
    fn at(m: i64) -> DateTime<Utc> {
        // 1,800,000,000 s is a whole hour.
        DateTime::from_timestamp(1_800_000_000 + m * 60, 0).unwrap()
    }

    /// Hands fires over the way the pump does, from `first`, until the timer passes `now`; returns
    /// the instants that ran.
    fn drive(job: &Job, first: DateTime<Utc>, now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let mut ran = Vec::new();
        let mut timer = Some(first);
        while let Some(fire) = timer.filter(|fire| *fire <= now) {
            let step = step(job, fire, now).unwrap();
            if step.run {
                ran.push(fire);
            }
            assert!(step.next > Some(fire), "the timer always moves on");
            timer = step.next;
        }
        assert_eq!(timer, Some(at(11)), "then on schedule");
        ran
    }

    #[test]
    fn after_ten_missed_minutes_each_mode_runs_what_it_says() {
        // Down from minute 1; back at 10:30.
        let now = at(10) + chrono::Duration::seconds(30);
        assert_eq!(drive(&job(CatchUp::Latest, 10, None), at(1), now), [at(1)]);
        assert_eq!(
            drive(&job(CatchUp::All, 3, None), at(1), now),
            [at(8), at(9), at(10)],
            "the newest three, oldest first"
        );
        assert_eq!(
            drive(&job(CatchUp::All, 100, None), at(1), now),
            (1..=10).map(at).collect::<Vec<_>>()
        );
        assert!(drive(&job(CatchUp::Skip, 10, None), at(1), now).is_empty());
        // The window: nothing older than 3 minutes and a half.
        assert_eq!(
            drive(&job(CatchUp::All, 100, Some(210)), at(1), now),
            [at(7), at(8), at(9), at(10)]
        );
    }

    #[test]
    fn a_fire_on_time_runs_in_every_mode() {
        let now = at(5) + chrono::Duration::milliseconds(3);
        for mode in [CatchUp::Latest, CatchUp::All, CatchUp::Skip] {
            let step = step(&job(mode, 10, None), at(5), now).unwrap();
            assert_eq!(
                step,
                CatchUpStep {
                    run: true,
                    next: Some(at(6))
                },
                "{mode:?}"
            );
        }
    }
}
