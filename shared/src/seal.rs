//! Sealed passwords: an edge seals each password to auth-svc's public key
//! (a `crypto_box` sealed box: an ephemeral X25519 key per message and
//! XSalsa20Poly1305) before it enters a Redis stream; only auth-svc, with
//! the private key, opens it. The sealed text is bound to its request and
//! to the time it was sealed.

use crate::envelope::Secret;
use crypto_box::aead::OsRng;
use crypto_box::{PublicKey, SecretKey};
use std::path::Path;

/// Default files of the key pair (`make certs` creates them).
pub const PRIVATE_FILE: &str = "auth-seal.key";
pub const PUBLIC_FILE: &str = "auth-seal.pub";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: not a seal key (one line of 64 hex digits)")]
    BadKey(String),
}

/// What an edge holds: auth-svc's public key.
#[derive(Clone)]
pub struct Sealer(PublicKey);

/// What auth-svc holds: the private key.
pub struct Opener(SecretKey);

/// The request a sealed password belongs to: opened for any other, it is
/// refused (a sealed password copied into another request is worthless).
pub fn binding(edge: &str, conn: u64, rid: u64, user: &str, register: bool) -> String {
    let kind = if register { "register" } else { "login" };
    format!("{edge} {conn} {rid} {user} {kind}")
}

impl Sealer {
    pub fn load(path: &Path) -> Result<Sealer, SealError> {
        Ok(Sealer(PublicKey::from(read_key(path)?)))
    }

    /// `password`, sealed with `binding` (see [`binding`]) and the time,
    /// in hex.
    pub fn seal(&self, binding: &str, password: &str) -> Secret {
        self.seal_at(binding, password, crate::now_ms())
    }

    fn seal_at(&self, binding: &str, password: &str, ms: u64) -> Secret {
        let plain = format!("{binding} {ms}\n{password}");
        let sealed = self
            .0
            .seal(&mut OsRng, plain.as_bytes())
            .expect("sealing to a valid public key works");
        Secret(crate::tls::hex(&sealed))
    }
}

impl Opener {
    pub fn load(path: &Path) -> Result<Opener, SealError> {
        use std::os::unix::fs::PermissionsExt;
        let key = read_key(path)?;
        if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
            tracing::warn!(
                path = %path.display(),
                "the seal key is readable by others than its owner: chmod 600 it"
            );
        }
        Ok(Opener(SecretKey::from(key)))
    }

    /// A fresh private key.
    pub fn generate() -> Opener {
        Opener(SecretKey::generate(&mut OsRng))
    }

    /// What seals to this key.
    pub fn sealer(&self) -> Sealer {
        Sealer(self.0.public_key())
    }

    /// The password in `sealed`, if it opens with this key, was sealed
    /// for `binding` and at most `max_age_ms` from now (either way: clocks
    /// differ); `None` otherwise (tampered, another key, another request,
    /// an old one), with nothing of its content kept.
    pub fn open(&self, binding: &str, sealed: &Secret, max_age_ms: u64) -> Option<String> {
        let bytes = crate::tls::unhex(&sealed.0)?;
        let plain = String::from_utf8(self.0.unseal(&bytes).ok()?).ok()?;
        let (bound, password) = plain.split_once('\n')?;
        let (bound, ms) = bound.rsplit_once(' ')?;
        let ms: u64 = ms.parse().ok()?;
        let fresh = crate::now_ms().abs_diff(ms) <= max_age_ms;
        (bound == binding && fresh).then(|| password.to_string())
    }
}

/// Creates a key pair in `private` (mode 0600) and `public`, each one line
/// of hex; neither file may exist.
pub fn write_pair(private: &Path, public: &Path) -> Result<(), SealError> {
    let secret = Opener::generate().0;
    write_key(private, &secret.to_bytes(), 0o600)?;
    write_key(public, &secret.public_key().to_bytes(), 0o644)
}

/// Writes the public key of the private key in `private` to `public`,
/// which may not exist.
pub fn write_public(private: &Path, public: &Path) -> Result<(), SealError> {
    let secret = Opener::load(private)?.0;
    write_key(public, &secret.public_key().to_bytes(), 0o644)
}

/// Writes `key` as a line of hex to a new file `path` with mode `mode`.
fn write_key(path: &Path, key: &[u8], mode: u32) -> Result<(), SealError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| SealError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    writeln!(f, "{}", crate::tls::hex(key)).map_err(io)
}

fn read_key(path: &Path) -> Result<[u8; 32], SealError> {
    let text = std::fs::read_to_string(path).map_err(|source| SealError::Io {
        path: path.display().to_string(),
        source,
    })?;
    crate::tls::unhex(text.trim())
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| SealError::BadKey(path.display().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Sealer, Opener, tempdir::Dir) {
        let dir = tempdir::Dir::new();
        let (private, public) = (dir.0.join("k"), dir.0.join("k.pub"));
        write_pair(&private, &public).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&private).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        (
            Sealer::load(&public).unwrap(),
            Opener::load(&private).unwrap(),
            dir,
        )
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let n = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos();
                let p = std::env::temp_dir().join(format!("seal-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn opens_only_for_its_request_and_key() {
        let (sealer, opener, _dir) = pair();
        let b = binding("edge-1", 7, 3, "alice", false);
        let sealed = sealer.seal(&b, "pw with space");
        assert!(!sealed.0.contains("pw"));
        let open = |b: &str, s: &Secret| opener.open(b, s, 60_000);
        assert_eq!(open(&b, &sealed).as_deref(), Some("pw with space"));
        // Sealed too long ago (or ahead).
        let now = crate::now_ms();
        for ms in [now - 61_000, now + 61_000] {
            assert_eq!(open(&b, &sealer.seal_at(&b, "pw", ms)), None);
        }
        assert!(open(&b, &sealer.seal_at(&b, "pw", now - 59_000)).is_some());
        // Another request, user or kind: refused.
        for other in [
            binding("edge-1", 7, 4, "alice", false),
            binding("edge-1", 7, 3, "bob", false),
            binding("edge-1", 7, 3, "alice", true),
        ] {
            assert_eq!(open(&other, &sealed), None);
        }
        // Tampered: one hex digit changed.
        let mut bad = sealed.0.clone().into_bytes();
        let last = bad.len() - 1;
        bad[last] = if bad[last] == b'0' { b'1' } else { b'0' };
        let bad = Secret(String::from_utf8(bad).unwrap());
        assert_eq!(open(&b, &bad), None);
        assert_eq!(open(&b, &Secret("not hex".into())), None);
        // Another key pair's.
        let (_, other, _dir2) = pair();
        assert_eq!(other.open(&b, &sealed, 60_000), None);
    }

    #[test]
    fn bad_key_files_are_refused() {
        let dir = tempdir::Dir::new();
        let f = dir.0.join("bad");
        std::fs::write(&f, "abc\n").unwrap();
        assert!(matches!(Opener::load(&f), Err(SealError::BadKey(_))));
        assert!(matches!(
            Sealer::load(&dir.0.join("missing")),
            Err(SealError::Io { .. })
        ));
    }
}
