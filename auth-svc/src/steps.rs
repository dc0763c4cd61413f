//! A login on a Redis Cluster: `chat_c_login` in the user's slot, then the
//! steps it numbers (the old session's end, the new session's edge and
//! room, the directory) and the replies (docs/design.md, "The login").

use crate::login::{publish, Ctx, Switch};
use crate::AuthError;
use serde_json::Value as Json;
use shared::envelope::{Effect, Reply};
use shared::line::ServerLine;
use shared::protocol::{ErrorCode, LOBBY};
use shared::scripts::Call;
use shared::steps::{json, num, stopped, str_of, Sends, Steps};

/// Opens the session `switch` describes; its outcome, as `chat_login`'s
/// (`ok`, `replaced`, `duplicate`, `moved`, `stale`, `exists`, `rejected`,
/// `bad-token`), the refusals answered.
pub(crate) async fn switch(
    ctx: &Ctx,
    steps: &Steps,
    switch: &Switch<'_>,
) -> Result<String, AuthError> {
    let (k, req, user) = (&steps.k, switch.req, switch.req.user.as_str());
    let keys = k.login_step(user, switch.entry_id);
    let t = &switch.token;
    let call = Call::new("chat_c_login", &keys)
        .arg(user)
        .arg(&req.edge)
        .arg(req.conn.to_string())
        .arg(req.rid.to_string())
        .arg(switch.addr)
        .arg(switch.policy)
        .arg(switch.deadline)
        .arg(switch.new_hash)
        .arg(switch.sid)
        .arg(switch.at_edge)
        .arg(switch.at_room)
        .arg(LOBBY)
        .arg(t.next)
        .arg(t.ttl)
        .arg(t.presented)
        .arg(t.back_room);
    let answer: Vec<String> = call.invoke(&mut steps.conn.clone()).await?;
    let refuse = |code, text: String| publish(ctx, req, ServerLine::err(code, text));
    match &answer[..] {
        [s, d] if s == "pending" => {
            // An end of the user's session was left half done: finish it,
            // then read again where the session is.
            steps.finish_end(user, d).await.map_err(stopped)?;
            return Ok("moved".into());
        }
        [s, d] if s == "ok" || s == "replaced" || s == "duplicate" => {
            if s != "duplicate" && switch.new_hash.is_empty() {
                give_back(steps, switch.ip).await?;
            }
            let d: Json = serde_json::from_str(d).unwrap_or_default();
            return carry_out(steps, switch, &d).await.map(|()| s.clone());
        }
        [s] if s == "exists" => {
            refuse(ErrorCode::UserExists, format!("the name {user} is taken")).await?
        }
        [s] if s == "rejected" => {
            let text = format!("{user} is logged in elsewhere");
            refuse(ErrorCode::AlreadyLoggedIn, text).await?
        }
        [s] if s == "bad-token" => {
            let text = "wrong user name or token".to_string();
            refuse(ErrorCode::BadCredentials, text).await?
        }
        _ => {}
    }
    Ok(answer.first().cloned().unwrap_or_default())
}

/// A good login gives the address's count back this attempt (the user's
/// started over in the user step).
async fn give_back(steps: &Steps, ip: &str) -> Result<(), AuthError> {
    let key = steps.k.fail_addr(ip);
    let mut conn = steps.conn.clone();
    let left: i64 = redis::cmd("DECR").arg(&key).query_async(&mut conn).await?;
    if left <= 0 {
        redis::cmd("DEL")
            .arg(&key)
            .query_async::<()>(&mut conn)
            .await?;
    }
    Ok(())
}

/// The steps after the user step's decision `d`, and the replies: the old
/// connection closed first, the old session's room and edge left, the new
/// one's edge and room entered, then `OK LOGIN` and the `SYS joined`.
async fn carry_out(steps: &Steps, switch: &Switch<'_>, d: &Json) -> Result<(), AuthError> {
    let (k, req, user) = (&steps.k, switch.req, switch.req.user.as_str());
    if d["old"].is_object() {
        let old = &d["old"];
        let close = steps.close(&str_of(old, "edge"), old, "logged-in-elsewhere");
        steps.publish(vec![close]).await.map_err(stopped)?;
        steps
            .finish_end(user, &old.to_string())
            .await
            .map_err(stopped)?;
    }
    let new = &d["new"];
    let (room, edge, seq) = (str_of(new, "room"), str_of(new, "edge"), num(new, "seq"));
    let keys = [
        k.edge_sessions(&edge),
        k.edge_marks(&edge),
        k.edge_alive(&edge),
    ];
    let at_edge: Vec<String> = Call::new("chat_c_edge_session", &keys)
        .arg(user)
        .arg(seq)
        .arg(num(new, "prev_edge"))
        .arg("add")
        .invoke(&mut steps.conn.clone())
        .await?;
    let entered = steps
        .room_move(&room, user, seq, num(new, "prev_room"), &edge, true)
        .await
        .map_err(stopped)?;
    steps.sizes(&[(&room, &entered)]).await.map_err(stopped)?;
    if at_edge.first().is_some_and(|s| s == "dead") {
        // The edge died meanwhile: nobody would end this session, so it
        // ends here, as the reaper would, and nothing is answered.
        tracing::info!(%edge, "the login's edge is dead; its session ends");
        steps.end_on(&edge, user).await.map_err(stopped)?;
        return Ok(());
    }
    redis::cmd("SADD")
        .arg(k.online())
        .arg(user)
        .query_async::<()>(&mut steps.conn.clone())
        .await?;
    let text = |f: &str| match &d[f] {
        Json::String(s) => s.clone(),
        Json::Number(n) => n.to_string(),
        _ => String::new(),
    };
    let reply = Reply {
        conn: req.conn,
        rid: req.rid,
        lines: serde_json::from_value(d["lines"].clone()).unwrap_or_default(),
        effect: Some(Effect::Login {
            user: user.into(),
            sid: str_of(d, "sid"),
            room: room.clone(),
            subs: text("subs"),
            inbox: text("inbox"),
            expires: text("expires"),
            v: entered.get(1).and_then(|v| v.parse().ok()),
        }),
        sid: String::new(),
    };
    let mut sends: Sends = vec![(k.edge_channel(&req.edge), json(&reply))];
    steps.notice(&room, user, "joined", &entered, &mut sends);
    steps.publish(sends).await.map_err(stopped)?;
    Ok(())
}
