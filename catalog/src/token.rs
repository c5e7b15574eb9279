//! Bearer tokens: random secrets shown once, stored as SHA-256.
//!
//! Tokens carry 256 bits of randomness, so a fast hash is enough: there is
//! nothing to brute-force that a slow password hash would protect.

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::store::TokenHash;

/// Prefix of every token, so leaked tokens are easy to recognise and scan for.
pub const PREFIX: &str = "gdx_";

/// A new random token secret.
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The stored form of a token secret.
pub fn hash(secret: &str) -> TokenHash {
    Sha256::digest(secret.as_bytes()).into()
}

/// A short random identifier with a prefix, e.g. `tok_3f9a1c2b7d0e`.
pub fn new_id(prefix: &str) -> String {
    let bytes: [u8; 6] = rand::random();
    format!("{prefix}{}", hex::encode(bytes))
}
