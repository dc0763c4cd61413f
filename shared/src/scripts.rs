//! The Redis Functions library of shared/lua/ and the calls into it.
//!
//! One library, `chat`, holds every script: Redis Functions (Redis 7)
//! rather than EVALSHA, because a library loads once for every service,
//! its functions share helpers without pasting a prelude in front of each
//! script, each operation is called by its name, and Redis keeps the
//! library in its snapshots and AOF. It is loaded when a service connects
//! ([`crate::store::commands`]) and again when a call finds it missing
//! (Redis restarted without its data): [`Call::invoke`] loads and retries
//! once, and callers that pipeline use [`is_missing`] and [`load`].

use crate::store::Conn;
use redis::{Cmd, FromRedisValue, RedisResult, ToRedisArgs};

/// The library's source: its files, in order (the first names the library).
pub const LIBRARY: &str = concat!(
    include_str!("../lua/common.lua"),
    include_str!("../lua/resume.lua"),
    include_str!("../lua/router.lua"),
    include_str!("../lua/cluster.lua"),
    include_str!("../lua/auth.lua"),
    include_str!("../lua/edges.lua"),
);

/// Loads (or replaces) the library.
pub async fn load(conn: &mut Conn) -> RedisResult<()> {
    redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(LIBRARY)
        .query_async::<String>(conn)
        .await
        .map(drop)
}

/// Whether an error says the library is not loaded.
pub fn is_missing(e: &redis::RedisError) -> bool {
    e.to_string().contains("Function not found")
}

/// One call of a library function: `FCALL <name> <keys…> <args…>`.
pub struct Call(Cmd);

impl Call {
    /// A call of `name` with every key it touches.
    pub fn new<K: AsRef<str>>(name: &str, keys: &[K]) -> Call {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(name).arg(keys.len());
        for k in keys {
            cmd.arg(k.as_ref());
        }
        Call(cmd)
    }

    /// Adds the next argument.
    pub fn arg(mut self, a: impl ToRedisArgs) -> Call {
        self.0.arg(a);
        self
    }

    /// The command, to put in a pipeline.
    pub fn cmd(&self) -> &Cmd {
        &self.0
    }

    /// The command, without a copy.
    pub fn into_cmd(self) -> Cmd {
        self.0
    }

    /// Runs the call, loading the library first if Redis lost it.
    pub async fn invoke<T: FromRedisValue>(&self, conn: &mut Conn) -> RedisResult<T> {
        match self.0.query_async(conn).await {
            Err(e) if is_missing(&e) => {
                load(conn).await?;
                self.0.query_async(conn).await
            }
            done => done,
        }
    }
}

/// Runs a pipeline of calls, loading the library first if Redis lost it
/// (then nothing in the pipeline ran).
pub async fn query_pipe<T: FromRedisValue>(
    conn: &mut Conn,
    pipe: &redis::Pipeline,
) -> RedisResult<T> {
    match pipe.query_async(conn).await {
        Err(e) if is_missing(&e) => {
            load(conn).await?;
            pipe.query_async(conn).await
        }
        done => done,
    }
}
