//! `chat-certs`: makes the development CA, server certificate and seal key pair that are missing, and never overwrites a file.

use std::path::{Path, PathBuf};
use std::process::Output;

fn chat_certs(dir: &Path) -> Output {
    std::process::Command::new(e2e::binary("chat-certs"))
        .arg(dir)
        .output()
        .unwrap()
}

/// A fresh directory of this test's own.
fn fresh(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "chat-e2e-certs-{name}-{}-{}",
        std::process::id(),
        e2e::free_port()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn read(dir: &Path, f: &str) -> Vec<u8> {
    std::fs::read(dir.join(f)).unwrap()
}

#[test]
fn an_operators_certificate_is_kept_and_what_is_missing_is_made() {
    // A certificate of the operator's own (a public CA's: no ca.pem).
    let dir = fresh("own");
    let own = shared::tls::DevCerts::generate(&["chat.example"]).unwrap();
    std::fs::write(dir.join("server.pem"), &own.server_pem).unwrap();
    std::fs::write(dir.join("server-key.pem"), &own.server_key_pem).unwrap();
    let made = chat_certs(&dir);
    assert!(made.status.success(), "{made:?}");
    assert_eq!(read(&dir, "server.pem"), own.server_pem.as_bytes());
    assert_eq!(read(&dir, "server-key.pem"), own.server_key_pem.as_bytes());
    assert!(!dir.join("ca.pem").exists(), "no CA made beside it");
    let (key, public) = (read(&dir, "auth-seal.key"), read(&dir, "auth-seal.pub"));

    // The public seal key lost: made again from the private one.
    std::fs::remove_file(dir.join("auth-seal.pub")).unwrap();
    assert!(chat_certs(&dir).status.success());
    assert_eq!(read(&dir, "auth-seal.pub"), public);
    assert_eq!(read(&dir, "auth-seal.key"), key);

    // The private one lost: refused, nothing changed.
    std::fs::remove_file(dir.join("auth-seal.key")).unwrap();
    let refused = chat_certs(&dir);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("auth-seal.pub"), "{said}");
    assert_eq!(read(&dir, "auth-seal.pub"), public);
    assert!(!dir.join("auth-seal.key").exists());

    // Half a server pair: refused, nothing changed.
    std::fs::remove_file(dir.join("server-key.pem")).unwrap();
    assert!(!chat_certs(&dir).status.success());
    assert_eq!(read(&dir, "server.pem"), own.server_pem.as_bytes());
    assert!(!dir.join("server-key.pem").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_empty_directory_gets_a_development_ca_and_it_is_kept() {
    let dir = fresh("dev");
    assert!(chat_certs(&dir).status.success());
    let files = ["ca.pem", "ca-key.pem", "server.pem", "server-key.pem"];
    let first: Vec<Vec<u8>> = files.iter().map(|f| read(&dir, f)).collect();
    assert!(chat_certs(&dir).status.success(), "a second run");
    let second: Vec<Vec<u8>> = files.iter().map(|f| read(&dir, f)).collect();
    assert_eq!(first, second, "nothing made again");
    // The server pair removed but the CA left: refused rather than a new
    // CA over the old one.
    std::fs::remove_file(dir.join("server.pem")).unwrap();
    std::fs::remove_file(dir.join("server-key.pem")).unwrap();
    assert!(!chat_certs(&dir).status.success());
    assert_eq!(read(&dir, "ca.pem"), first[0]);
    std::fs::remove_dir_all(&dir).unwrap();
}
