-- Resume tokens (RESUME, TOKEN): the check-and-rotate and the issue of a
-- user's token, used by chat_login (auth.lua) in the same call as the
-- session switch, so that two RESUMEs with one token open at most one
-- session. Redis holds only the token's SHA-256 (the edge hashes it), in
-- the hash `resume:<user>` (`hash`, `room`: the room its session was last
-- in, kept by chat_join and chat_leave), one per user, with expiry.
--
-- `t` names a call's token part: `key` (the record), `presented` (the hash
-- a RESUME gave; '' for a password login), `next` (the hash of the token
-- the new session gets; '' for none), `ttl` (ms) and `back_room` (the
-- record's room as auth-svc read it before it made the keys).

-- What the record says of a RESUME: nil (not a RESUME), `moved` (the
-- record's room changed since it was read: read again), `good` or `bad`
-- (wrong, used, revoked or expired token).
local function token_check(t)
  if t.presented == '' then return nil end
  local rec = redis.call('HMGET', t.key, 'hash', 'room')
  if rec[1] ~= t.presented then return 'bad' end
  if (rec[2] or '') ~= t.back_room then return 'moved' end
  return 'good'
end

-- Gives the user's new session its token, in `room`: it replaces any
-- token before (the one a RESUME used, or an older session's). Returns
-- its expiry (Unix ms, as a string), or '' when none is given.
local function token_issue(t, room, now)
  redis.call('DEL', t.key)
  if t.next == '' then return '' end
  redis.call('HSET', t.key, 'hash', t.next, 'room', room)
  redis.call('PEXPIRE', t.key, t.ttl)
  return tostring(now + t.ttl)
end
