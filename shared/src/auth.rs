//! Who is calling: maps an `X-Auth-Token` to an account, comparing against every configured key in
//! constant time so that timing reveals nothing about the keys.
//!
//! A token may also be a bcrypt hash of a key, as minion's clients send (`bcrypt(PSK)`); it is verified
//! against each key once and the result cached, since bcrypt is slow on purpose. Only hashes of cost
//! `auth.max_bcrypt_cost` (10) or less are tried: a cost-12 hash costs four times a cost-10 one, and
//! anyone can make one cheaply (hash at cost 4, relabel it). [`Keyring::check`] answers at once from
//! the keys and the cache; [`Keyring::verify_bcrypt`] is the slow part, which the api runs off its
//! request threads, a bounded number at a time.

use std::collections::HashMap;
use std::sync::Mutex;

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use crate::config::AuthSettings;
use crate::ids::hash_secret;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub account: String,
    /// Admin keys may act on every account.
    pub admin: bool,
    /// The key's fingerprint, for the audit log: `key-` and 12 hex digits of its SHA-256 (never
    /// the key; a bcrypt token has its key's fingerprint).
    pub key: String,
}

struct KeyEntry {
    key_hash: [u8; 64],
    /// Kept to verify bcrypt tokens against.
    key: SecretString,
    principal: Principal,
}

/// Verified bcrypt tokens remembered at most (then the cache starts over).
const BCRYPT_CACHE_SIZE: usize = 10_000;

/// What a token is, as far as can be told without bcrypt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Known(Principal),
    Unknown,
    /// A bcrypt hash not seen before, of an allowed cost: [`Keyring::verify_bcrypt`] tells.
    NeedsBcrypt,
}

/// The configured keys.
pub struct Keyring {
    entries: Vec<KeyEntry>,
    max_bcrypt_cost: u32,
    /// SHA-256 of a bcrypt token → who it proved to be (or `None`: it matched no key).
    bcrypt_cache: Mutex<HashMap<[u8; 64], Option<Principal>>>,
}

impl Keyring {
    pub fn from_settings(settings: &AuthSettings) -> Keyring {
        let mut entries = Vec::new();
        for account in &settings.accounts {
            for key in &account.keys {
                entries.push(entry(key.expose_secret(), &account.name, false));
            }
        }
        for key in &settings.admin_keys {
            entries.push(entry(key.expose_secret(), "admin", true));
        }
        Keyring {
            entries,
            max_bcrypt_cost: settings.max_bcrypt_cost,
            bcrypt_cache: Mutex::new(HashMap::new()),
        }
    }

    /// The principal a token belongs to: a key, or a bcrypt hash of one (verified here, on the
    /// calling thread: for tools and tests; the api uses [`Keyring::check`]).
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        match self.check(token) {
            Check::Known(principal) => Some(principal),
            Check::Unknown => None,
            Check::NeedsBcrypt => self.verify_bcrypt(token),
        }
    }

    /// What a token is, without bcrypt: a key, a bcrypt hash seen before, or one to verify.
    pub fn check(&self, token: &str) -> Check {
        if token.is_empty() || token.len() > 1024 {
            return Check::Unknown;
        }
        if let Some(principal) = self.match_key(token) {
            return Check::Known(principal);
        }
        if !is_bcrypt_hash(token) || bcrypt_cost(token).is_none_or(|c| c > self.max_bcrypt_cost) {
            return Check::Unknown;
        }
        match self.cached(token) {
            Some(Some(principal)) => Check::Known(principal),
            Some(None) => Check::Unknown,
            None => Check::NeedsBcrypt,
        }
    }

    /// Every entry is compared, whatever matches first.
    fn match_key(&self, token: &str) -> Option<Principal> {
        let presented = hash_bytes(token);
        let mut found: Option<&Principal> = None;
        for entry in &self.entries {
            let equal: bool = entry.key_hash.ct_eq(&presented).into();
            if equal && found.is_none() {
                found = Some(&entry.principal);
            }
        }
        found.cloned()
    }

    fn cached(&self, token: &str) -> Option<Option<Principal>> {
        let cache = self.bcrypt_cache.lock().ok()?;
        cache.get(&hash_bytes(token)).cloned()
    }

    /// Verifies a bcrypt token against every key (slow on purpose: tens of milliseconds per key at
    /// cost 10) and remembers the answer. Refuses hashes costlier than allowed without trying.
    pub fn verify_bcrypt(&self, token: &str) -> Option<Principal> {
        if let Some(known) = self.cached(token) {
            return known;
        }
        if !is_bcrypt_hash(token) || bcrypt_cost(token).is_none_or(|c| c > self.max_bcrypt_cost) {
            return None;
        }
        let found = self
            .entries
            .iter()
            .find(|entry| bcrypt::verify(entry.key.expose_secret(), token).unwrap_or(false))
            .map(|entry| entry.principal.clone());
        let cache_key = hash_bytes(token);
        if let Ok(mut cache) = self.bcrypt_cache.lock() {
            if cache.len() >= BCRYPT_CACHE_SIZE {
                cache.clear();
            }
            cache.insert(cache_key, found.clone());
        }
        found
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// `$2a$`, `$2b$` or `$2y$` followed by a two-digit cost: the shape of a bcrypt hash.
fn is_bcrypt_hash(token: &str) -> bool {
    let bytes = token.as_bytes();
    bytes.len() == 60
        && (token.starts_with("$2a$") || token.starts_with("$2b$") || token.starts_with("$2y$"))
        && bytes[6] == b'$'
}

/// The cost a bcrypt hash says it has (`$2b$10$...` → 10).
fn bcrypt_cost(token: &str) -> Option<u32> {
    token.get(4..6)?.parse().ok()
}

fn hash_bytes(key: &str) -> [u8; 64] {
    let mut out = [0u8; 64];
    out.copy_from_slice(hash_secret(key).as_bytes());
    out
}

fn entry(key: &str, account: &str, admin: bool) -> KeyEntry {
    KeyEntry {
        key_hash: hash_bytes(key),
        key: SecretString::from(key.to_string()),
        principal: Principal {
            account: account.to_string(),
            admin,
            key: format!("key-{}", &hash_secret(key)[..12]),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn keyring() -> Keyring {
        let settings = Settings::from_toml(
            r#"
            [auth]
            admin_keys = ["root-key"]
            [[auth.accounts]]
            name = "acme"
            keys = ["acme-1", "acme-2"]
            [[auth.accounts]]
            name = "globex"
            keys = ["globex-1"]
            "#,
        )
        .unwrap();
        Keyring::from_settings(&settings.auth)
    }

    #[test]
    fn keys_map_to_their_accounts() {
        let keys = keyring();
        assert_eq!(keys.authenticate("acme-2").unwrap().account, "acme");
        assert_eq!(keys.authenticate("globex-1").unwrap().account, "globex");
        assert!(keys.authenticate("root-key").unwrap().admin);
        assert!(!keys.authenticate("acme-1").unwrap().admin);
    }

    #[test]
    fn a_bcrypt_hash_of_a_key_is_accepted_as_minion_clients_send_it() {
        let keys = keyring();
        let token = bcrypt::hash("globex-1", 4).unwrap();
        assert_eq!(keys.authenticate(&token).unwrap().account, "globex");
        // Cached: the same answer again.
        assert_eq!(keys.authenticate(&token).unwrap().account, "globex");
        let wrong = bcrypt::hash("globex-2", 4).unwrap();
        assert_eq!(keys.authenticate(&wrong), None);
        // Too costly to check: refused without trying (a cost-12 hash made cheaply, relabelled).
        for cost in ["$11$", "$12$", "$31$"] {
            let costly = bcrypt::hash("globex-1", 4)
                .unwrap()
                .replacen("$04$", cost, 1);
            assert_eq!(keys.check(&costly), Check::Unknown, "{cost}");
            assert_eq!(keys.authenticate(&costly), None);
        }
        // A new hash needs bcrypt; once verified, it is known at once.
        let fresh = bcrypt::hash("acme-1", 4).unwrap();
        assert_eq!(keys.check(&fresh), Check::NeedsBcrypt);
        assert_eq!(keys.verify_bcrypt(&fresh).unwrap().account, "acme");
        assert!(matches!(keys.check(&fresh), Check::Known(p) if p.account == "acme"));
    }

    #[test]
    fn unknown_and_empty_keys_are_refused() {
        let keys = keyring();
        assert_eq!(keys.authenticate("acme-3"), None);
        assert_eq!(keys.authenticate(""), None);
        assert_eq!(keys.authenticate("ACME-1"), None);
    }
}
