-- router-svc's functions: one per request kind (chat_say, chat_join, ...),
-- and the partition leases.
--
-- Every request function takes KEYS 1-3: the partition's lease, the
-- partition's last applied entry id, the user's session hash; ARGV 1-10:
-- the router's id, the request's entry id, the id of the request before it
-- in the same pipeline of the same partition ('' for the first), the
-- requesting edge's channel, conn, rid, user, sid, and the edge and room
-- of the session as the router read it when it made the keys. Each
-- function's own KEYS and ARGV follow from 4 and 11.
--
-- It returns `ok`, `fenced` (the lease is lost: leave the entry to the new
-- owner), `duplicate` (applied before), `retry` (the request before it was
-- not applied: try again later, in order), `moved` (the session's edge or
-- room changed since it was read: read again and retry) or `stale` (the
-- session is no longer current: nothing to do).

local function request(keys, args)
  return {
    lease = keys[1], applied = keys[2], session = keys[3],
    owner = args[1], eid = args[2], prev = args[3], channel = args[4],
    conn = args[5], rid = args[6], user = args[7], sid = args[8],
    at_edge = args[9], at_room = args[10],
  }
end

-- Whether the request may be applied now (nil), or why not (a status).
-- `q.s` is the session as it is.
local function admit(q)
  if redis.call('GET', q.lease) ~= q.owner then return 'fenced' end
  local last = redis.call('GET', q.applied)
  if last and not id_after(q.eid, last) then return 'duplicate' end
  if q.prev ~= '' and last ~= q.prev then return 'retry' end
  q.s = where(q.session)
  if not same_place(q.s, q.at_edge, q.at_room) then return 'moved' end
  redis.call('SET', q.applied, q.eid)
  return nil
end

-- Registers a request function. `body(q, keys, args)` runs once the
-- request is admitted and, unless `any_session`, acts for the current
-- session only. Replies are published before the notices of the same
-- change, so the edge moves the connection before it sees them.
local function routed(name, body, any_session)
  redis.register_function(name, function(keys, args)
    local q = request(keys, args)
    local status = admit(q)
    if status then return status end
    if not any_session and q.s.sid ~= q.sid then return 'stale' end
    body(q, keys, args)
    return 'ok'
  end)
end

local function answer(q, lines, effect)
  reply(q.channel, q.conn, q.rid, lines, effect)
end

-- Adds an entry to a capped history stream. Its id takes the time the
-- edge received the request (the request's own id); if the stream already
-- has a later one, the next id in that one's ms.
local function add_history(q, key, cap, ...)
  local ms = string.match(q.eid, '^(%d+)-')
  local id = redis.pcall('XADD', key, 'MAXLEN', cap, ms .. '-*', ...)
  if type(id) == 'table' and id.err then
    local top = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
    ms = top and string.match(top[1], '^(%d+)-') or ms
    id = redis.call('XADD', key, 'MAXLEN', cap, ms .. '-*', ...)
  end
  return id
end

-- KEYS 4: the room's history. ARGV 11-13: history cap, room channel, text.
routed('chat_say', function(q, keys, args)
  local cap, channel, text = args[11], args[12], args[13]
  local id = add_history(q, keys[4], cap, 'from', q.user, 'text', text)
  redis.call('PUBLISH', channel,
    cjson.encode({k = 'msg', room = q.s.room, id = id, from = q.user, text = text}))
end)

-- KEYS 4-7: the old room's members, the new room's, the set of rooms, the
-- room sizes. ARGV 11-13: the new room, the old room's channel, the new
-- room's channel.
local function move(q, keys, args, final)
  local to, old_channel, new_channel = args[11], args[12], args[13]
  local room = q.s.room
  if to == room then return answer(q, {final}) end
  leave_room({members = keys[4], rooms = keys[6], sizes = keys[7]}, room, q.user)
  enter_room({members = keys[5], rooms = keys[6], sizes = keys[7]}, to, q.user)
  redis.call('HSET', q.session, 'room', to)
  answer(q, {final}, {kind = 'room', sid = q.sid, room = to})
  sys(old_channel, room, q.user, 'left')
  sys(new_channel, to, q.user, 'joined')
end

routed('chat_join', function(q, keys, args)
  move(q, keys, args, {k = 'ok_join', room = args[11]})
end)

-- As chat_join, with the lobby as the new room.
routed('chat_leave', function(q, keys, args)
  if q.s.room == args[11] then
    return answer(q, {err('not-in-room', 'you are in the lobby')})
  end
  move(q, keys, args, {k = 'ok_leave', room = q.s.room})
end)

-- KEYS 4: the room sizes. ARGV 11: the lobby (listed even when empty).
-- Unsorted: the edge sorts listings.
routed('chat_rooms', function(q, keys, args)
  local flat = redis.call('HGETALL', keys[4])
  local lines, lobby = {}, false
  for i = 1, #flat, 2 do
    lines[#lines + 1] = {k = 'room', room = flat[i], count = tonumber(flat[i + 1])}
    lobby = lobby or flat[i] == args[11]
  end
  if not lobby then lines[#lines + 1] = {k = 'room', room = args[11], count = 0} end
  lines[#lines + 1] = {k = 'ok_rooms', n = #lines}
  answer(q, lines)
end)

-- KEYS 4: the room's members. ARGV 11: the room.
routed('chat_who', function(q, keys, args)
  local names = redis.call('SMEMBERS', keys[4])
  local lines = {}
  for i, n in ipairs(names) do lines[i] = {k = 'user', user = n} end
  lines[#lines + 1] = {k = 'ok_who', room = args[11], n = #names}
  answer(q, lines)
end)

-- KEYS 4-6: the target's account, the user's subscriptions, the target's
-- subscribers. ARGV 11: the target.
routed('chat_subscribe', function(q, keys, args)
  local target = args[11]
  if redis.call('EXISTS', keys[4]) == 0 then
    return answer(q, {err('no-such-user', 'no such user')})
  end
  if redis.call('SADD', keys[5], target) == 1 then redis.call('SADD', keys[6], q.user) end
  answer(q, {{k = 'ok_subscribe', user = target}}, {kind = 'subscribe', sid = q.sid, user = target})
end)

-- As chat_subscribe.
routed('chat_unsubscribe', function(q, keys, args)
  local target = args[11]
  if redis.call('SREM', keys[5], target) == 1 then
    redis.call('SREM', keys[6], q.user)
  elseif redis.call('EXISTS', keys[4]) == 0 then
    return answer(q, {err('no-such-user', 'no such user')})
  end
  answer(q, {{k = 'ok_unsubscribe', user = target}}, {kind = 'unsubscribe', sid = q.sid, user = target})
end)

-- KEYS 4: the user's subscriptions.
routed('chat_subscriptions', function(q, keys)
  local names = redis.call('SMEMBERS', keys[4])
  local lines = {}
  for i, n in ipairs(names) do lines[i] = {k = 'sub', user = n} end
  lines[#lines + 1] = {k = 'ok_subscriptions', n = #names}
  answer(q, lines)
end)

-- KEYS 4-6: the user's publications, its subscribers, the online users.
-- ARGV 11-13: history cap, the user's publication channel, text.
routed('chat_publish', function(q, keys, args)
  local cap, channel, text = args[11], args[12], args[13]
  local id = add_history(q, keys[4], cap, 'text', text)
  redis.call('PUBLISH', channel, cjson.encode({k = 'pub', id = id, from = q.user, text = text}))
  local n = redis.call('SINTERCARD', 2, keys[5], keys[6])
  answer(q, {{k = 'ok_publish', id = id, online = n}})
end)

-- KEYS 4-7: the recipient's account, the conversation, the recipient's
-- session, its inbox. ARGV 11-14: history cap, recipient, text, the
-- channel name of an edge without its id.
routed('chat_msg', function(q, keys, args)
  local cap, to, text, edge_channels = args[11], args[12], args[13], args[14]
  if redis.call('EXISTS', keys[4]) == 0 then
    return answer(q, {err('no-such-user', 'no such user')})
  end
  local id = add_history(q, keys[5], cap, 'from', q.user, 'to', to, 'text', text)
  local r = redis.call('HMGET', keys[6], 'edge', 'conn', 'sid')
  if r[3] then
    reply(edge_channels .. r[1], r[2], nil, {{k = 'dm', id = id, from = q.user, text = text}}, nil, r[3])
    return answer(q, {{k = 'ok_msg', user = to, id = id}})
  end
  redis.call('XADD', keys[7], 'MAXLEN', cap, '*', 'id', id, 'from', q.user, 'text', text)
  answer(q, {{k = 'ok_msg', user = to, id = id, queued = true}})
end)

-- KEYS 4: the stream (the room's history, or the conversation); for a
-- conversation KEYS 5: the other user's account. ARGV 11-13: how many, the
-- label (`<room>` or `@<user>`), `dm` for a conversation.
routed('chat_history', function(q, keys, args)
  local stream, n, label = keys[4], args[11], args[12]
  if args[13] == 'dm' and redis.call('EXISTS', keys[5]) == 0
      and redis.call('EXISTS', stream) == 0 then
    return answer(q, {err('no-such-user', 'no such user')})
  end
  local entries = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', n)
  local lines = {}
  for i = #entries, 1, -1 do
    local f = fields(entries[i][2])
    lines[#lines + 1] = {k = 'hist', of = label, id = entries[i][1], from = f.from or '?', text = f.text or ''}
  end
  lines[#lines + 1] = {k = 'ok_history', n = #entries}
  answer(q, lines)
end)

-- Ends the session `sid`, if it is still the current one. KEYS 4-8: the
-- session's edge's session set, the online users, its room's members, the
-- set of rooms, the room sizes. ARGV 11: its room's channel.
routed('chat_logout', function(q, keys, args)
  if q.rid ~= '0' then
    reply(q.channel, q.conn, q.rid, nil, {kind = 'close', reason = 'quit', sid = q.sid})
  end
  if q.s.sid == q.sid then
    end_session({
      session = q.session, edge_sessions = keys[4], online = keys[5],
      room = {members = keys[6], rooms = keys[7], sizes = keys[8]},
    }, q.s, q.user, args[11])
  end
end, true)

-- The queued private messages up to an id were shown (to whichever
-- session): they go. KEYS 4: the inbox. ARGV 11: the last id shown.
routed('chat_delivered', function(q, keys, args)
  local ms, seq = string.match(args[11], '^(%d+)-(%d+)$')
  if not ms then return end
  -- MINID keeps the ids from the next one on.
  redis.call('XTRIM', keys[4], 'MINID', ms .. '-' .. (tonumber(seq) + 1))
  if redis.call('XLEN', keys[4]) == 0 then redis.call('DEL', keys[4]) end
end, true)

-- Renews a lease this router holds (also when Redis is out of memory, so
-- that partitions do not change hands for that). KEYS 1: the lease. ARGV:
-- router id, ttl.
redis.register_function{
  function_name = 'chat_lease_renew',
  flags = {'allow-oom'},
  callback = function(keys, args)
    if redis.call('GET', keys[1]) == args[1] then
      redis.call('PEXPIRE', keys[1], args[2])
      return 1
    end
    return 0
  end,
}

-- Gives a lease back if this router holds it. KEYS 1: the lease. ARGV:
-- router id.
redis.register_function('chat_lease_release', function(keys, args)
  if redis.call('GET', keys[1]) == args[1] then return redis.call('DEL', keys[1]) end
  return 0
end)
