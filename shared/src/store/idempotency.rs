//! Idempotency keys: the first answer to a request that carried an `Idempotency-Key`, kept so that a
//! retry (its answer lost, say) gets that answer again instead of doing the work twice.
//!
//! Keys, under the prefix `p`:
//! - `p:idem:{account}:{sha256 of the key}`: a hash with the request's `fingerprint` (method, path,
//!   query and body, hashed), its `state` (`pending` while the first request is in flight, `done`),
//!   and once done the answer's `status`, `content_type` and `body`. It expires: after the lease
//!   while pending, after the TTL once done.
//! - `p:idem-instant:{account}:{sha256 of job id and key}`: the instant a keyed run-now fires at, kept
//!   for the TTL, so a resend made after the record's lease ran out (the api died before keeping its
//!   answer) fires at the same instant, which the fire's own marker records once.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use sha2::{Digest, Sha256};

use super::Store;
use crate::error::Result;

/// KEYS[1] the record. ARGV: fingerprint, lease (ms). Returns {'new'}, {'mismatch'}, {'pending'} or
/// {'done', status, content type, body}.
const BEGIN: &str = r#"
local fingerprint = redis.call('HGET', KEYS[1], 'fingerprint')
if not fingerprint then
  redis.call('HSET', KEYS[1], 'fingerprint', ARGV[1], 'state', 'pending')
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'new'}
end
if fingerprint ~= ARGV[1] then return {'mismatch'} end
if redis.call('HGET', KEYS[1], 'state') ~= 'done' then return {'pending'} end
local saved = redis.call('HMGET', KEYS[1], 'status', 'content_type', 'body')
return {'done', saved[1], saved[2], saved[3]}
"#;

/// KEYS[1] the record. ARGV: fingerprint, TTL (ms), status, content type, body. Only the request
/// that holds the record (same fingerprint, still pending) saves its answer.
const FINISH: &str = r#"
if redis.call('HGET', KEYS[1], 'fingerprint') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'done', 'status', ARGV[3], 'content_type', ARGV[4], 'body', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// KEYS[1] the record. ARGV: fingerprint. Lets go of a pending record (the request failed in a way
/// a retry may not), so that a retry runs at once.
const ABANDON: &str = r#"
if redis.call('HGET', KEYS[1], 'fingerprint') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return 0 end
return redis.call('DEL', KEYS[1])
"#;

static BEGIN_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(BEGIN));
static FINISH_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(FINISH));
static ABANDON_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ABANDON));

/// A request's place under its idempotency key: the account's, the key, and what was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotentRequest {
    pub account: String,
    pub key: String,
    /// The request's method, path, query and body, hashed: a retry must send the same.
    pub fingerprint: String,
}

impl IdempotentRequest {
    pub fn new(
        account: &str,
        key: &str,
        method: &str,
        path: &str,
        query: &str,
        body: &[u8],
    ) -> Self {
        let mut hasher = Sha256::new();
        for part in [method.as_bytes(), path.as_bytes(), query.as_bytes()] {
            hasher.update(part);
            hasher.update(b"\n");
        }
        hasher.update(body);
        IdempotentRequest {
            account: account.to_string(),
            key: key.to_string(),
            fingerprint: hex::encode(hasher.finalize()),
        }
    }

    fn record_key(&self, store: &Store) -> String {
        let key_hash = hex::encode(Sha256::digest(self.key.as_bytes()));
        store.key(&format!("idem:{}:{key_hash}", self.account))
    }
}

/// A first answer kept for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedAnswer {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// What [`Store::begin_idempotent`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begun {
    /// No request had this key: this one holds it now and runs.
    New,
    /// The key was used with another request (method, path or body).
    Mismatch,
    /// The first request with this key is still in flight.
    InFlight,
    /// The first request's answer, to send again.
    Done(SavedAnswer),
}

impl Store {
    /// Takes the request's key for it, or says why not (see [`Begun`]).
    pub async fn begin_idempotent(
        &self,
        request: &IdempotentRequest,
        lease: Duration,
    ) -> Result<Begun> {
        let mut conn = self.conn.clone();
        let reply: Vec<Vec<u8>> = BEGIN_SCRIPT
            .key(request.record_key(self))
            .arg(&request.fingerprint)
            .arg(lease.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        let text = |i: usize| {
            reply
                .get(i)
                .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
                .unwrap_or_default()
        };
        Ok(match text(0).as_str() {
            "new" => Begun::New,
            "mismatch" => Begun::Mismatch,
            "done" => Begun::Done(SavedAnswer {
                status: text(1).parse().unwrap_or(200),
                content_type: text(2),
                body: reply.get(3).cloned().unwrap_or_default(),
            }),
            _ => Begun::InFlight,
        })
    }

    /// Keeps the answer of the request that holds its key, for `ttl`.
    pub async fn finish_idempotent(
        &self,
        request: &IdempotentRequest,
        answer: &SavedAnswer,
        ttl: Duration,
    ) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = FINISH_SCRIPT
            .key(request.record_key(self))
            .arg(&request.fingerprint)
            .arg(ttl.as_millis() as u64)
            .arg(answer.status)
            .arg(&answer.content_type)
            .arg(answer.body.as_slice())
            .invoke_async(&mut conn)
            .await?;
        self.replicated_at(&request.record_key(self)).await
    }

    /// The instant a run-now of `job_id` sent with `key` fires at: `proposed` for the first request,
    /// and the first request's instant for every resend within `ttl`.
    pub async fn keyed_instant(
        &self,
        account: &str,
        job_id: &str,
        key: &str,
        proposed: chrono::DateTime<chrono::Utc>,
        ttl: Duration,
    ) -> Result<chrono::DateTime<chrono::Utc>> {
        let hash = hex::encode(Sha256::digest(format!("{job_id}\n{key}").as_bytes()));
        let record = self.key(&format!("idem-instant:{account}:{hash}"));
        let mut conn = self.conn.clone();
        // SET NX GET: writes the proposal only if there is none, answers what was there.
        let earlier: Option<i64> = redis::cmd("SET")
            .arg(&record)
            .arg(proposed.timestamp_millis())
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        self.replicated_at(&record).await?;
        Ok(earlier
            .and_then(chrono::DateTime::from_timestamp_millis)
            .unwrap_or(proposed))
    }

    /// Lets go of the key of a request that failed so that trying again may help (a 5xx).
    pub async fn abandon_idempotent(&self, request: &IdempotentRequest) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = ABANDON_SCRIPT
            .key(request.record_key(self))
            .arg(&request.fingerprint)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }
}
