//! RESUME and resume tokens: a token logs in without the password, once; it is revoked by /quit, a new password and the account's deletion, and expires; wrong ones count as failed logins.

use e2e::{eventually, Client, Role, Shape, System};
use redis::AsyncCommands;
use shared::config::{Config, DuplicateLogin};

/// A system with the accounts of `users`, its configuration changed by
/// `tweak`.
async fn system(users: &[&str], tweak: impl FnOnce(&mut Config)) -> System {
    let sys = System::start_with(Shape::default(), tweak).await;
    sys.add_users(users).await;
    sys
}

/// `user` logged in on edge `edge`, and the resume token it was given.
async fn with_token(sys: &System, edge: usize, user: &str) -> (Client, String) {
    let mut c = sys.login(edge, user).await;
    c.ask("/ping").await;
    let (token, _) = c.token().expect("a TOKEN line follows OK LOGIN");
    (c, token)
}

/// `RESUME <user> <token>` on a new connection to edge `edge`: the
/// connection and the final line of the answer.
async fn resume(sys: &System, edge: usize, user: &str, token: &str) -> (Client, String) {
    let mut c = sys.connect(edge).await;
    let last = c.resume(user, token).await.pop().unwrap();
    (c, last)
}

/// How many times auth-svc has run bcrypt (its /metrics).
async fn bcrypt_runs(sys: &System) -> String {
    let (_, page) = e2e::http_get(sys.admin(Role::Auth, 0), "/metrics").await;
    let runs = page
        .lines()
        .find_map(|l| l.strip_prefix("chat_auth_bcrypt_seconds_count "));
    runs.expect("the bcrypt count in /metrics").to_string()
}

#[tokio::test]
async fn a_token_logs_in_once_without_the_password_and_redis_keeps_only_its_hash() {
    let sys = system(&["alice"], |_| {}).await;
    let mut r = sys.redis.conn().await;
    let (first, token) = with_token(&sys, 0, "alice").await;
    assert_eq!(token.len(), 64, "256 bits in hex: {token}");
    let (_, expires) = first.token().unwrap();
    let now = shared::now_ms();
    let ttl = sys.cfg.auth.resume_ttl_ms;
    assert!(expires > now && expires <= now + ttl, "{expires} vs {now}");

    // Redis has the token's SHA-256, and nowhere the token itself.
    let all = e2e::secrets::dump(&sys.redis).await;
    assert!(!all.contains(&token), "{all}");
    let kept: String = r.hget("chat:resume:alice", "hash").await.unwrap();
    assert_eq!(kept, shared::token::token_hash(&token));
    assert!(r.pttl::<_, i64>("chat:resume:alice").await.unwrap() > 0);

    // The connection breaks; the password changes behind auth-svc's back:
    // only a login that checks no password gets in.
    drop(first);
    sys.session_gone("alice").await;
    let () = r
        .hset("chat:user:alice", "password", "not a bcrypt hash")
        .await
        .unwrap();
    let runs_before = bcrypt_runs(&sys).await;
    let (mut second, answer) = resume(&sys, 1, "alice", &token).await;
    assert_eq!(answer, "OK LOGIN alice lobby");
    assert_eq!(bcrypt_runs(&sys).await, runs_before, "no bcrypt for RESUME");
    assert_eq!(second.ask("/ping").await, "OK PING");
    let (rotated, _) = second.token().expect("RESUME gives a new token");
    assert_ne!(rotated, token);
    let session: String = r.hget("chat:session:alice", "edge").await.unwrap();
    assert_eq!(session, "edge-2");

    // Used once: the old token is refused, and the session goes on.
    let (mut third, answer) = resume(&sys, 0, "alice", &token).await;
    assert!(answer.starts_with("ERR bad-credentials "), "{answer}");
    assert_eq!(third.ask("/ping").await, "OK PING", "the connection stays");
    assert_eq!(second.ask("/ping").await, "OK PING");
    assert!(third.resume("alice", "").await[0].starts_with("ERR bad-args"));
    third.send(&format!("RESUME alice {rotated} more")).await;
    third.expect_prefix("ERR bad-args").await;
    assert!(second.resume("alice", &rotated).await[0].starts_with("ERR already-authenticated"));
}

#[tokio::test]
async fn two_resumes_with_one_token_open_one_session() {
    let sys = system(&["alice"], |_| {}).await;
    let (first, token) = with_token(&sys, 0, "alice").await;
    drop(first);
    sys.session_gone("alice").await;
    let mut a = sys.connect(0).await;
    let mut b = sys.connect(1).await;
    let line = format!("RESUME alice {token}");
    tokio::join!(a.send(&line), b.send(&line));
    let (a, b) = tokio::join!(a.line(), b.line());
    let (won, lost) = if a.starts_with("OK") {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert_eq!(won, "OK LOGIN alice lobby", "{a} / {b}");
    assert!(lost.starts_with("ERR bad-credentials "), "{a} / {b}");
}

#[tokio::test]
async fn a_resume_goes_back_to_the_room_and_follows_the_duplicate_login_policy() {
    let sys = system(&["alice", "bob"], |_| {}).await;
    let mut bob = sys.login(1, "bob").await;
    bob.ask("/join den").await;
    let (mut alice, _) = with_token(&sys, 0, "alice").await;
    assert_eq!(alice.ask("/join den").await, "OK JOIN den");
    let (token, _) = alice.token().unwrap();

    // Force-logout (the default): the old connection is closed.
    let (mut again, answer) = resume(&sys, 1, "alice", &token).await;
    assert_eq!(answer, "OK LOGIN alice lobby");
    assert_eq!(again.line().await, "OK JOIN den", "back in its room");
    alice.expect("BYE logged-in-elsewhere").await;
    assert_eq!(
        again.command("/who").await,
        ["USER alice", "USER bob", "OK WHO den 2"]
    );
    bob.send("still here?").await;
    again.until(|l| l.ends_with(" bob still here?")).await;
    again.send("back").await;
    bob.until(|l| l.ends_with(" alice back")).await;
    again.until(|l| l.ends_with(" alice back")).await;

    // Back in the lobby, the token says so.
    assert_eq!(again.ask("/leave").await, "OK LEAVE den");
    let (token, _) = again.token().unwrap();
    drop(again);
    sys.session_gone("alice").await;
    let (mut lobby, answer) = resume(&sys, 0, "alice", &token).await;
    assert_eq!(answer, "OK LOGIN alice lobby");
    assert_eq!(
        lobby.ask("/ping").await,
        "OK PING",
        "no OK JOIN for the lobby"
    );
}

#[tokio::test]
async fn with_policy_reject_a_resume_is_refused_while_the_session_lives() {
    let sys = system(&["alice"], |c| {
        c.auth.duplicate_login = DuplicateLogin::Reject
    })
    .await;
    let (mut alice, token) = with_token(&sys, 0, "alice").await;
    let (_, answer) = resume(&sys, 1, "alice", &token).await;
    assert!(answer.starts_with("ERR already-logged-in "), "{answer}");
    assert_eq!(alice.ask("/ping").await, "OK PING");
    // Refused, not used: once the session is over, the token still works.
    drop(alice);
    sys.session_gone("alice").await;
    let (_, answer) = resume(&sys, 1, "alice", &token).await;
    assert_eq!(answer, "OK LOGIN alice lobby");
}

#[tokio::test]
async fn quit_a_new_password_and_deletion_revoke_the_token() {
    let sys = system(&["alice", "bob"], |_| {}).await;
    let mut r = sys.redis.conn().await;
    let refused = |answer: String| assert!(answer.starts_with("ERR bad-credentials "), "{answer}");

    // /quit.
    let (mut c, token) = with_token(&sys, 0, "alice").await;
    c.send("/quit").await;
    c.expect("BYE quit").await;
    c.closed().await;
    assert!(!r.exists::<_, bool>("chat:resume:alice").await.unwrap());
    refused(resume(&sys, 1, "alice", &token).await.1);

    // `auth-svc user passwd`.
    let (c, token) = with_token(&sys, 0, "alice").await;
    drop(c);
    sys.session_gone("alice").await;
    let (ok, said) = sys
        .account(&[], &["passwd", "alice"], "a new password")
        .await;
    assert!(ok, "{said}");
    refused(resume(&sys, 1, "alice", &token).await.1);

    // `auth-svc user del`.
    let (c, token) = with_token(&sys, 0, "bob").await;
    drop(c);
    sys.session_gone("bob").await;
    let (ok, said) = sys.account(&[], &["del", "bob"], "").await;
    assert!(ok, "{said}");
    assert!(!r.exists::<_, bool>("chat:resume:bob").await.unwrap());
    refused(resume(&sys, 1, "bob", &token).await.1);
}

#[tokio::test]
async fn a_token_lives_with_its_session_then_expires() {
    let sys = system(&["alice"], |c| c.auth.resume_ttl_ms = 1_000).await;
    let mut r = sys.redis.conn().await;
    let (mut c, token) = with_token(&sys, 0, "alice").await;
    let (_, expires) = c.token().unwrap();
    // Renewed while the session lives: still there well past its first
    // expiry.
    eventually(
        "Redis's clock passes the token's first expiry twice over",
        || async {
            let (secs, micros): (u64, u64) = redis::cmd("TIME")
                .query_async(&mut sys.redis.conn().await)
                .await
                .unwrap();
            secs * 1000 + micros / 1000 > expires + 1_000
        },
    )
    .await;
    assert!(r.exists::<_, bool>("chat:resume:alice").await.unwrap());
    assert_eq!(c.ask("/ping").await, "OK PING");

    // Once the session is over, nothing renews it.
    drop(c);
    sys.session_gone("alice").await;
    eventually("the token expires", || async {
        !r.clone()
            .exists::<_, bool>("chat:resume:alice")
            .await
            .unwrap()
    })
    .await;
    let (_, answer) = resume(&sys, 1, "alice", &token).await;
    assert!(answer.starts_with("ERR bad-credentials "), "{answer}");
}

#[tokio::test]
async fn wrong_tokens_count_as_failed_logins() {
    let sys = system(&["alice"], |c| c.auth.max_failures_per_user = 3).await;
    let (c, token) = with_token(&sys, 0, "alice").await;
    drop(c);
    sys.session_gone("alice").await;
    let mut c = sys.connect(1).await;
    for _ in 0..3 {
        let answer = c.resume("alice", "0123456789abcdef").await.pop().unwrap();
        assert!(answer.starts_with("ERR bad-credentials "), "{answer}");
    }
    // Over the limit: even the right token is refused for now.
    let answer = c.resume("alice", &token).await.pop().unwrap();
    assert!(answer.starts_with("ERR rate-limited "), "{answer}");
    let answer = c.command("LOGIN alice alice-pw").await.pop().unwrap();
    assert!(answer.starts_with("ERR rate-limited "), "{answer}");
}

#[tokio::test]
async fn resume_ttl_0_gives_no_tokens() {
    let sys = system(&["alice"], |c| c.auth.resume_ttl_ms = 0).await;
    let mut r = sys.redis.conn().await;
    let mut c = sys.login(0, "alice").await;
    assert_eq!(c.ask("/ping").await, "OK PING");
    assert_eq!(c.token(), None, "no TOKEN line");
    assert!(!r.exists::<_, bool>("chat:resume:alice").await.unwrap());
    let (_, answer) = resume(&sys, 1, "alice", &"0".repeat(64)).await;
    assert!(answer.starts_with("ERR bad-credentials "), "{answer}");
}
