//! Account administration (`auth-svc user ...`): accounts are hashes
//! `<prefix>user:<name>` holding a bcrypt hash and a creation time.

use redis::AsyncCommands;
use shared::keys::Keys;
use shared::protocol::is_valid_name;
use shared::scripts::Call;
use shared::store::Conn;

use crate::AuthError;

async fn hash(password: &str, cost: u32) -> Result<String, AuthError> {
    if password.is_empty() {
        return Err(AuthError::EmptyPassword);
    }
    let password = password.to_string();
    Ok(tokio::task::spawn_blocking(move || bcrypt::hash(password, cost)).await??)
}

/// Refuses a password shorter than `min` characters (`auth.min_password`),
/// or longer than bcrypt reads ([`crate::MAX_PASSWORD_BYTES`]: it would
/// silently ignore the rest), for `REGISTER`, `user add` and `user passwd`.
/// An empty one is left to [`hash`], which says so.
pub fn check_password(password: &str, min: usize) -> Result<(), AuthError> {
    if password.len() > crate::MAX_PASSWORD_BYTES {
        return Err(AuthError::LongPassword);
    }
    match password.chars().count() {
        n if n > 0 && n < min => Err(AuthError::ShortPassword(min)),
        _ => Ok(()),
    }
}

fn check_name(user: &str) -> Result<(), AuthError> {
    if is_valid_name(user) {
        Ok(())
    } else {
        Err(AuthError::BadName)
    }
}

/// Creates `user`; `Err(Exists)` when the name is taken.
pub async fn add(
    conn: &mut Conn,
    keys: &Keys,
    user: &str,
    password: &str,
    cost: u32,
) -> Result<(), AuthError> {
    check_name(user)?;
    let hashed = hash(password, cost).await?;
    if store_hash(conn, "chat_create_user", &[keys.user(user)], hashed).await? {
        Ok(())
    } else {
        Err(AuthError::Exists(user.to_string()))
    }
}

/// Calls `function` (create, or replace) with the account and a hash;
/// whether it wrote.
async fn store_hash(
    conn: &mut Conn,
    function: &str,
    keys: &[String],
    hashed: String,
) -> Result<bool, AuthError> {
    let wrote: i64 = Call::new(function, keys).arg(hashed).invoke(conn).await?;
    Ok(wrote == 1)
}

/// Replaces the password of an existing user.
pub async fn set_password(
    conn: &mut Conn,
    keys: &Keys,
    user: &str,
    password: &str,
    cost: u32,
) -> Result<(), AuthError> {
    check_name(user)?;
    if !conn.exists::<_, bool>(keys.user(user)).await? {
        return Err(AuthError::NotFound(user.to_string()));
    }
    let hashed = hash(password, cost).await?;
    // Written only if the account still exists: one deleted meanwhile
    // does not come back as a bare password. Its resume token goes.
    let names = [keys.user(user), keys.resume(user)];
    if store_hash(conn, "chat_set_password", &names, hashed).await? {
        Ok(())
    } else {
        Err(AuthError::NotFound(user.to_string()))
    }
}

/// Deletes the account (a live session goes on until it ends; the user
/// cannot log in again).
pub async fn delete(conn: &mut Conn, keys: &Keys, user: &str) -> Result<(), AuthError> {
    check_name(user)?;
    if keys.on_cluster() {
        return delete_in_steps(conn, keys, user).await;
    }
    // The function names every set it changes: read them, and read again
    // should they change before it runs.
    for _ in 0..5 {
        let publishers: Vec<String> = conn.smembers(keys.subscriptions(user)).await?;
        let subscribers: Vec<String> = conn.smembers(keys.subscribers(user)).await?;
        let mut names = vec![keys.user(user)];
        names.extend(owned(keys, user));
        names.extend(publishers.iter().map(|p| keys.subscribers(p)));
        for s in &subscribers {
            names.push(keys.subscriptions(s));
            names.push(keys.session(s));
        }
        let outcome: redis::Value = Call::new("chat_delete_user", &names)
            .arg(publishers.len())
            .arg(subscribers.len())
            .arg(user)
            .arg(keys.edge_channel(""))
            .arg(&publishers)
            .arg(&subscribers)
            .invoke(conn)
            .await?;
        match outcome {
            redis::Value::Int(1) => return Ok(()),
            redis::Value::Int(_) => return Err(AuthError::NotFound(user.to_string())),
            _ => continue, // `moved`
        }
    }
    Err(AuthError::Unexpected(format!(
        "the subscriptions of {user} kept changing"
    )))
}

/// What a user owns besides its account, in the order `chat_delete_user`
/// takes it (KEYS 2-7).
fn owned(keys: &Keys, user: &str) -> [String; 6] {
    [
        keys.subscriptions(user),
        keys.subscribers(user),
        keys.inbox(user),
        keys.inbox_counts(user),
        keys.publications(user),
        keys.resume(user),
    ]
}

/// [`delete`] on a Redis Cluster, one slot at a time: the account first
/// (no login after it), then the user out of its publishers' subscribers
/// and of its subscribers' subscriptions (each told, if online, as on one
/// Redis), then what it owns. Not atomic: a subscription step of the user
/// running at that very moment can leave its name in one set.
async fn delete_in_steps(conn: &mut Conn, keys: &Keys, user: &str) -> Result<(), AuthError> {
    let deleted: i64 = conn.del(keys.user(user)).await?;
    if deleted == 0 {
        return Err(AuthError::NotFound(user.to_string()));
    }
    let publishers: Vec<String> = conn.smembers(keys.subscriptions(user)).await?;
    for p in &publishers {
        let () = conn.srem(keys.subscribers(p), user).await?;
    }
    let subscribers: Vec<String> = conn.smembers(keys.subscribers(user)).await?;
    for s in &subscribers {
        let () = conn.srem(keys.subscriptions(s), user).await?;
        let (edge, at, sid): (Option<String>, Option<u64>, Option<String>) = redis::cmd("HMGET")
            .arg(keys.session(s))
            .arg("edge")
            .arg("conn")
            .arg("sid")
            .query_async(conn)
            .await?;
        if let (Some(edge), Some(at), Some(sid)) = (edge, at, sid) {
            let effect = shared::envelope::Effect::Unsubscribe {
                sid,
                user: user.to_string(),
                since: None,
            };
            let reply = shared::envelope::Reply::effect(at, effect);
            redis::cmd("SPUBLISH")
                .arg(keys.edge_channel(&edge))
                .arg(shared::steps::json(&reply))
                .query_async::<()>(conn)
                .await?;
        }
    }
    let () = conn.del(&owned(keys, user)).await?;
    Ok(())
}

/// All account names, sorted.
pub async fn list(conn: &mut Conn, keys: &Keys) -> Result<Vec<String>, AuthError> {
    let pattern = format!("{}*", keys.user(""));
    let pattern = pattern.replace("{}", "{*}"); // a cluster's names: `user:{<name>}`
    let mut names: Vec<String> = conn
        .scan(&pattern)
        .await?
        .iter()
        .filter_map(|k| keys.user_of_account(k).map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_shorter_than_the_minimum_are_refused() {
        assert!(matches!(
            check_password("seven77", 8),
            Err(AuthError::ShortPassword(8))
        ));
        assert!(check_password("eight888", 8).is_ok());
        // Counted in characters, not bytes.
        assert!(check_password("ééééééé", 8).is_err());
        assert!(check_password("short", 0).is_ok());
    }

    #[test]
    fn passwords_bcrypt_would_cut_are_refused() {
        assert!(check_password(&"x".repeat(72), 8).is_ok());
        assert!(matches!(
            check_password(&"x".repeat(73), 8),
            Err(AuthError::LongPassword)
        ));
        // Bytes, not characters: 37 two-byte characters are 74 bytes.
        assert!(check_password(&"é".repeat(37), 8).is_err());
    }
}
