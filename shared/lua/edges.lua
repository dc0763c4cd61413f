-- Edge liveness: heartbeats in the sorted set `edges` (scored with the
-- time, on Redis's clock, until which each edge's beat holds), and the end
-- of the sessions of an edge that died or restarted; and the requests the
-- edges put on the streams.

-- Adds requests to a stream, all or none, in order. KEYS 1: the stream.
-- ARGV 1: its approximate cap, 2: the entries' field, then each request
-- (JSON). One call rather than MULTI/EXEC: on a Redis Cluster a call
-- follows its slot's move to a new master, a transaction does not.
-- Returns how many were added.
redis.register_function('chat_enqueue', function(keys, args)
  for i = 3, #args do
    redis.call('XADD', keys[1], 'MAXLEN', '~', args[1], '*', args[2], args[i])
  end
  return #args - 2
end)

-- KEYS 1-2: the edges, the edge's info hash. ARGV: the edge, how long the
-- beat holds (ms), its public address, its connections, 1 if draining
-- else 0. The info hash expires with the beat (twice its time, so that a
-- late beat does not leave a gap). Runs when Redis is out of memory too:
-- a full Redis must not make every edge look dead (and so log everyone
-- out).
redis.register_function{
  function_name = 'chat_beat',
  flags = {'allow-oom'},
  callback = function(keys, args)
    local hold = tonumber(args[2])
    redis.call('ZADD', keys[1], now_ms() + hold, args[1])
    redis.call('HSET', keys[2], 'addr', args[3], 'conns', args[4], 'draining', args[5])
    redis.call('PEXPIRE', keys[2], 2 * hold)
    return 0
  end,
}

-- The edges whose beat holds. KEYS 1: the edges.
redis.register_function{
  function_name = 'chat_live_edges',
  flags = {'no-writes'},
  callback = function(keys)
    return redis.call('ZRANGEBYSCORE', keys[1], '(' .. now_ms(), '+inf')
  end,
}

-- The edges whose beat has run out. KEYS 1: the edges.
redis.register_function{
  function_name = 'chat_dead_edges',
  flags = {'no-writes'},
  callback = function(keys)
    return redis.call('ZRANGEBYSCORE', keys[1], '-inf', now_ms())
  end,
}

-- Ends one session an edge holds. KEYS 1-8: the edges, the edge's session
-- set, the user's session, the online users, the session's room's
-- members, the set of rooms, the room sizes, the room's members per edge.
-- ARGV: the edge, the user, the session's room as read before, the edges'
-- line channel without the id, the edge's channel,
-- `reap` (only while the edge is still dead) or `restart` (the edge
-- itself, starting again under its id), and the notice settings (two).
-- Returns `ended`, `gone` (not that edge's session any more), `alive`
-- (reaping, but the edge beats again) or `moved` (read again).
redis.register_function('chat_end_edge_session', function(keys, args)
  local edges, edge_sessions, session, online = unpack(keys, 1, 4)
  local room = {members = keys[5], rooms = keys[6], sizes = keys[7], edges = keys[8]}
  local edge, user, at_room, lines, edge_channel, mode = unpack(args, 1, 6)
  if mode == 'reap' then
    local until_ms = redis.call('ZSCORE', edges, edge)
    if until_ms and tonumber(until_ms) >= now_ms() then return 'alive' end
  end
  local s = where(session)
  if s.edge ~= edge then
    redis.call('SREM', edge_sessions, user)
    return 'gone'
  end
  if not same_place(s, edge, at_room) then return 'moved' end
  -- Should the edge be alive after all, its connection is told and closed.
  reply(edge_channel, s.conn, nil, nil, {kind = 'close', reason = 'server-shutdown', sid = s.sid})
  end_session({session = session, edge_sessions = edge_sessions, online = online, room = room},
    s, user, lines, notices(args, 7, room.sizes))
  return 'ended'
end)

-- Forgets a dead edge once it holds no session. KEYS 1-2: the edges, the
-- edge's session set. ARGV 1: the edge. Returns 1 if forgotten.
redis.register_function('chat_drop_edge', function(keys, args)
  if redis.call('SCARD', keys[2]) > 0 then return 0 end
  local until_ms = redis.call('ZSCORE', keys[1], args[1])
  if until_ms and tonumber(until_ms) >= now_ms() then return 0 end
  redis.call('ZREM', keys[1], args[1])
  return 1
end)

-- Counts a connection opened or closed between beats. KEYS 1: the edge's
-- info hash. ARGV 1: +1 or -1. Only while the hash is there (a beat
-- writes it whole, with its expiry and the exact count).
redis.register_function('chat_count_conn', function(keys, args)
  if redis.call('EXISTS', keys[1]) == 0 then return 0 end
  redis.call('HINCRBY', keys[1], 'conns', tonumber(args[1]))
  return 1
end)
