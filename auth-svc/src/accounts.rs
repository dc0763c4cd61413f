//! Account administration (`auth-svc user ...`): accounts are hashes
//! `<prefix>user:<name>` holding a bcrypt hash and a creation time.

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use shared::keys::Keys;
use shared::protocol::is_valid_name;

use crate::AuthError;

/// Creates the account unless the name is taken (atomically).
const CREATE_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'password', ARGV[1],
  'created', tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)))
return 1
"#;

/// Deletes the account and what hangs off it: its subscriptions both ways
/// (so that a new account of the same name inherits no subscribers), its
/// queued private messages and its publications. Conversations stay: they
/// belong to the other side too. ARGV: prefix, user.
const DELETE_LUA: &str = r#"
local user = ARGV[2]
if redis.call('DEL', P .. 'user:' .. user) == 0 then return 0 end
if redis.call('EXISTS', P .. 'session:' .. user) == 1 then online(user, -1) end
for _, p in ipairs(redis.call('SMEMBERS', P .. 'subscriptions:' .. user)) do
  redis.call('SREM', P .. 'subscribers:' .. p, user)
end
for _, s in ipairs(redis.call('SMEMBERS', P .. 'subscribers:' .. user)) do
  redis.call('SREM', P .. 'subscriptions:' .. s, user)
  -- An online subscriber's edge stops passing on the channel.
  local sess = redis.call('HMGET', P .. 'session:' .. s, 'edge', 'conn', 'sid')
  if sess[3] then
    reply(sess[1], sess[2], nil, nil, {kind = 'unsubscribe', sid = sess[3], user = user})
  end
end
redis.call('DEL', P .. 'subscriptions:' .. user, P .. 'subscribers:' .. user,
  P .. 'online-subscribers:' .. user, P .. 'inbox:' .. user, P .. 'publications:' .. user)
return 1
"#;

async fn hash(password: &str, cost: u32) -> Result<String, AuthError> {
    if password.is_empty() {
        return Err(AuthError::EmptyPassword);
    }
    let password = password.to_string();
    Ok(tokio::task::spawn_blocking(move || bcrypt::hash(password, cost)).await??)
}

/// Refuses a password shorter than `min` characters (`auth.min_password`,
/// as `REGISTER` does). An empty one is left to [`hash`], which says so.
pub fn check_password(password: &str, min: usize) -> Result<(), AuthError> {
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
    conn: &mut ConnectionManager,
    keys: &Keys,
    user: &str,
    password: &str,
    cost: u32,
) -> Result<(), AuthError> {
    check_name(user)?;
    let hashed = hash(password, cost).await?;
    let created: i64 = Script::new(CREATE_LUA)
        .key(keys.user(user))
        .arg(hashed)
        .invoke_async(conn)
        .await?;
    if created == 1 {
        Ok(())
    } else {
        Err(AuthError::Exists(user.to_string()))
    }
}

/// Replaces the password of an existing user.
pub async fn set_password(
    conn: &mut ConnectionManager,
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
    conn.hset::<_, _, _, ()>(keys.user(user), "password", hashed)
        .await?;
    Ok(())
}

/// Deletes the account (a live session goes on until it ends; the user
/// cannot log in again).
pub async fn delete(
    conn: &mut ConnectionManager,
    keys: &Keys,
    user: &str,
) -> Result<(), AuthError> {
    check_name(user)?;
    let removed: i64 = Script::new(&format!("{}{DELETE_LUA}", shared::store::LUA_PRELUDE))
        .arg(keys.prefix())
        .arg(user)
        .invoke_async(conn)
        .await?;
    if removed == 1 {
        Ok(())
    } else {
        Err(AuthError::NotFound(user.to_string()))
    }
}

/// All account names, sorted.
pub async fn list(conn: &mut ConnectionManager, keys: &Keys) -> Result<Vec<String>, AuthError> {
    let prefix = keys.user("");
    let mut names = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        names.extend(
            batch
                .into_iter()
                .filter_map(|k| k.strip_prefix(&prefix).map(str::to_string)),
        );
        if next == 0 {
            break;
        }
        cursor = next;
    }
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
}
