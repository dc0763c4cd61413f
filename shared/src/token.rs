//! Resume tokens and other random secrets: 256 bits from the OS's CSPRNG, in hex, and their SHA-256 (what Redis keeps).

use crypto_box::aead::rand_core::RngCore;
use crypto_box::aead::OsRng;
use sha2::{Digest, Sha256};

/// `bytes` random bytes from the operating system's CSPRNG, in hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buf);
    crate::tls::hex(&buf)
}

/// A new resume token: 256 random bits, 64 hex digits.
pub fn new_token() -> String {
    random_hex(32)
}

/// The SHA-256 of a token, in hex: all Redis ever holds of it. A token
/// has full entropy, so a plain hash is enough (no salt, no stretching).
pub fn token_hash(token: &str) -> String {
    crate::tls::hex(&Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_256_random_bits_and_hash_to_sha256() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(token_hash(&a), a);
    }
}
