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

/// The stored form of a client-certificate credential, for `what` the
/// certificate is known by (`sha256:<fingerprint>` or `subject:<CN>`).
///
/// It starts with a NUL byte, which no bearer secret holds (HTTP header
/// values are visible ASCII), so no bearer token can stand in for a
/// certificate.
pub fn certificate_hash(what: &str) -> TokenHash {
    let mut h = Sha256::new();
    h.update(b"\0gdx-client-certificate\0");
    h.update(what.as_bytes());
    h.finalize().into()
}

/// A short random identifier with a prefix, e.g. `tok_3f9a1c2b7d0e`.
pub fn new_id(prefix: &str) -> String {
    let bytes: [u8; 6] = rand::random();
    format!("{prefix}{}", hex::encode(bytes))
}
