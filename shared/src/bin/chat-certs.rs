//! `chat-certs [DIR]`: creates a development CA and a server certificate in
//! DIR (default `certs`), and auth-svc's seal key pair (`auth-seal.key`,
//! `auth-seal.pub`), unless they exist, and prints the server
//! certificate's SHA-256 fingerprint (for `chat --pin`). It never
//! overwrites a file: an operator's own certificate and key (with or
//! without a `ca.pem`) are left as they are.
#![forbid(unsafe_code)]

use shared::seal;
use shared::tls::{fingerprint_of_pem_file, DevCerts, DEV_SANS};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "certs".into()));
    match make(&dir) {
        Ok(fingerprint) => {
            println!("server certificate SHA-256: {fingerprint}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chat-certs: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Makes what is missing in `dir`; the server certificate's fingerprint.
fn make(dir: &Path) -> Result<String, String> {
    let has = |f: &str| dir.join(f).exists();
    match (has("server.pem"), has("server-key.pem")) {
        (true, true) => {}
        (false, false) => {
            if let Some(f) = ["ca.pem", "ca-key.pem"].into_iter().find(|f| has(f)) {
                return Err(format!(
                    "{f} is in {} without server.pem and server-key.pem: \
                     remove it to make a new development CA, or put your own \
                     server.pem and server-key.pem there",
                    dir.display()
                ));
            }
            DevCerts::generate(DEV_SANS)
                .and_then(|c| c.write_to(dir))
                .map_err(|e| e.to_string())?;
            println!(
                "created a development CA and server certificate in {} for {}",
                dir.display(),
                DEV_SANS.join(", ")
            );
        }
        _ => {
            return Err(format!(
                "{} has one of server.pem and server-key.pem: both are needed \
                 (nothing was changed)",
                dir.display()
            ))
        }
    }
    let (private, public) = (dir.join(seal::PRIVATE_FILE), dir.join(seal::PUBLIC_FILE));
    match (private.exists(), public.exists()) {
        (true, true) => {}
        (false, false) => {
            seal::write_pair(&private, &public).map_err(|e| e.to_string())?;
            println!(
                "created auth-svc's seal key pair: {} (private, mode 0600) and {}",
                private.display(),
                public.display()
            );
        }
        (true, false) => {
            seal::write_public(&private, &public).map_err(|e| e.to_string())?;
            println!(
                "wrote {} again, from {}",
                public.display(),
                private.display()
            );
        }
        (false, true) => {
            return Err(format!(
                "{} is there without {}: that private key is gone, so logins \
                 sealed to it cannot be opened; remove {} to make a new pair \
                 (the edges then need the new one)",
                public.display(),
                private.display(),
                public.display()
            ))
        }
    }
    fingerprint_of_pem_file(&dir.join("server.pem")).map_err(|e| e.to_string())
}
