-- auth-svc's functions: the login (session switch), failed-login counting
-- and account administration.

-- Opens a session after a good password (or creates the account first,
-- for a registration), applying the duplicate-login policy.
--
-- Nothing is done past the deadline (the edge no longer waits: `stale`),
-- for an edge taken for dead (nobody would end the session: `stale`), or
-- for a request applied before (claimed again from an instance thought
-- dead: `duplicate`). `moved`: the old session changed since auth-svc read
-- where it was; it reads again. One live session per user: an old one is
-- closed (its edge is told, its room left) or kept and the new login
-- refused. The session id is random (from auth-svc: 128 bits), so it can
-- be neither guessed nor reused, even after Redis is restored from an
-- older snapshot; the counter only counts the sessions opened. Private
-- messages queued while the user was offline go out after `OK LOGIN`; the
-- effect names the last, which the edge acknowledges once shown. ARGV
-- 16-17 are the notice settings (see `notices`). KEYS 19-21 are the
-- members per edge of the lobby, of the RESUME's room and of the old
-- session's room.
--
-- The session gets a resume token (resume.lua): KEYS 17 its record, ARGV
-- 18-19 the new token's hash ('' for none) and lifetime (ms). A RESUME
-- (ARGV 20: the hash it gave) needs no password: the record must hold
-- that hash (else `ERR bad-credentials`, `bad-token`), and the session
-- goes back to the record's room (ARGV 21, as read before; KEYS 18, its
-- members) rather than the lobby: `OK LOGIN <user> lobby`, then `OK JOIN
-- <room>` after the queued messages.
redis.register_function('chat_login', function(keys, args)
  local edges, done, account, fail_user, fail_addr, session, seq, edge_sessions =
    unpack(keys, 1, 8)
  local lobby = {members = keys[9], rooms = keys[10], sizes = keys[11], edges = keys[19]}
  local online, inbox, subscriptions, old_edge_sessions, old_room_members =
    unpack(keys, 12, 16)
  local user, edge, conn, rid, addr, policy, deadline, new_hash = unpack(args, 1, 8)
  local channel, edge_lines, lobby_name, at_edge, at_room, old_channel, sid = unpack(args, 9, 15)
  local n = notices(args, 16, lobby.sizes)
  local t = {key = keys[17], next = args[18], ttl = tonumber(args[19]), presented = args[20],
    back_room = args[21]}

  local now = now_ms()
  if now > tonumber(deadline) then return 'stale' end
  local alive = redis.call('ZSCORE', edges, edge)
  if not alive or tonumber(alive) < now then return 'stale' end
  local old = where(session)
  if not same_place(old, at_edge, at_room) then return 'moved' end
  local token = token_check(t)
  if token == 'moved' then return 'moved' end
  if not redis.call('SET', done, '1', 'NX', 'PX', 600000) then return 'duplicate' end
  if token == 'bad' then
    reply(channel, conn, rid, {err('bad-credentials', 'wrong user name or token')})
    return 'bad-token'
  end
  -- Where the session starts: the lobby, or for a RESUME its room.
  local room, room_name = lobby, lobby_name
  if token == 'good' and t.back_room ~= '' and t.back_room ~= lobby_name then
    room = {members = keys[18], rooms = lobby.rooms, sizes = lobby.sizes, edges = keys[20]}
    room_name = t.back_room
  end
  if new_hash ~= '' then
    if redis.call('EXISTS', account) == 1 then
      reply(channel, conn, rid, {err('user-exists', 'the name ' .. user .. ' is taken')})
      return 'exists'
    end
    redis.call('HSET', account, 'password', new_hash, 'created', tostring(now))
  end
  -- A good login gives back its attempts: the user's count starts over, the
  -- address's loses this one (registrations keep theirs).
  redis.call('DEL', fail_user)
  if new_hash == '' and redis.call('DECR', fail_addr) <= 0 then redis.call('DEL', fail_addr) end
  if old.sid then
    if policy == 'reject' then
      reply(channel, conn, rid, {err('already-logged-in', user .. ' is logged in elsewhere')})
      return 'rejected'
    end
    reply(old_channel, old.conn, nil, nil, {kind = 'close', reason = 'logged-in-elsewhere', sid = old.sid})
    end_session({
      session = session, edge_sessions = old_edge_sessions, online = online,
      room = {members = old_room_members, rooms = lobby.rooms, sizes = lobby.sizes,
        edges = keys[21]},
    }, old, user, edge_lines, n)
  end
  redis.call('INCR', seq)
  redis.call('HSET', session, 'edge', edge, 'conn', conn, 'sid', sid, 'room', room_name,
    'addr', addr, 'since', tostring(now))
  redis.call('SADD', edge_sessions, user)
  enter_room(room, room_name, user, edge)
  redis.call('SADD', online, user)
  local expires = token_issue(t, room_name, now)
  local subs = redis.call('SMEMBERS', subscriptions)
  -- Private messages queued while offline follow OK LOGIN, in order. They
  -- leave the inbox when the edge has shown them (chat_delivered).
  local lines = {{k = 'ok_login', user = user, room = lobby_name}}
  local last = ''
  for _, e in ipairs(redis.call('XRANGE', inbox, '-', '+')) do
    local f = fields(e[2])
    lines[#lines + 1] = {k = 'dm', id = f.id or e[1], from = f.from or '?', text = f.text or ''}
    last = e[1]
  end
  if room_name ~= lobby_name then lines[#lines + 1] = {k = 'ok_join', room = room_name} end
  reply(channel, conn, rid, lines, {kind = 'login', user = user, sid = sid, room = room_name,
    subs = table.concat(subs, ' '), inbox = last, expires = expires})
  sys(n, room, edge_lines, room_name, user, 'joined')
  return old.sid and 'replaced' or 'ok'
end)

-- Takes the password check of one login request for one instance, so that
-- bcrypt runs once per request even when another instance claims the
-- request meanwhile. KEYS 1: the request's checking key. ARGV: the
-- instance, the lifetime (ms: auth.claim_idle_ms; the instance renews it
-- while it has the request in hand, so the check passes to another only
-- if it dies). Returns 1 if taken, 0 if another instance has it.
redis.register_function('chat_check_login', function(keys, args)
  if redis.call('SET', keys[1], args[1], 'NX', 'PX', args[2]) then return 1 end
  return 0
end)

-- Renews an instance's checks (KEYS: checking keys of requests it has in
-- hand; ARGV: the instance, the lifetime in ms); those of other instances
-- are left as they are. Returns how many were renewed.
redis.register_function('chat_keep_checks', function(keys, args)
  local renewed = 0
  for _, key in ipairs(keys) do
    if redis.call('GET', key) == args[1] then
      redis.call('PEXPIRE', key, args[2])
      renewed = renewed + 1
    end
  end
  return renewed
end)

-- Counts an attempt on each counter (KEYS: the user's, the address's, or
-- only one), in a window that starts with the first, and says whether any
-- is now over its limit (ARGV: window ms, then each key's limit, 0: none).
-- Counted before the password is checked, so that guesses sent in parallel
-- are limited too; a login that succeeds gives its count back.
redis.register_function('chat_attempt', function(keys, args)
  local over = 0
  for i, key in ipairs(keys) do
    local n = redis.call('INCR', key)
    if n == 1 then redis.call('PEXPIRE', key, args[1]) end
    local max = tonumber(args[i + 1])
    if max > 0 and n > max then over = 1 end
  end
  return over
end)

-- Creates an account unless the name is taken. KEYS 1: the account.
-- ARGV 1: the bcrypt hash. Returns 1 if created.
redis.register_function('chat_create_user', function(keys, args)
  if redis.call('EXISTS', keys[1]) == 1 then return 0 end
  redis.call('HSET', keys[1], 'password', args[1], 'created', tostring(now_ms()))
  return 1
end)

-- Replaces the password of an account that exists (a deleted one does not
-- come back) and revokes its resume token. KEYS 1: the account, 2: its
-- resume token. ARGV 1: the bcrypt hash. Returns 1 if replaced.
redis.register_function('chat_set_password', function(keys, args)
  if redis.call('EXISTS', keys[1]) == 0 then return 0 end
  redis.call('HSET', keys[1], 'password', args[1])
  redis.call('DEL', keys[2])
  return 1
end)

-- Deletes an account and what hangs off it: its subscriptions both ways
-- (so that a new account of the same name inherits no subscribers), its
-- queued private messages and its publications. Conversations stay: they
-- belong to the other side too.
--
-- KEYS 1-7: the account, its subscriptions, its subscribers, its inbox,
-- its inbox's count per sender, its publications, its resume token; then
-- the subscriber sets of whom it subscribes to (np), then for each of its
-- subscribers (ns) their subscriptions and session. ARGV: np, ns, the user, the channel name of an edge without its
-- id, then the np publishers and the ns subscribers as read before.
-- Returns 0 (no such account), 1 (deleted) or `moved` (the sets changed
-- since they were read: read again).
redis.register_function('chat_delete_user', function(keys, args)
  local account, subscriptions, subscribers, inbox, inbox_counts, publications, resume =
    unpack(keys, 1, 7)
  local np, ns, user, edge_channels = tonumber(args[1]), tonumber(args[2]), args[3], args[4]
  local function same(set, from, n)
    if redis.call('SCARD', set) ~= n then return false end
    for i = from, from + n - 1 do
      if redis.call('SISMEMBER', set, args[i]) == 0 then return false end
    end
    return true
  end
  if not (same(subscriptions, 5, np) and same(subscribers, 5 + np, ns)) then return 'moved' end
  if redis.call('DEL', account) == 0 then return 0 end
  for i = 1, np do redis.call('SREM', keys[7 + i], user) end
  for j = 1, ns do
    local their_subscriptions, their_session = keys[7 + np + 2 * j - 1], keys[7 + np + 2 * j]
    redis.call('SREM', their_subscriptions, user)
    -- An online subscriber's edge stops passing on the channel.
    local s = redis.call('HMGET', their_session, 'edge', 'conn', 'sid')
    if s[3] then
      reply(edge_channels .. s[1], s[2], nil, nil, {kind = 'unsubscribe', sid = s[3], user = user})
    end
  end
  redis.call('DEL', subscriptions, subscribers, inbox, inbox_counts, publications, resume)
  return 1
end)
