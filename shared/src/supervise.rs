//! Background loops that cannot die. Each service's loops (the timer pump, the reconciler, the
//! sweeps, the shard leases) run under [`supervise`]: on a task of their own, and one that panics or
//! returns is logged, counted (`spot_scheduler_loop_restarts_total{loop}` on the api's `/metrics`)
//! and started again after a backoff, instead of ending that work in the process with nobody
//! noticing.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::store::Store;

/// The first wait before a dead loop starts again; it doubles up to [`MAX_BACKOFF`] while the loop
/// keeps dying, and starts over once it has run for [`HEALTHY_AFTER`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// The event counted in Redis for each restart of the loop `name`.
pub fn restart_event(name: &str) -> String {
    format!("{RESTART_EVENT_PREFIX}{name}")
}

/// What every restart event's name starts with; the rest is the loop's name.
pub const RESTART_EVENT_PREFIX: &str = "loop_restart:";

/// Restarts in this process, by loop (what tests and logs read; Redis holds the deployment's sum).
static RESTARTS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

/// How often the loop `name` was restarted in this process.
pub fn restarts(name: &str) -> u64 {
    RESTARTS
        .lock()
        .map(|counts| counts.get(name).copied().unwrap_or(0))
        .unwrap_or(0)
}

/// Runs the loop that `start` makes until the returned handle is aborted (or dropped with its
/// task): whenever the loop panics or returns, it is logged, counted (in `store` too, when given) and
/// made again by `start` after a backoff. Aborting the handle stops the loop as well.
pub fn supervise<F, Fut>(name: &'static str, store: Option<Store>, mut start: F) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let started = tokio::time::Instant::now();
            // Aborted with the supervisor: dropping the guard (when this task is aborted) aborts it.
            let mut running = AbortOnDrop(tokio::spawn(start()));
            let why = match (&mut running.0).await {
                Ok(()) => "it returned".to_string(),
                Err(err) if err.is_panic() => format!("it panicked: {}", panic_text(err)),
                Err(_) => return,
            };
            if let Ok(mut counts) = RESTARTS.lock() {
                *counts.entry(name).or_insert(0) += 1;
            }
            if started.elapsed() >= HEALTHY_AFTER {
                backoff = FIRST_BACKOFF;
            }
            tracing::error!(
                loop_name = name,
                why,
                retry_in_ms = backoff.as_millis() as u64,
                "a background loop died; starting it again"
            );
            if let Some(store) = &store {
                store.note_event(&restart_event(name), 1).await;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    })
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn panic_text(err: tokio::task::JoinError) -> String {
    let payload = err.into_panic();
    if let Some(text) = payload.downcast_ref::<&str>() {
        text.to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_panics_or_returns_is_started_again_with_backoff() {
        let starts = Arc::new(AtomicU32::new(0));
        let counted = starts.clone();
        let handle = supervise("test-dies-twice", None, move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 => panic!("first start dies"),
                    1 => {} // returns: a loop must not end either
                    _ => std::future::pending::<()>().await,
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(starts.load(Ordering::SeqCst), 1, "waits out the backoff");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        assert_eq!(restarts("test-dies-twice"), 2);
        handle.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn aborting_the_supervisor_stops_the_loop() {
        let ticks = Arc::new(AtomicU32::new(0));
        let counted = ticks.clone();
        let handle = supervise("test-aborted", None, move || {
            let counted = counted.clone();
            async move {
                loop {
                    counted.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        handle.abort();
        let _ = handle.await;
        let seen = ticks.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            ticks.load(Ordering::SeqCst),
            seen,
            "the loop stopped with it"
        );
        assert_eq!(restarts("test-aborted"), 0);
    }
}
