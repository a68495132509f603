//! Lateness and duration alerts (`policies.alert_late_secs`, `policies.alert_running_secs`): which
//! alerts a run not ended yet is due. The reaper's sweep asks, marks each run once per alert
//! ([`crate::store::Store::mark_run_alert`]) and counts it.

use chrono::{DateTime, Utc};

use crate::model::{Job, Run, RunState};

/// An alert a run can be marked with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAlert {
    /// Its user code had not started `alert_late_secs` after its instant.
    Late,
    /// It was still running `alert_running_secs` after it started.
    LongRunning,
}

impl RunAlert {
    /// Its name in events (`alert_late`), the run's field (`alert:late`) and the api.
    pub fn as_str(self) -> &'static str {
        match self {
            RunAlert::Late => "late",
            RunAlert::LongRunning => "long_running",
        }
    }
}

/// The alerts `run` of `job` is due at `now` and not marked with yet.
pub fn due(job: &Job, run: &Run, now: DateTime<Utc>) -> Vec<RunAlert> {
    let past = |since: DateTime<Utc>, secs: Option<u64>| {
        secs.and_then(|secs| i64::try_from(secs).ok())
            .and_then(chrono::Duration::try_seconds)
            .is_some_and(|limit| now - since > limit)
    };
    let mut alerts = Vec::new();
    // A backfill's instants are history by design: its runs are never late.
    let waiting = run.backfill.is_none()
        && matches!(
            run.state,
            RunState::Queued | RunState::Pending | RunState::Provisioning | RunState::Booting
        );
    if waiting
        && run.late_alert_at.is_none()
        && past(run.scheduled_at, job.policies.alert_late_secs)
    {
        alerts.push(RunAlert::Late);
    }
    if let Some(started) = run.transitions.get(&RunState::Running) {
        if run.state == RunState::Running
            && run.long_running_alert_at.is_none()
            && past(*started, job.policies.alert_running_secs)
        {
            alerts.push(RunAlert::LongRunning);
        }
    }
    alerts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Policies;

    fn job() -> Job {
        Job::dummy_for_tests(Policies {
            alert_late_secs: Some(60),
            alert_running_secs: Some(600),
            ..Policies::default()
        })
    }

    #[test]
    fn a_run_is_late_until_its_code_starts_and_long_running_past_its_bound() {
        let at = |secs: i64| DateTime::from_timestamp(1_900_000_000 + secs, 0).unwrap();
        let mut run = Run {
            scheduled_at: at(0),
            state: RunState::Booting,
            ..Run::default()
        };
        assert!(due(&job(), &run, at(60)).is_empty(), "not yet");
        assert_eq!(due(&job(), &run, at(61)), [RunAlert::Late]);
        let backfilled = Run {
            backfill: Some("b1".into()),
            ..run.clone()
        };
        assert!(
            due(&job(), &backfilled, at(100_000)).is_empty(),
            "a backfill's runs are never late"
        );
        run.late_alert_at = Some(at(61));
        assert!(due(&job(), &run, at(90)).is_empty(), "marked once");
        run.state = RunState::Running;
        run.transitions.insert(RunState::Running, at(100));
        assert!(due(&job(), &run, at(700)).is_empty());
        assert_eq!(due(&job(), &run, at(701)), [RunAlert::LongRunning]);
        let quiet = Job {
            policies: Policies::default(),
            ..job()
        };
        assert!(
            due(&quiet, &run, at(100_000)).is_empty(),
            "no policy, no alert"
        );
    }
}
