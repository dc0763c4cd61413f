//! TLS for edges and clients: server config from PEM files, client config
//! that trusts a CA file or a pinned certificate fingerprint, and the
//! development CA behind `make certs`.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Pem {
        path: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{0}: no certificate found")]
    NoCertificate(String),
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("pin must be 64 hex digits (colons allowed)")]
    BadPin,
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn pem_err(path: &Path) -> impl FnOnce(rustls::pki_types::pem::Error) -> TlsError + '_ {
    move |source| TlsError::Pem {
        path: path.display().to_string(),
        source,
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_err(path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err(path))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.display().to_string()));
    }
    Ok(certs)
}

/// Server config from a PEM certificate chain and a PEM private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(pem_err(key))?;
    server_config_from(certs, key)
}

/// Server config from PEM text (tests).
pub fn server_config_pem(cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let path = Path::new("<memory>");
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err(path))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(pem_err(path))?;
    server_config_from(certs, key)
}

fn server_config_from(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(cfg))
}

/// How a client decides to trust the server.
#[derive(Debug, Clone)]
pub enum Trust {
    /// CA certificates in PEM.
    CaPem(String),
    /// SHA-256 of the server's certificate (DER).
    Pin([u8; 32]),
}

impl Trust {
    pub fn ca_file(path: &Path) -> Result<Trust, TlsError> {
        Ok(Trust::CaPem(std::fs::read_to_string(path).map_err(
            |e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())),
        )?))
    }
}

/// Client config for [`Trust`].
pub fn client_config(trust: &Trust) -> Result<Arc<ClientConfig>, TlsError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let cfg = match trust {
        Trust::CaPem(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(cert.map_err(pem_err(Path::new("CA")))?)?;
            }
            if roots.is_empty() {
                return Err(TlsError::NoCertificate("CA".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Pin(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier {
                pin: *pin,
                provider: provider(),
            }))
            .with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

/// Client config for a `rediss://` Redis (for a connection the redis crate
/// does not make itself: the edge's metered Pub/Sub): trusting `ca_file`
/// (empty: the system's roots), showing `client_cert` and `client_key`
/// when set. The redis crate builds the same from the same files.
pub fn redis_client_config(
    ca_file: &Path,
    client_cert: &Path,
    client_key: &Path,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    if ca_file.as_os_str().is_empty() {
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    } else {
        for cert in load_certs(ca_file)? {
            roots.add(cert)?;
        }
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let cfg = if client_cert.as_os_str().is_empty() {
        builder.with_no_client_auth()
    } else {
        let key = PrivateKeyDer::from_pem_file(client_key).map_err(pem_err(client_key))?;
        builder.with_client_auth_cert(load_certs(client_cert)?, key)?
    };
    Ok(Arc::new(cfg))
}

/// The server name to check for `host` (a DNS name or an IP address).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_string())
        .map_err(|_| TlsError::Rustls(rustls::Error::General(format!("bad server name {host}"))))
}

/// SHA-256 of a DER certificate, as lower-case hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex(::ring::digest::digest(&::ring::digest::SHA256, der).as_ref())
}

/// SHA-256 fingerprint of the first certificate in a PEM file.
pub fn fingerprint_of_pem_file(path: &Path) -> Result<String, TlsError> {
    Ok(fingerprint(&load_certs(path)?[0]))
}

/// Parses a pin: 64 hex digits, optionally separated by colons.
pub fn parse_pin(s: &str) -> Result<[u8; 32], TlsError> {
    let digits: String = s.chars().filter(|c| *c != ':').collect();
    unhex(&digits)
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or(TlsError::BadPin)
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of hex text (either case); `None` if it is not hex.
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Trusts exactly one certificate, by its SHA-256; handshake signatures are
/// still verified.
#[derive(Debug)]
struct PinVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = ::ring::digest::digest(&::ring::digest::SHA256, end_entity.as_ref());
        if got.as_ref() == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A development CA and a server certificate it signed, in PEM; and a
/// client certificate it signed (for a Redis that asks the services for
/// one; `make certs` does not write it).
pub struct DevCerts {
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub server_pem: String,
    pub server_key_pem: String,
    pub client_pem: String,
    pub client_key_pem: String,
}

/// Names the development server certificate is valid for.
pub const DEV_SANS: &[&str] = &[
    "localhost",
    "127.0.0.1",
    "::1",
    "edge-1",
    "edge-2",
    "edge",
    "edge-svc",
];

impl DevCerts {
    /// A fresh CA (valid 10 years) and a server certificate for `sans`.
    pub fn generate(sans: &[&str]) -> Result<DevCerts, TlsError> {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "chat development CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let ca_key = KeyPair::generate()?;
        let ca_key_pem = ca_key.serialize_pem();
        let issuer = CertifiedIssuer::self_signed(ca, ca_key)?;

        // A certificate for `names`, as `name`, for `usage`: (cert, key).
        let leaf = |names: Vec<String>, name: &str, usage| -> Result<_, TlsError> {
            let mut params = CertificateParams::new(names)?;
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            params.not_after = rcgen::date_time_ymd(2035, 1, 1);
            let key = KeyPair::generate()?;
            Ok((params.signed_by(&key, &issuer)?.pem(), key.serialize_pem()))
        };
        let names: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let (server_pem, server_key_pem) =
            leaf(names, "chat edge", ExtendedKeyUsagePurpose::ServerAuth)?;
        let (client_pem, client_key_pem) = leaf(
            Vec::new(),
            "chat services",
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        Ok(DevCerts {
            ca_pem: issuer.pem(),
            ca_key_pem,
            server_pem,
            server_key_pem,
            client_pem,
            client_key_pem,
        })
    }

    /// Writes `ca.pem`, `ca-key.pem`, `server.pem`, `server-key.pem` into
    /// `dir` (keys readable by the owner only); none of them may exist.
    pub fn write_to(&self, dir: &Path) -> Result<(), TlsError> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(dir)?;
        for (name, text, mode) in [
            ("ca.pem", &self.ca_pem, 0o644),
            ("ca-key.pem", &self.ca_key_pem, 0o600),
            ("server.pem", &self.server_pem, 0o644),
            ("server-key.pem", &self.server_key_pem, 0o600),
        ] {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(dir.join(name))?;
            f.write_all(text.as_bytes())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_with_or_without_colons() {
        let hex64 = "ab".repeat(32);
        assert_eq!(parse_pin(&hex64).unwrap(), [0xab; 32]);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_pin(&colons).unwrap(), [0xab; 32]);
        assert!(parse_pin("abc").is_err());
        assert!(parse_pin(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn generated_certs_load() {
        let c = DevCerts::generate(&["localhost"]).unwrap();
        server_config_pem(&c.server_pem, &c.server_key_pem).unwrap();
        client_config(&Trust::CaPem(c.ca_pem.clone())).unwrap();
        let der = CertificateDer::from_pem_slice(c.server_pem.as_bytes()).unwrap();
        assert_eq!(fingerprint(&der).len(), 64);
    }
}
