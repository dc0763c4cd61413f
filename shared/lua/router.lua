-- router-svc's functions: one per request kind (chat_say, chat_join, ...),
-- and the partition leases.
--
-- Every request function takes KEYS 1-3: the partition's lease, the
-- user's last applied entry id, the user's session hash; ARGV 1-10:
-- the router's id, the request's entry id, the id of the same user's
-- request before it in the same pipeline ('' for the first), the
-- requesting edge's channel, conn, rid, user, sid, and the edge and room
-- of the session as the router read it when it made the keys. Each
-- function's own KEYS and ARGV follow from 4 and 11.
--
-- It returns `ok`, `fenced` (the lease is lost: leave the entry to the new
-- owner), `duplicate` (applied before), `retry` (the user's request before
-- it was not applied: try again later, in order), `moved` (the session's edge or
-- room changed since it was read: read again and retry) or `stale` (the
-- session is no longer current: nothing to do). chat_say alone takes a
-- run of requests, each with these KEYS and ARGV, and answers one status
-- per request, space-separated (a run of one: the status alone).

-- (`k` and `a`: where the request's KEYS and ARGV start, less one; 0
-- unless the call holds several, as chat_say's runs do.)
local function request(keys, args, k, a)
  k, a = k or 0, a or 0
  return {
    lease = keys[k + 1], applied = keys[k + 2], session = keys[k + 3],
    owner = args[a + 1], eid = args[a + 2], prev = args[a + 3], channel = args[a + 4],
    conn = args[a + 5], rid = args[a + 6], user = args[a + 7], sid = args[a + 8],
    at_edge = args[a + 9], at_room = args[a + 10],
  }
end

-- Takes request `q.eid` in its user's order (the rules
-- docs/models/routers.pml checks): nil, with the session as it is in
-- `q.s` and the id recorded as the user's last applied, or why not:
-- `duplicate`, `retry` or `moved`. `q` names `applied`, `session`,
-- `prev` and the session's place as read before (`at_edge`, `at_room`).
-- Also the user step on a cluster (cluster.lua). `run`, if given, keeps
-- what a call of several requests that leave sessions as they are (see
-- chat_say) has read or written: each user's last applied id and
-- session.
local function in_order(q, run)
  local last = run and run.applied[q.applied]
  if last == nil then last = redis.call('GET', q.applied) end
  if last and not id_after(q.eid, last) then return 'duplicate' end
  if q.prev ~= '' and last ~= q.prev then return 'retry' end
  q.s = run and run.sessions[q.session] or where(q.session)
  if not same_place(q.s, q.at_edge, q.at_room) then return 'moved' end
  redis.call('SET', q.applied, q.eid)
  if run then run.applied[q.applied], run.sessions[q.session] = q.eid, q.s end
  return nil
end

-- Whether the request may be applied now (nil), or why not (a status).
-- `q.s` is the session as it is. `run` as `in_order`, with each lease's
-- owner as read.
local function admit(q, run)
  local owner = run and run.owners[q.lease]
  if not owner then
    owner = redis.call('GET', q.lease) or ''
    if run then run.owners[q.lease] = owner end
  end
  if owner ~= q.owner then return 'fenced' end
  return in_order(q, run)
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

-- How long history streams live: ARGV 11-12 of the functions that write
-- them (the cap in entries; the time since the last write in ms, 0: no
-- expiry).
local function retention(args, a)
  a = a or 0
  return {cap = args[a + 11], ttl = tonumber(args[a + 12])}
end

-- Keeps a history key `h.ttl` ms from now (see `retention`).
local function keep(key, h)
  if h.ttl > 0 then redis.call('PEXPIRE', key, h.ttl) end
end

-- Adds an entry to a history stream, capped as `h` says. Its id
-- takes the time the edge received the request (the request's own id);
-- if the stream already has a later one, the next id in that one's ms.
-- The cap trims whole nodes (`MAXLEN ~`): an exact cap walks the first
-- node's entries on every add, which was a quarter of Redis's time in the
-- fan-out bench. The stream keeps up to a node (`stream-node-max-entries`)
-- more; `/history` never shows more than the cap (the router asks for no
-- more).
local function append(q, key, h, ...)
  local ms = string.match(q.eid, '^(%d+)-')
  local id = redis.pcall('XADD', key, 'MAXLEN', '~', h.cap, ms .. '-*', ...)
  if type(id) == 'table' and id.err then
    local top = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
    ms = top and string.match(top[1], '^(%d+)-') or ms
    id = redis.call('XADD', key, 'MAXLEN', '~', h.cap, ms .. '-*', ...)
  end
  return id
end

-- `append`, and the stream kept as `h` says.
local function add_history(q, key, h, ...)
  local id = append(q, key, h, ...)
  keep(key, h)
  return id
end

-- One line of a chat_say call, its KEYS from `k` + 1 and ARGV from `a` +
-- 1; `run` keeps what the call's lines share: the leases' owners, each
-- user's last applied id and session (see `in_order`), each room's
-- edges, the histories kept already. KEYS 4-5: the room's history, its
-- members per edge. ARGV 11-14: history cap and ttl, the edges' line
-- channel without the id, text.
local function say(keys, args, k, a, run)
  local q = request(keys, args, k, a)
  local status = admit(q, run)
  if status then return status end
  if q.s.sid ~= q.sid then return 'stale' end
  local history, edges, h = keys[k + 4], keys[k + 5], retention(args, a)
  local lines, text = args[a + 13], args[a + 14]
  local id = append(q, history, h, 'from', q.user, 'text', text)
  if not run.kept[history] then
    keep(history, h)
    run.kept[history] = true
  end
  run.edges[edges] = run.edges[edges] or redis.call('HKEYS', edges)
  local payload = cjson.encode({k = 'msg', room = q.s.room, id = id, from = q.user, text = text})
  for _, edge in ipairs(run.edges[edges]) do
    redis.call('PUBLISH', lines .. edge, payload)
  end
  return 'ok'
end

-- A run of room lines, applied in order: KEYS and ARGV are those of one
-- line (see `say`; 5 keys, 14 arguments) once per line. Returns each
-- line's status, space-separated. A run reads each lease, user's last
-- applied id, session and room's edges once, and sets each history's
-- expiry once (at its first line), where a call per line did all of it
-- for every line: the router sends its batch's consecutive room lines as
-- one call. Each line still records itself as applied: should a later
-- line fail, those before it are not applied again, and their histories
-- are kept.
redis.register_function('chat_say', function(keys, args)
  local run = {owners = {}, applied = {}, sessions = {}, edges = {}, kept = {}}
  local statuses = {}
  for i = 0, #keys / 5 - 1 do
    statuses[i + 1] = say(keys, args, 5 * i, 14 * i, run)
  end
  return table.concat(statuses, ' ')
end)

-- KEYS 4-10: the old room's members, the new room's, the set of rooms,
-- the room sizes, the user's resume token (whose room follows the
-- session's, for a RESUME to go back to), the old room's members per
-- edge, the new room's. ARGV 11-14: the new room, the edges' line channel
-- without the id, the notice settings (two, see `notices`).
local function move(q, keys, args, final)
  local to, lines = args[11], args[12]
  local room, n = q.s.room, notices(args, 13, keys[7])
  if to == room then return answer(q, {final}) end
  local old = {members = keys[4], rooms = keys[6], sizes = keys[7], edges = keys[9]}
  local new = {members = keys[5], rooms = keys[6], sizes = keys[7], edges = keys[10]}
  leave_room(old, room, q.user, q.s.edge)
  enter_room(new, to, q.user, q.s.edge)
  redis.call('HSET', q.session, 'room', to)
  if redis.call('EXISTS', keys[8]) == 1 then redis.call('HSET', keys[8], 'room', to) end
  answer(q, {final}, {kind = 'room', sid = q.sid, room = to})
  sys(n, old, lines, room, q.user, 'left')
  sys(n, new, lines, to, q.user, 'joined')
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

-- Listings are unsorted (the edge sorts them) and hold at most `max`
-- entries: past that, a random sample of `max` (O(max) work, whatever the
-- size), and `MORE <what> <omitted>` before the final line, whose count is
-- that of the lines shown.

-- A set's members, at most `max` of them, and how many were left out.
local function some_members(set, max)
  local total = redis.call('SCARD', set)
  if total <= max then return redis.call('SMEMBERS', set), 0 end
  return redis.call('SRANDMEMBER', set, max), total - max
end

-- `lines`, then `MORE <what> <omitted>` if any was, then `final`.
local function listing(lines, what, omitted, final)
  if omitted > 0 then lines[#lines + 1] = {k = 'more', what = what, n = omitted} end
  lines[#lines + 1] = final
  return lines
end

-- The lines of `/rooms`: a `ROOM` line per room of hash `sizes` (at
-- most `max`, the lobby always, even when empty), then `OK ROOMS`.
local function rooms_listing(sizes, lobby_name, max)
  local total = redis.call('HLEN', sizes)
  local flat = total <= max and redis.call('HGETALL', sizes)
    or redis.call('HRANDFIELD', sizes, max, 'WITHVALUES')
  local lines, lobby = {}, false
  for i = 1, #flat, 2 do
    lines[#lines + 1] = {k = 'room', room = flat[i], count = tonumber(flat[i + 1])}
    lobby = lobby or flat[i] == lobby_name
  end
  local shown = #lines
  if not lobby then
    local count = tonumber(redis.call('HGET', sizes, lobby_name) or 0)
    if count > 0 then shown = shown + 1 end
    lines[#lines + 1] = {k = 'room', room = lobby_name, count = count}
  end
  return listing(lines, 'ROOMS', total - shown, {k = 'ok_rooms', n = #lines})
end

-- KEYS 4: the room sizes. ARGV 11: the lobby, 12: the most rooms listed.
routed('chat_rooms', function(q, keys, args)
  answer(q, rooms_listing(keys[4], args[11], tonumber(args[12])))
end)

-- The lines of `/who <room>`: `USER` lines of set `members` (at most
-- `max`), then `OK WHO`.
local function who_listing(members, room, max)
  local names, omitted = some_members(members, max)
  local lines = {}
  for i, n in ipairs(names) do lines[i] = {k = 'user', user = n} end
  return listing(lines, 'WHO', omitted, {k = 'ok_who', room = room, n = #names})
end

-- KEYS 4: the room's members. ARGV 11: the room, 12: the most listed.
routed('chat_who', function(q, keys, args)
  answer(q, who_listing(keys[4], args[11], tonumber(args[12])))
end)

-- KEYS 4-6: the target's account, the user's subscriptions, the target's
-- subscribers. ARGV 11: the target; for chat_subscribe 12: the most
-- subscriptions a user may have (0: no limit).
routed('chat_subscribe', function(q, keys, args)
  local target, max = args[11], tonumber(args[12])
  if redis.call('EXISTS', keys[4]) == 0 then
    return answer(q, {err('no-such-user', 'no such user')})
  end
  if max > 0 and redis.call('SISMEMBER', keys[5], target) == 0
      and redis.call('SCARD', keys[5]) >= max then
    return answer(q, {err('rate-limited', 'you subscribe to ' .. max .. ' users, the most allowed')})
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

-- The lines of `/subscriptions`: a `SUB` line per member of set `subs`
-- (at most `max`), then `OK SUBSCRIPTIONS`.
local function subscriptions_listing(subs, max)
  local names, omitted = some_members(subs, max)
  local lines = {}
  for i, n in ipairs(names) do lines[i] = {k = 'sub', user = n} end
  return listing(lines, 'SUBSCRIPTIONS', omitted, {k = 'ok_subscriptions', n = #names})
end

-- KEYS 4: the user's subscriptions. ARGV 11: the most listed.
routed('chat_subscriptions', function(q, keys, args)
  answer(q, subscriptions_listing(keys[4], tonumber(args[11])))
end)

-- KEYS 4-7: the user's publications, its subscribers, the online users,
-- the edges. ARGV 11-14: history cap and ttl, the edges' line channel
-- without the id, text. The line goes to every edge (each passes it on to
-- its connections that subscribe to the user): an edge holds no
-- session that is not in the edges' set.
routed('chat_publish', function(q, keys, args)
  local lines, text = args[13], args[14]
  local id = add_history(q, keys[4], retention(args), 'text', text)
  local line = cjson.encode({k = 'pub', id = id, from = q.user, text = text})
  for _, edge in ipairs(redis.call('ZRANGE', keys[7], 0, -1)) do
    redis.call('PUBLISH', lines .. edge, line)
  end
  local n = redis.call('SINTERCARD', 2, keys[5], keys[6])
  answer(q, {{k = 'ok_publish', id = id, online = n}})
end)

-- One message fewer of `sender` queued (the inbox's count of each
-- sender's queued messages, a hash).
local function uncount(counts, sender)
  if redis.call('HINCRBY', counts, sender, -1) <= 0 then redis.call('HDEL', counts, sender) end
end

-- Queues private message `id` for an offline recipient: its inbox (capped
-- and kept as `h` says: the entries the cap is about to drop leave the
-- counts first) and its count per sender.
local function queue_message(inbox, counts, h, id, sender, text)
  local over = redis.call('XLEN', inbox) - tonumber(h.cap) + 1
  if over > 0 then
    for _, e in ipairs(redis.call('XRANGE', inbox, '-', '+', 'COUNT', over)) do
      uncount(counts, fields(e[2]).from or '?')
    end
  end
  redis.call('XADD', inbox, 'MAXLEN', h.cap, '*', 'id', id, 'from', sender, 'text', text)
  redis.call('HINCRBY', counts, sender, 1)
  keep(inbox, h)
  keep(counts, h)
end

-- KEYS 4-8: the recipient's account, the conversation, the recipient's
-- session, its inbox, its inbox's count per sender. ARGV 11-16: history
-- cap and ttl, recipient, text, the channel name of an edge without its
-- id, the most messages one sender may have queued (0: no limit).
routed('chat_msg', function(q, keys, args)
  local h, to, text, edge_channels = retention(args), args[13], args[14], args[15]
  local inbox, counts, per_sender = keys[7], keys[8], tonumber(args[16])
  if redis.call('EXISTS', keys[4]) == 0 then
    return answer(q, {err('no-such-user', 'no such user')})
  end
  local r = redis.call('HMGET', keys[6], 'edge', 'conn', 'sid')
  if not r[3] and per_sender > 0
      and tonumber(redis.call('HGET', counts, q.user) or 0) >= per_sender then
    return answer(q, {err('rate-limited', 'you have ' .. per_sender .. ' messages waiting for ' .. to .. ' already')})
  end
  local id = add_history(q, keys[5], h, 'from', q.user, 'to', to, 'text', text)
  if r[3] then
    reply(edge_channels .. r[1], r[2], nil, {{k = 'dm', id = id, from = q.user, text = text}}, nil, r[3])
    return answer(q, {{k = 'ok_msg', user = to, id = id}})
  end
  queue_message(inbox, counts, h, id, q.user, text)
  answer(q, {{k = 'ok_msg', user = to, id = id, queued = true}})
end)

-- The lines of `/history`: the newest `n` entries of `stream` that fit
-- `budget` bytes of `HIST` lines, labelled `label` (`<room>` or
-- `@<user>`), oldest first, then `MORE HISTORY <omitted>` if any was left
-- out, and `OK HISTORY`.
local function history_listing(stream, n, label, budget)
  -- Read newest first, a page at a time, so that a long history of long
  -- lines costs what the budget lets through, not what was asked for.
  local want = math.min(tonumber(n), redis.call('XLEN', stream))
  local hist, bytes, top, full = {}, 0, '+', false
  while #hist < want and not full do
    local page = redis.call('XREVRANGE', stream, top, '-', 'COUNT', math.min(want - #hist, 32))
    if #page == 0 then break end
    for _, e in ipairs(page) do
      local f = fields(e[2])
      local from, text = f.from or '?', f.text or ''
      -- `HIST <of> <id> <from> <text>` and its LF.
      bytes = bytes + 9 + #label + #e[1] + #from + #text
      if bytes > budget then full = true break end
      hist[#hist + 1] = {k = 'hist', of = label, id = e[1], from = from, text = text}
    end
    top = '(' .. page[#page][1]
  end
  local lines = {}
  for i = #hist, 1, -1 do lines[#lines + 1] = hist[i] end
  return listing(lines, 'HISTORY', want - #hist, {k = 'ok_history', n = #hist})
end

-- KEYS 4: the stream (the room's history, or the conversation); for a
-- conversation KEYS 5: the other user's account. ARGV 11-14: how many, the
-- label (`<room>` or `@<user>`), `dm` for a conversation, the most bytes
-- of `HIST` lines: the newest that fit are shown, then `MORE HISTORY
-- <omitted>` if any was left out.
routed('chat_history', function(q, keys, args)
  local stream = keys[4]
  if args[13] == 'dm' and redis.call('EXISTS', keys[5]) == 0
      and redis.call('EXISTS', stream) == 0 then
    return answer(q, {err('no-such-user', 'no such user')})
  end
  answer(q, history_listing(stream, args[11], args[12], tonumber(args[14])))
end)

-- Publishes the user's public key for end-to-end encrypted messages: the
-- fields `pubkey` and `fingerprint` of its account, so that deleting the
-- account deletes them (an account deleted under a live session stays
-- deleted): the lines of the reply. The key and its fingerprint are
-- checked by the edge.
local function key_set(account, user, key, fingerprint)
  if redis.call('EXISTS', account) == 0 then return {err('no-such-user', 'your account is gone')} end
  redis.call('HSET', account, 'pubkey', key, 'fingerprint', fingerprint)
  return {{k = 'ok_key', user = user}}
end

-- KEYS 4: the user's account. ARGV 11-12: the key (base64), its
-- fingerprint.
routed('chat_key_set', function(q, keys, args)
  answer(q, key_set(keys[4], q.user, args[11], args[12]))
end)

-- The lines of `/key <user>`: `KEY <user> <key> <fingerprint>` and `OK
-- KEY <user>`, or `OK KEY <user>` alone when it has none, or `ERR
-- no-such-user`. `account`: the user's account.
local function key_listing(account, user)
  local f = redis.call('HMGET', account, 'pubkey', 'fingerprint')
  if redis.call('EXISTS', account) == 0 then return {err('no-such-user', 'no such user')} end
  local lines = {}
  if f[1] and f[2] then lines[1] = {k = 'key', user = user, key = f[1], fingerprint = f[2]} end
  lines[#lines + 1] = {k = 'ok_key', user = user}
  return lines
end

-- A user's public key. KEYS 4: the user's account. ARGV 11: the user.
routed('chat_key', function(q, keys, args)
  answer(q, key_listing(keys[4], args[11]))
end)

-- Ends the session `sid`, if it is still the current one. KEYS 4-10: the
-- session's edge's session set, the online users, its room's members, the
-- set of rooms, the room sizes, the user's resume token, its room's
-- members per edge. ARGV 11: the edges' line channel without the id,
-- 12-13: the notice settings (see `notices`). A `/quit`
-- (a request with a reply) also revokes the session's resume token; a
-- connection that merely ends leaves it, for the client to come back.
routed('chat_logout', function(q, keys, args)
  if q.rid ~= '0' then
    reply(q.channel, q.conn, q.rid, nil, {kind = 'close', reason = 'quit', sid = q.sid})
  end
  if q.s.sid == q.sid then
    if q.rid ~= '0' then redis.call('DEL', keys[9]) end
    end_session({
      session = q.session, edge_sessions = keys[4], online = keys[5],
      room = {members = keys[6], rooms = keys[7], sizes = keys[8], edges = keys[10]},
    }, q.s, q.user, args[11], notices(args, 12, keys[8]))
  end
end, true)

-- The queued private messages up to an id were shown (to whichever
-- session): they go from `inbox`, and leave their senders' `counts`.
local function delivered(inbox, counts, upto)
  local ms, seq = string.match(upto, '^(%d+)-(%d+)$')
  if not ms then return end
  for _, e in ipairs(redis.call('XRANGE', inbox, '-', upto)) do
    uncount(counts, fields(e[2]).from or '?')
  end
  -- MINID keeps the ids from the next one on.
  redis.call('XTRIM', inbox, 'MINID', ms .. '-' .. (tonumber(seq) + 1))
  if redis.call('XLEN', inbox) == 0 then redis.call('DEL', inbox, counts) end
end

-- KEYS 4-5: the inbox, its count per sender. ARGV 11: the last id shown.
routed('chat_delivered', function(q, keys, args)
  delivered(keys[4], keys[5], args[11])
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

-- Takes back a lease a maintenance that failed half way dropped: free or
-- still this router's, for ttl ms (a router takes others only when free,
-- with SET NX, so a second process given the same id takes none of its).
-- KEYS 1: the lease. ARGV: router id, ttl. 1 if it is this router's now,
-- 0 if another's.
redis.register_function('chat_lease_take', function(keys, args)
  local holder = redis.call('GET', keys[1])
  if holder and holder ~= args[1] then return 0 end
  redis.call('SET', keys[1], args[1], 'PX', args[2])
  return 1
end)

-- Gives a lease back if this router holds it. KEYS 1: the lease. ARGV:
-- router id.
redis.register_function('chat_lease_release', function(keys, args)
  if redis.call('GET', keys[1]) == args[1] then return redis.call('DEL', keys[1]) end
  return 0
end)
