//! End-to-end encrypted private messages: `chat` clients as processes seal and open them, while Redis and raw clients see only ciphertext; `/key` over the wire.

use e2e::secrets::{dump, keep_everything, places_of, PLACES};
use e2e::{binary, config_dir, eventually, ChatClient, Shape, System};
use redis::AsyncCommands;
use shared::identity::IdentityKey;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Waits until `user`'s client has published its key.
async fn key_published(sys: &System, user: &str) {
    let account = sys.keys().user(user);
    eventually(&format!("{user}'s key is published"), || async {
        let mut r = sys.redis.conn().await;
        r.hexists::<_, _, bool>(&account, "pubkey").await.unwrap()
    })
    .await;
}

/// A `chat` client of `user` on edge 0 with the configuration directory
/// `dir`, logged in, its key published.
async fn chat(sys: &System, user: &str, dir: &Path) -> ChatClient {
    let mut c = ChatClient::start_in(sys, 0, user, dir);
    c.until(|l| l.starts_with("OK LOGIN")).await;
    key_published(sys, user).await;
    c
}

/// Ends a client by the end of its input (it logs out).
async fn close(mut c: ChatClient, sys: &System, user: &str) {
    c.stdin.take();
    c.exits_ok().await;
    sys.session_gone(user).await;
}

#[tokio::test]
async fn private_messages_are_opened_by_the_clients_and_only_ciphertext_reaches_redis() {
    // Redis keeps everything it can: AOF, slow log of every command, plain
    // dumps.
    let sys = System::start_on(Shape::default(), keep_everything(), |_| {}).await;
    sys.add_users(&["alice", "bob", "carol"]).await;
    let (a, b) = (config_dir(), config_dir());
    let mut feed = sys.redis.monitor().await;
    let mut alice = chat(&sys, "alice", &a).await;
    let mut bob = chat(&sys, "bob", &b).await;
    // A raw client sees what the server forwards: the sealed text.
    let mut raw = sys.login(1, "carol").await;

    alice.say("/msg bob swordfish is the word").await;
    alice.until(|l| l.contains("first contact with bob")).await;
    alice.until(|l| l.starts_with("OK MSG bob ")).await;
    let dm = bob.until(|l| l.starts_with("DM ")).await;
    assert!(dm.ends_with(" alice 🔒 swordfish is the word"), "{dm}");
    bob.say("/msg alice marlin received").await;
    let dm = alice.until(|l| l.starts_with("DM ")).await;
    assert!(dm.ends_with(" bob 🔒 marlin received"), "{dm}");

    // A failing command just before a message: its ERR is not taken for
    // the key lookup's, and the message goes.
    alice.say("/subscribe nobody").await;
    alice.say("/msg bob marlin two").await;
    alice.until(|l| l.starts_with("ERR no-such-user")).await;
    let dm = bob.until(|l| l.starts_with("DM ")).await;
    assert!(dm.ends_with(" alice 🔒 marlin two"), "{dm}");
    alice.until(|l| l.starts_with("OK MSG bob ")).await;

    // Offline: queued, then delivered sealed after the login, in order.
    close(bob, &sys, "bob").await;
    for text in ["tuna offline one", "tuna offline two"] {
        alice.say(&format!("/msg bob {text}")).await;
        alice
            .until(|l| l.starts_with("OK MSG bob ") && l.ends_with(" queued"))
            .await;
    }
    // Queued: the inbox holds them sealed.
    let stored = dump(&sys.redis).await;
    let inbox = sys.keys().inbox("bob");
    let queued = stored.lines().find(|l| l.starts_with(&inbox)).unwrap();
    assert_eq!(queued.matches("e2e:").count(), 2, "{queued}");
    assert!(!stored.contains("tuna"), "{stored}");
    let mut bob = ChatClient::start_in(&sys, 0, "bob", &b);
    bob.until(|l| l.starts_with("OK LOGIN")).await;
    for text in ["tuna offline one", "tuna offline two"] {
        let dm = bob.until(|l| l.starts_with("DM ")).await;
        assert!(dm.ends_with(&format!(" alice 🔒 {text}")), "{dm}");
    }

    // Both sides read the whole conversation, their own lines too.
    let want = [
        "alice 🔒 swordfish is the word",
        "bob 🔒 marlin received",
        "alice 🔒 marlin two",
        "alice 🔒 tuna offline one",
        "alice 🔒 tuna offline two",
    ];
    for (client, peer) in [(&mut alice, "bob"), (&mut bob, "alice")] {
        client.say(&format!("/history @{peer}")).await;
        let mut rows = Vec::new();
        loop {
            let l = client.line().await;
            if l.starts_with("OK HISTORY") {
                break;
            }
            if let Some(rest) = l.strip_prefix(&format!("HIST @{peer} ")) {
                rows.push(rest.split_once(' ').unwrap().1.to_string());
            }
        }
        assert_eq!(rows, want, "{peer}'s side");
    }

    // The raw client of a third party: nothing to read.
    alice.say("/msg carol hello carol").await;
    alice
        .until(|l| l.contains("carol has no key: sent in plain text"))
        .await;
    let dm = raw.until(|l| l.starts_with("DM ")).await;
    assert!(dm.ends_with(" alice hello carol"), "{dm}");
    alice.say("/msg bob mackerel for raw eyes").await;
    alice.until(|l| l.starts_with("OK MSG bob ")).await;
    // A text whose ciphertext would not fit a line is refused here.
    alice.say(&format!("/msg bob {}", "x".repeat(3500))).await;
    alice
        .until(|l| l.contains("not sent: too long to encrypt"))
        .await;

    // Nothing in Redis, nor any command it ran (streams, functions,
    // channels), held a plain text between the two: not its AOF, a dump,
    // its slow log, a MONITOR capture or any key's value.
    let ran = feed.ran_before("e2ee-end").await;
    let secrets = ["swordfish", "marlin", "tuna", "mackerel", "xxxxxxxx"];
    let needles: Vec<&str> = secrets
        .iter()
        .copied()
        .chain(["hello carol", "e2e:"])
        .collect();
    let found = places_of(&sys.redis, &ran, &needles).await;
    for secret in secrets {
        assert!(found[secret].is_empty(), "{secret} in {:?}", found[secret]);
    }
    // The sweep finds what is there: the plain one, and the sealed ones.
    for there in ["hello carol", "e2e:"] {
        assert_eq!(
            found[there].len(),
            PLACES.len(),
            "{there}: {:?}",
            found[there]
        );
    }
    let stored = dump(&sys.redis).await;
    let dm_key = sys.keys().dm("alice", "bob");
    assert!(stored.contains(&dm_key));
}

#[tokio::test]
async fn a_tampered_message_is_shown_as_such() {
    let sys = System::start().await;
    sys.add_users(&["alice", "bob"]).await;
    let (a, b) = (config_dir(), config_dir());
    let mut alice = chat(&sys, "alice", &a).await;
    let mut bob = chat(&sys, "bob", &b).await;
    alice.say("/msg bob pay 10 euros").await;
    bob.until(|l| l.ends_with("🔒 pay 10 euros")).await;
    close(alice, &sys, "alice").await;
    // alice's sealed text, one byte of its ciphertext changed, sent raw.
    let mut r = sys.redis.conn().await;
    let rows: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(sys.keys().dm("alice", "bob"))
        .arg("-")
        .arg("+")
        .query_async(&mut r)
        .await
        .unwrap();
    let sealed = rows[0]
        .1
        .iter()
        .find(|(f, _)| f == "text")
        .unwrap()
        .1
        .clone();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut blob = b64.decode(sealed.strip_prefix("e2e:").unwrap()).unwrap();
    *blob.last_mut().unwrap() ^= 0x20;
    let forged = format!("e2e:{}", b64.encode(&blob));
    let mut raw = sys.login(1, "alice").await;
    raw.ask(&format!("/msg bob {forged}")).await;
    let dm = bob.until(|l| l.starts_with("DM ")).await;
    assert!(dm.contains("alice ⚠ undecryptable message"), "{dm}");
    assert!(!dm.contains("euros"));
    // A plain text that only looks sealed fares the same.
    raw.ask("/msg bob e2e:not-even-base64").await;
    let dm = bob.until(|l| l.starts_with("DM ")).await;
    assert!(dm.contains("alice ⚠ undecryptable message"), "{dm}");
}

#[tokio::test]
async fn a_changed_key_is_refused_until_trusted() {
    let sys = System::start().await;
    sys.add_users(&["alice", "bob"]).await;
    let (a, b, b2) = (config_dir(), config_dir(), config_dir());
    let mut alice = chat(&sys, "alice", &a).await;
    let bob = chat(&sys, "bob", &b).await;
    alice.say("/msg bob first").await;
    alice.until(|l| l.starts_with("OK MSG bob ")).await;
    close(bob, &sys, "bob").await;
    // bob again, with a new key (another device, or an impostor).
    let mut bob = chat(&sys, "bob", &b2).await;
    alice.say("/msg bob second").await;
    let warning = alice.until(|l| l.starts_with("*** ")).await;
    assert!(
        warning.contains("KEY HAS CHANGED") && warning.contains("Not sent"),
        "{warning}"
    );
    alice.say("/fingerprint bob").await;
    let fp = alice.until(|l| l.starts_with("*** ")).await;
    assert!(fp.contains("NOT trusted"), "{fp}");
    // The new key's fingerprint, as bob would read it out.
    let mut r = sys.redis.conn().await;
    let new: String = r.hget(sys.keys().user("bob"), "fingerprint").await.unwrap();
    assert!(fp.contains(&new), "{fp} / {new}");
    alice.say(&format!("/trust bob {new}")).await;
    alice
        .until(|l| l.contains("bob's key is trusted now"))
        .await;
    alice.say("/msg bob third").await;
    alice.until(|l| l.starts_with("OK MSG bob ")).await;
    let dm = bob.until(|l| l.starts_with("DM ")).await;
    assert!(dm.ends_with("alice 🔒 third"), "{dm}");
    // "second" was never sent.
    let stored = dump(&sys.redis).await;
    assert_eq!(stored.matches("e2e:").count(), 2, "{stored}");
    // The trust outlives the client: a new one sends without a warning.
    close(alice, &sys, "alice").await;
    let mut alice = chat(&sys, "alice", &a).await;
    alice.say("/msg bob fourth").await;
    let next = alice
        .until(|l| l.starts_with("OK MSG") || l.starts_with("*** "))
        .await;
    assert!(next.starts_with("OK MSG bob "), "{next}");
}

#[tokio::test]
async fn the_key_file_is_private_and_refused_when_it_is_not() {
    let sys = System::start().await;
    sys.add_users(&["alice"]).await;
    let dir = config_dir();
    close(chat(&sys, "alice", &dir).await, &sys, "alice").await;
    let key = dir.join("alice.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // What the server has is the public half only.
    let secret = std::fs::read_to_string(&key).unwrap();
    assert!(!dump(&sys.redis).await.contains(secret.trim()));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = tokio::process::Command::new(binary("chat"))
        .args(["--server", &sys.edge(0).to_string(), "--user", "alice"])
        .arg("--ca")
        .arg(sys.ca())
        .env("CHAT_PASSWORD", "alice-pw")
        .env("XDG_CONFIG_HOME", dir.parent().unwrap())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mode 0644") && err.contains("chmod 600"),
        "{err}"
    );
}

#[tokio::test]
async fn key_set_and_lookup_over_the_wire() {
    let sys = System::start().await;
    sys.add_users(&["alice", "bob"]).await;
    let mut before = sys.connect(0).await;
    assert!(before
        .ask("/key alice")
        .await
        .starts_with("ERR auth-required"));
    let mut alice = sys.login(0, "alice").await;
    let mut bob = sys.login(1, "bob").await;
    let key = IdentityKey([42; 32]);
    let b64 = key.to_base64();
    for bad in [
        "/key".to_string(),
        "/key set".into(),
        "/key set AAAA".into(),
        "/key set not*base64".into(),
        format!("/key set {}", &b64[..40]),
        format!("/key set {b64} extra"),
        "/key alice bob".into(),
    ] {
        let reply = alice.ask(&bad).await;
        assert!(reply.starts_with("ERR bad-args "), "{bad}: {reply}");
    }
    assert!(alice.ask("/key b@d").await.starts_with("ERR bad-name "));
    assert!(alice
        .ask("/key nobody")
        .await
        .starts_with("ERR no-such-user "));
    // No key yet: the final line alone.
    assert_eq!(bob.command("/key alice").await, ["OK KEY alice"]);
    assert_eq!(alice.ask(&format!("/key set {b64}")).await, "OK KEY alice");
    let line = format!("KEY alice {b64} {}", key.fingerprint());
    assert_eq!(
        bob.command("/key alice").await,
        [line.as_str(), "OK KEY alice"]
    );
    assert_eq!(
        alice.command("/key alice").await,
        [line.as_str(), "OK KEY alice"]
    );
    // The session goes on after all that.
    assert_eq!(alice.ask("/ping").await, "OK PING");
    // A new key replaces the old.
    let other = IdentityKey([7; 32]);
    alice.ask(&format!("/key set {}", other.to_base64())).await;
    assert_eq!(
        bob.command("/key alice").await[0],
        format!("KEY alice {} {}", other.to_base64(), other.fingerprint())
    );
    // Deleting the account deletes the key; a live session cannot bring it
    // back.
    let mut r = sys.redis.conn().await;
    auth_svc::accounts::delete(&mut r, &sys.keys(), "alice")
        .await
        .unwrap();
    assert!(bob.ask("/key alice").await.starts_with("ERR no-such-user "));
    assert!(alice
        .ask(&format!("/key set {b64}"))
        .await
        .starts_with("ERR no-such-user "));
    assert!(!r.exists::<_, bool>(sys.keys().user("alice")).await.unwrap());
}
