//! The whole system against a redis-server that speaks TLS only on the
//! port the services are given (`rediss://localhost:<port>`, a CA file),
//! then one that also wants a client certificate and an ACL user with a
//! password; a wrong password, no client certificate, another CA or a
//! missing CA file stops a service at startup, saying why.

use e2e::{RedisOptions, Role, Shape, System};

/// A login, a room message and a private message, end to end.
async fn chat_works(sys: &System) {
    sys.add_users(&["alice", "bob"]).await;
    let mut alice = sys.login(0, "alice").await;
    let mut bob = sys.login(0, "bob").await;
    alice.ask("/join tls").await;
    bob.ask("/join tls").await;
    alice.send("over TLS").await;
    assert!(bob
        .until(|l| l.ends_with(" alice over TLS"))
        .await
        .starts_with("MSG tls "));
    alice.send("/msg bob psst").await;
    alice.until(|l| l.starts_with("OK MSG bob ")).await;
    assert!(bob
        .until(|l| l.starts_with("DM "))
        .await
        .ends_with(" alice psst"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_system_runs_on_a_tls_redis() {
    let tls = RedisOptions {
        tls: true,
        ..RedisOptions::default()
    };
    let sys = System::start_on(Shape::new(1, 1, 1), tls, |_| {}).await;
    assert!(sys.cfg.redis_url.starts_with("rediss://localhost:"));
    chat_works(&sys).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_client_certificates_and_an_acl_user_and_a_wrong_password_fails_at_start() {
    let opts = RedisOptions {
        tls: true,
        client_certs: true,
        acl_user: Some(("chat".into(), "acl-Pw-3e1b".into())),
        ..RedisOptions::default()
    };
    let sys = System::start_on(Shape::new(1, 1, 1), opts, |_| {}).await;
    chat_works(&sys).await;
    // The admin CLI and chat-bench's connections go the same way.
    let (ok, said) = sys.account(&[], &["add", "carol"], "carol-password").await;
    assert!(ok, "{said}");
    let mut bench = sys
        .redis_client()
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let who: String = redis::cmd("ACL")
        .arg("WHOAMI")
        .query_async(&mut bench)
        .await
        .unwrap();
    assert_eq!(who, "chat");
    // The services are connected as that user.
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut sys.redis.conn().await)
        .await
        .unwrap();
    assert!(clients.contains(" user=chat "), "{clients}");

    let wrong = sys.certs().join("wrong-password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let no_cert = [
        ("CHAT_REDIS__CLIENT_CERT", ""),
        ("CHAT_REDIS__CLIENT_KEY", ""),
    ];
    // Another CA than the one that signed Redis's certificate.
    let other_ca = sys.certs().join("other-ca.pem");
    let other = shared::tls::DevCerts::generate(&["localhost"]).unwrap();
    std::fs::write(&other_ca, other.ca_pem).unwrap();
    let missing = sys.certs().join("no-such-ca.pem");
    let cases: [(&str, Vec<(&str, &str)>); 4] = [
        (
            "Password authentication failed",
            vec![("CHAT_REDIS__PASSWORD_FILE", wrong.to_str().unwrap())],
        ),
        ("CertificateRequired", no_cert.to_vec()),
        (
            "invalid peer certificate",
            vec![("CHAT_REDIS__CA_FILE", other_ca.to_str().unwrap())],
        ),
        (
            "no-such-ca.pem",
            vec![("CHAT_REDIS__CA_FILE", missing.to_str().unwrap())],
        ),
    ];
    for (says, env) in cases {
        let out = tokio::time::timeout(
            e2e::WAIT,
            sys.command(Role::Router).envs(env.iter().copied()).output(),
        )
        .await
        .expect("router-svc gives up")
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{env:?}: {err}");
        assert!(
            err.contains("router-svc failed") && err.contains(says),
            "{env:?}: {err}"
        );
    }
}
