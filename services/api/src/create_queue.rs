//! Creates saved together: the creates that requests make at the same moment go to Redis in one
//! script ([`Store::create_jobs`]), each still checked against its account's job quota in order
//! and answered on its own. A create that finds no other waiting is sent at once; under load, the
//! creates that arrive while one script is in flight go together in the next (group commit), so
//! Redis and the connection that carries its replies work once for many.

use spot_shared::model::Job;
use spot_shared::store::{Created, Store};
use spot_shared::{Error, Result};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// The most creates one script saves.
const BATCH: usize = 128;

/// Creates waiting for the writer, at most; a request past them waits for room.
const QUEUED: usize = 4_096;

/// What a create is answered: its job back (it travelled to the writer and returns, uncloned) and
/// what became of it.
type Reply = oneshot::Sender<(Job, Result<Created>)>;

/// The queue the api's create requests hand their new jobs to.
#[derive(Clone)]
pub struct CreateQueue {
    sender: mpsc::Sender<(Job, u64, Reply)>,
}

impl CreateQueue {
    /// The queue and the task that saves what it holds, which ends once every clone of the queue
    /// is dropped and what was queued is saved.
    pub fn start(store: Store) -> (CreateQueue, JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(QUEUED);
        let writer = tokio::spawn(save_batches(store, receiver));
        (CreateQueue { sender }, writer)
    }

    /// Saves `job` unless its account holds `max_jobs` already (see [`Store::create_job`]); the
    /// job comes back with the answer.
    pub async fn create(&self, job: Job, max_jobs: u64) -> Result<(Job, Created)> {
        let stopping = || Error::unavailable("the api is stopping");
        let (reply, answer) = oneshot::channel();
        if self.sender.send((job, max_jobs, reply)).await.is_err() {
            return Err(stopping());
        }
        let (job, created) = answer.await.map_err(|_| stopping())?;
        Ok((job, created?))
    }
}

/// Saves what is queued, as much as is there at once (up to [`BATCH`]), and answers each create:
/// an error of the script (Redis away, say) is every create's of that script.
async fn save_batches(store: Store, mut receiver: mpsc::Receiver<(Job, u64, Reply)>) {
    let mut batch = Vec::with_capacity(BATCH);
    while receiver.recv_many(&mut batch, BATCH).await > 0 {
        let jobs: Vec<(&Job, u64)> = batch.iter().map(|(job, max, _)| (job, *max)).collect();
        let saved = store.create_jobs(&jobs).await;
        for (i, (job, _, reply)) in batch.drain(..).enumerate() {
            let answer = match &saved {
                Ok(created) => created
                    .get(i)
                    .copied()
                    .ok_or_else(|| Error::internal("a create went unanswered by Redis")),
                Err(err) => Err(err.clone()),
            };
            // The request may have gone (its client hung up): nothing to answer.
            let _ = reply.send((job, answer));
        }
    }
}
