//! Random identifiers and secrets, and the hashing that lets us store secrets without keeping them.

use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A 32-character alphanumeric id, the shape seed 003's clients know (`xqKQiunYlaKrPhDSfj06tUzSvPiGJJ9G`).
pub fn new_id() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

/// A 32-character alphanumeric id derived from `parts` (SHA-256, read as base 62): the same parts
/// always give the same id, so that a create retried under an idempotency key names the job it made
/// the first time instead of making a second.
pub fn derived_id(parts: &[&str]) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    // Each digit from two of the digest's bytes (about 190 bits in all: collisions are not a worry).
    (0..32)
        .map(|i| {
            let pair = u16::from_be_bytes([digest[i], digest[(i + 16) % 32]]);
            ALPHABET[pair as usize % ALPHABET.len()] as char
        })
        .collect()
}

/// Whether `text` can be an id of a job, run or instance: 1 to 128 of `A-Z a-z 0-9 - _`. What a
/// request names in a path is checked against this before it reaches a key, so an id like `x:runs`
/// finds nothing (404) instead of another record's key.
pub fn is_id(text: &str) -> bool {
    (1..=128).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A fresh 256-bit secret, hex-encoded.
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// The SHA-256 of a secret, hex-encoded: what the store keeps instead of the secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether `presented` hashes to `stored_hash`, compared in constant time.
pub fn secret_matches(presented: &str, stored_hash: &str) -> bool {
    let presented_hash = hash_secret(presented);
    presented_hash
        .as_bytes()
        .ct_eq(stored_hash.as_bytes())
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_ids_stable_and_tell_their_parts_apart() {
        let id = derived_id(&["acme", "key-1"]);
        assert!(is_id(&id) && id.len() == 32, "{id}");
        assert_eq!(id, derived_id(&["acme", "key-1"]));
        assert_ne!(id, derived_id(&["acme", "key-2"]));
        assert_ne!(derived_id(&["ac", "mekey"]), derived_id(&["acme", "key"]));
    }

    #[test]
    fn ids_are_32_alphanumerics_and_distinct() {
        let (a, b) = (new_id(), new_id());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn ids_are_only_of_the_id_alphabet() {
        assert!(is_id(&new_id()));
        assert!(is_id("local-abc-1"));
        assert!(is_id("i-0123456789abcdef0"));
        for bad in [
            "",
            "x:runs",
            "a b",
            "a/b",
            "é",
            &"a".repeat(129),
            "*",
            "job\n",
        ] {
            assert!(!is_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn secrets_match_only_their_hash() {
        let secret = new_secret();
        let stored = hash_secret(&secret);
        assert!(secret_matches(&secret, &stored));
        assert!(!secret_matches("guess", &stored));
        assert!(!secret_matches("", &stored));
    }
}
