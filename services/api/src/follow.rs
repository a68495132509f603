//! Following a run's output as it is written (`GET /v1/runs/{id}/logs?follow=true`).
//!
//! A follow stream holds a connection open for as long as its run lasts, so the streams are capped,
//! per account (`quotas.max_log_streams`, an account may have its own) and in total
//! (`api.follow_streams_total`): one tenant cannot hold every slot, and all of them together cannot
//! exhaust the api. Each tick reads
//! only the bytes written since the last (`GETRANGE`), never the whole log again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::web;
use futures::stream::{self, Stream};
use spot_shared::store::Store;
use spot_shared::{Error, ErrorCode};

/// How often a stream looks for new output.
const TICK: Duration = Duration::from_millis(500);

/// The follow streams open now, by account.
pub struct FollowSlots {
    total: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// One open stream's slot, given back when the stream is dropped (it ended, or its client left).
pub struct Slot {
    slots: Arc<FollowSlots>,
    account: String,
}

impl FollowSlots {
    pub fn new(total: usize) -> FollowSlots {
        FollowSlots {
            total,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for `account`, which may hold `per_account`, or 429 naming the cap that is reached.
    pub fn take(self: &Arc<Self>, account: &str, per_account: usize) -> Result<Slot, Error> {
        let mut open = self
            .open
            .lock()
            .map_err(|_| Error::internal("follow slots poisoned"))?;
        let total: usize = open.values().sum();
        let mine = open.get(account).copied().unwrap_or(0);
        let full = |cap: &str, limit: usize| {
            let mut err = Error::new(
                ErrorCode::TooManyRequests,
                format!("{limit} follow streams are open; close one or try again later"),
            );
            err.field = Some(cap.to_string());
            Err(err)
        };
        if mine >= per_account {
            return full("quotas.max_log_streams", per_account);
        }
        if total >= self.total {
            return full("api.follow_streams_total", self.total);
        }
        *open.entry(account.to_string()).or_insert(0) += 1;
        Ok(Slot {
            slots: self.clone(),
            account: account.to_string(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.slots.open.lock() {
            if let Some(count) = open.get_mut(&self.account) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    open.remove(&self.account);
                }
            }
        }
    }
}

/// The run's output from byte `sent` on, chunk by chunk as it is written, until the run ends. The
/// slot is held as long as the stream lives.
pub fn output_stream(
    store: Store,
    run_id: String,
    sent: usize,
    slot: Slot,
) -> impl Stream<Item = Result<web::Bytes, actix_web::Error>> {
    stream::unfold(
        (store, run_id, sent, false, slot),
        |(store, run_id, sent, done, slot)| async move {
            if done {
                return None;
            }
            loop {
                let new = match store.log_since(&run_id, sent).await {
                    Ok(new) => new,
                    Err(err) => {
                        let err = actix_web::error::ErrorServiceUnavailable(err.to_string());
                        return Some((Err(err), (store, run_id, sent, true, slot)));
                    }
                };
                let ended = match store.get_run(&run_id).await {
                    Ok(Some(run)) => run.state.is_terminal(),
                    _ => true,
                };
                if !new.is_empty() || ended {
                    let sent = sent + new.len();
                    let chunk = web::Bytes::from(new);
                    return Some((Ok(chunk), (store, run_id, sent, ended, slot)));
                }
                tokio::time::sleep(TICK).await;
            }
        },
    )
}
