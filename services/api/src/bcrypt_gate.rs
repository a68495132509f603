//! Bounds the bcrypt work anonymous callers can cause. A bcrypt-hashed key never seen before costs
//! tens of milliseconds of CPU per configured key, and anyone can send one: [`BcryptGate`] runs the
//! verification on the blocking pool, never on an actix worker thread, `auth.bcrypt_concurrency` at a
//! time, and a client address whose tokens failed `auth.bcrypt_failures_per_minute` times gets 429
//! without more being tried until its budget refills.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use spot_shared::auth::{Keyring, Principal};
use spot_shared::config::AuthSettings;
use spot_shared::{Error, ErrorCode};
use tokio::sync::Semaphore;

/// Bounds the bcrypt work anonymous callers can cause (see the module's doc).
pub struct BcryptGate {
    permits: Semaphore,
    /// Failed verifications per address.
    failures: DefaultKeyedRateLimiter<IpAddr>,
    /// Addresses out of failures, and until when.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

/// Addresses remembered as blocked at most; past it, the expired ones are forgotten.
const BLOCKED_ADDRESSES: usize = 10_000;

/// How long a verification waits for its turn before the caller is told to come back.
const BCRYPT_QUEUE_WAIT: Duration = Duration::from_secs(2);

impl BcryptGate {
    pub fn new(settings: &AuthSettings) -> BcryptGate {
        let per_minute =
            NonZeroU32::new(settings.bcrypt_failures_per_minute).unwrap_or(NonZeroU32::MIN);
        BcryptGate {
            permits: Semaphore::new(settings.bcrypt_concurrency.max(1)),
            failures: RateLimiter::keyed(Quota::per_minute(per_minute)),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    fn is_blocked(&self, address: IpAddr) -> bool {
        let Ok(blocked) = self.blocked.lock() else {
            return false;
        };
        blocked
            .get(&address)
            .is_some_and(|until| *until > Instant::now())
    }

    /// Counts a failure against the address; out of failures, it is blocked until one refills.
    fn note_failure(&self, address: IpAddr) {
        let Err(not_until) = self.failures.check_key(&address) else {
            return;
        };
        let until = Instant::now() + not_until.wait_time_from(DefaultClock::default().now());
        if let Ok(mut blocked) = self.blocked.lock() {
            if blocked.len() >= BLOCKED_ADDRESSES {
                let now = Instant::now();
                blocked.retain(|_, until| *until > now);
            }
            blocked.insert(address, until);
        }
    }

    /// Verifies a bcrypt token on the blocking pool, if the address may have one checked now.
    pub async fn verify(
        &self,
        keyring: &Arc<Keyring>,
        token: &str,
        address: Option<IpAddr>,
    ) -> Result<Option<Principal>, Error> {
        let throttled = || {
            Error::new(
                ErrorCode::TooManyRequests,
                "too many bcrypt-hashed keys failed from this address; try again in a minute",
            )
        };
        let address = address.unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
        if self.is_blocked(address) {
            return Err(throttled());
        }
        let _permit = tokio::time::timeout(BCRYPT_QUEUE_WAIT, self.permits.acquire())
            .await
            .map_err(|_| throttled())?
            .map_err(|_| Error::internal("bcrypt gate closed"))?;
        let keyring = keyring.clone();
        let token = token.to_string();
        let found = tokio::task::spawn_blocking(move || keyring.verify_bcrypt(&token))
            .await
            .map_err(|e| Error::internal(format!("bcrypt verification failed: {e}")))?;
        if found.is_none() {
            self.note_failure(address);
        }
        Ok(found)
    }
}
