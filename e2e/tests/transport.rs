//! TLS only, certificate trust, line limits and encodings.

use e2e::{Client, System};
use shared::line::ServerLine;
use shared::tls::{DevCerts, Trust};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn plaintext_gets_tls_required_and_is_closed() {
    let sys = System::start().await;
    let mut tcp = tokio::net::TcpStream::connect(sys.edge(0)).await.unwrap();
    tcp.write_all(b"LOGIN alice alice-pw\n").await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(e2e::WAIT, tcp.read_to_end(&mut got))
        .await
        .expect("closed in time")
        .unwrap();
    assert_eq!(got, b"ERR tls-required this port speaks TLS only\n");
}

#[tokio::test]
async fn another_ca_fails_the_handshake_and_a_pin_works() {
    let sys = System::start().await;
    let other = DevCerts::generate(&["localhost"]).unwrap();
    let err = Client::connect(sys.edge(0), &Trust::CaPem(other.ca_pem))
        .await
        .err()
        .expect("a client that trusts another CA must fail");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    let pem = std::fs::read(sys.certs().join("server.pem")).unwrap();
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(&pem)
        .map(|d: rustls::pki_types::CertificateDer| d.to_vec())
        .unwrap();
    let pin = shared::tls::parse_pin(&shared::tls::fingerprint(&der)).unwrap();
    let mut c = Client::connect(sys.edge(0), &Trust::Pin(pin))
        .await
        .unwrap();
    c.expect_prefix("HELLO edge-1").await;

    let mut wrong = pin;
    wrong[0] ^= 1;
    assert!(Client::connect(sys.edge(0), &Trust::Pin(wrong))
        .await
        .is_err());
}

#[tokio::test]
async fn long_and_bad_lines_are_answered_and_the_session_goes_on() {
    let sys = System::start().await;
    sys.add_user("alice").await;
    let mut c = sys.login(0, "alice").await;

    c.send(&"x".repeat(5000)).await;
    c.expect_prefix("ERR line-too-long").await;
    // Exactly at the limit (4096 with the terminator) is accepted.
    let at_limit = "y".repeat(4095);
    c.send(&at_limit).await;
    let echo = c.msg().await;
    assert!(
        matches!(&echo, ServerLine::Msg { from, text, .. } if from == "alice" && *text == at_limit),
        "{echo}"
    );
    c.send(&"z".repeat(4096)).await;
    c.expect_prefix("ERR line-too-long").await;

    c.send_raw(b"caf\xc3\x28 bad utf-8\n").await;
    c.expect_prefix("ERR bad-encoding").await;
    c.send("").await;
    c.send("/ping").await;
    c.expect("OK PING").await;
    c.send("after all that").await;
    let echo = c.msg().await;
    assert!(
        matches!(&echo, ServerLine::Msg { from, text, .. } if from == "alice" && text == "after all that"),
        "{echo}"
    );
}
