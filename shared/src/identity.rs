//! A user's public identity key for end-to-end encrypted private messages: its wire form (base64) and its fingerprint.

use base64::Engine;
use sha2::Digest;

/// An X25519 public key (32 bytes), as `/key set` carries it and `KEY`
/// lines show it: standard base64 with padding (44 characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityKey(pub [u8; 32]);

impl IdentityKey {
    /// The key written in base64, if it is exactly 32 bytes of it.
    pub fn parse(b64: &str) -> Option<IdentityKey> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        Some(IdentityKey(bytes.try_into().ok()?))
    }

    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// The first 16 bytes of the key's SHA-256, in hex, as eight groups of
    /// four joined by `:`: short enough to read out over the phone.
    pub fn fingerprint(&self) -> String {
        let digest = sha2::Sha256::digest(self.0);
        digest[..16]
            .chunks(2)
            .map(|pair| format!("{:02x}{:02x}", pair[0], pair[1]))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Whether `typed` is this key's [`fingerprint`](Self::fingerprint),
    /// with or without its colons, in either case (as a user types what a
    /// peer read out).
    pub fn has_fingerprint(&self, typed: &str) -> bool {
        let digits = |s: &str| -> String {
            s.chars()
                .filter(|c| *c != ':')
                .map(|c| c.to_ascii_lowercase())
                .collect()
        };
        digits(typed) == digits(&self.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_32_bytes_of_base64() {
        let k = IdentityKey([7; 32]);
        assert_eq!(IdentityKey::parse(&k.to_base64()), Some(k));
        assert_eq!(k.to_base64().len(), 44);
        for bad in [
            "",
            "not base64!",
            &base64::engine::general_purpose::STANDARD.encode([1u8; 31]),
            &base64::engine::general_purpose::STANDARD.encode([1u8; 33]),
            &k.to_base64()[..43],
        ] {
            assert_eq!(IdentityKey::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn fingerprint_is_the_start_of_sha256_in_groups() {
        // SHA-256 of 32 zero bytes starts 66687aadf862bd776c8fc18b8e9f8e20.
        assert_eq!(
            IdentityKey([0; 32]).fingerprint(),
            "6668:7aad:f862:bd77:6c8f:c18b:8e9f:8e20"
        );
        let k = IdentityKey([0; 32]);
        for typed in [
            "6668:7aad:f862:bd77:6c8f:c18b:8e9f:8e20",
            "66687AADF862BD776C8FC18B8E9F8E20",
        ] {
            assert!(k.has_fingerprint(typed), "{typed}");
        }
        for typed in ["", "6668:7aad", "7668:7aad:f862:bd77:6c8f:c18b:8e9f:8e20"] {
            assert!(!k.has_fingerprint(typed), "{typed}");
        }
    }
}
