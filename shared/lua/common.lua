#!lua name=chat
-- The chat's Redis Functions library: shared helpers (this file), then the
-- functions of sessions, the router, auth and edge liveness (the other
-- files of shared/lua/, loaded as one library by shared/src/scripts.rs).
--
-- Conventions: every key a function touches comes in KEYS, made by
-- shared::keys::Keys in Rust; channels come in ARGV. Each function names
-- its KEYS and ARGV once, at its top. Lines for clients are tables tagged
-- `k` (shared::line::ServerLine in JSON); the edges write the wire form.

-- Redis's clock in Unix milliseconds.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Whether stream id a (`<ms>-<seq>`) comes after b.
local function id_after(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end

-- A stream entry's flat field list as a table.
local function fields(flat)
  local f = {}
  for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  return f
end

-- Publishes a JSON shared::envelope::Reply on an edge's channel (all but
-- the first two arguments may be nil).
local function reply(channel, conn, rid, lines, effect, sid)
  local r = {conn = conn}
  if rid then r.rid = rid end
  if lines then r.lines = lines end
  if effect then r.effect = effect end
  if sid then r.sid = sid end
  redis.call('PUBLISH', channel, cjson.encode(r))
end

-- `ERR <code> <text>` as a line.
local function err(code, text)
  return {k = 'err', code = code, text = text}
end

-- Where membership notices go: two ARGV from `i` (shared::config::Notices
-- `args`: the room that gets none, '' if none; the most members a room may
-- have to get them, 0: no limit) and the room sizes key.
local function notices(args, i, sizes)
  return {quiet = args[i], max = tonumber(args[i + 1]), sizes = sizes}
end

-- Publishes a broadcast line (`payload`, a JSON ServerLine) to every edge
-- with a member in the room: on each one's line channel (`lines`, the
-- channel name of an edge without its id), the edges read from the room's
-- count of members per edge (`edges`, see `enter_room`).
local function to_room(edges, lines, payload)
  for _, edge in ipairs(redis.call('HKEYS', edges)) do
    redis.call('PUBLISH', lines .. edge, payload)
  end
end

-- Publishes `SYS <room> <user> <what>` to the room's edges (`r`, see
-- `enter_room`; `lines` as `to_room`), unless `n` (see `notices`) keeps
-- the room quiet: the lobby, or a room with more members than the limit
-- once the change is made (those who would see it).
local function sys(n, r, lines, room, user, what)
  if room == n.quiet then return end
  if n.max > 0 and tonumber(redis.call('HGET', n.sizes, room) or 0) > n.max then return end
  to_room(r.edges, lines, cjson.encode({k = 'sys', room = room, user = user, what = what}))
end

-- Room membership. `r` names a room's keys: `members` (its set), `edges`
-- (its count of members per edge: the edges its lines go to), `rooms`
-- (the set of non-empty rooms) and `sizes` (the hash of member counts).
-- `edge` is the edge of the user's session: a member stays on one edge,
-- since a session never moves and a new one leaves the old one's room.
local function enter_room(r, room, user, edge)
  if redis.call('SADD', r.members, user) == 1 then
    redis.call('HINCRBY', r.sizes, room, 1)
    redis.call('HINCRBY', r.edges, edge, 1)
  end
  redis.call('SADD', r.rooms, room)
end

local function leave_room(r, room, user, edge)
  if redis.call('SREM', r.members, user) == 1 then
    if redis.call('HINCRBY', r.edges, edge, -1) <= 0 then redis.call('HDEL', r.edges, edge) end
    if redis.call('HINCRBY', r.sizes, room, -1) <= 0 then
      redis.call('HDEL', r.sizes, room)
      redis.call('SREM', r.rooms, room)
    end
  end
end

-- Whether the session hash still names the edge and room the caller read
-- before it made the keys (a session changed meanwhile: `moved`, and the
-- caller reads again).
local function where(session)
  local s = redis.call('HMGET', session, 'edge', 'conn', 'sid', 'room')
  return {edge = s[1], conn = s[2], sid = s[3], room = s[4]}
end

local function same_place(s, edge, room)
  return (s.edge or '') == edge and (s.room or '') == room
end

-- Ends a session. `k`: its keys (`session`, `edge_sessions` of its edge,
-- `online`, and the room keys of its room as `room`); `s`: the session as
-- `where` read it; `lines`: the edges' line channel without the id; `n`:
-- where notices go (`notices`). Whoever closes the connection publishes
-- that first, so the user does not see its own exit.
local function end_session(k, s, user, lines, n)
  redis.call('SREM', k.edge_sessions, user)
  if s.room then
    leave_room(k.room, s.room, user, s.edge)
    sys(n, k.room, lines, s.room, user, 'left')
  end
  redis.call('SREM', k.online, user)
  redis.call('DEL', k.session)
end
