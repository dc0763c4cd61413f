//! `chat-certs [DIR]`: creates a development CA and a server certificate in
//! DIR (default `certs`), and auth-svc's seal key pair (`auth-seal.key`,
//! `auth-seal.pub`), unless they exist, and prints the server
//! certificate's SHA-256 fingerprint (for `chat --pin`).
#![forbid(unsafe_code)]

use shared::seal;
use shared::tls::{fingerprint_of_pem_file, DevCerts, DEV_SANS};
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "certs".into()));
    let server = dir.join("server.pem");
    let needed = ["ca.pem", "server.pem", "server-key.pem"];
    if needed.iter().any(|f| !dir.join(f).exists()) {
        match DevCerts::generate(DEV_SANS).and_then(|c| c.write_to(&dir)) {
            Ok(()) => println!(
                "created a development CA and server certificate in {} for {}",
                dir.display(),
                DEV_SANS.join(", ")
            ),
            Err(e) => {
                eprintln!("chat-certs: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let (private, public) = (dir.join(seal::PRIVATE_FILE), dir.join(seal::PUBLIC_FILE));
    if !private.exists() || !public.exists() {
        match seal::write_pair(&private, &public) {
            Ok(()) => println!(
                "created auth-svc's seal key pair: {} (private, mode 0600) and {}",
                private.display(),
                public.display()
            ),
            Err(e) => {
                eprintln!("chat-certs: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    match fingerprint_of_pem_file(&server) {
        Ok(fp) => {
            println!("server certificate SHA-256: {fp}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chat-certs: {e}");
            ExitCode::FAILURE
        }
    }
}
