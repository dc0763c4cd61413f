-- Requests and logins on a Redis Cluster, in single-slot steps
-- (docs/design.md, "Running on a Redis Cluster"): each request's user step
-- in the user's slot, then its later steps in the slots of the room, the
-- other user, the conversation, the edge or the directory. The router
-- (router-svc/src/steps.rs), auth-svc (auth-svc/src/steps.rs) and
-- shared/src/steps.rs call them.
--
-- The user step takes the request in the user's order (its last applied
-- id, as on one Redis), reads the session, decides, and keeps the
-- decision under the request's id (`duplicate` answers it, for a request
-- recovered after a crash to be carried out again). It numbers the
-- user's decisions (`seq`: one counter per user, whatever stream the
-- request came on, since ids of different streams do not compare), gives
-- each later step the number of the same user's previous decision for the
-- same target (`routes`: target -> last number), and the target applies a
-- step only right after that one (`marks`: publisher -> last number
-- applied and what it gave), so each step takes effect once, in the
-- publisher's order, whichever routers send the steps and in whatever
-- order they arrive (the rules docs/models/routers.pml checks). Every
-- numbered step is sent, even one an earlier step made moot (it then only
-- takes its number), or the target would wait for it for ever.

-- How long a decision is kept (ms): the router deletes it once the
-- request is acknowledged; this only bounds what a lost router leaves.
local DECISION_TTL = 86400000

-- Admits request `args[1]` in the user's order. KEYS 1-3: the user's
-- last applied id, session, this request's decision. ARGV 1-5: the
-- request's entry id, the same user's previous id in the pipeline ('' for
-- the first), the session id, its edge and room as read before. Returns
-- the request (with its session as `s`), or nil and the answer: `{'duplicate',
-- <decision or ''>}`, `{'retry'}`, `{'moved'}` or `{'stale'}`.
local function user_step(keys, args)
  local q = {applied = keys[1], session = keys[2], decision = keys[3],
    eid = args[1], prev = args[2], sid = args[3], at_edge = args[4], at_room = args[5]}
  local status = in_order(q)
  if status == 'duplicate' then
    return nil, {'duplicate', redis.call('GET', q.decision) or ''}
  end
  if status then return nil, {status} end
  if q.s.sid ~= q.sid then return nil, {'stale'} end
  return q
end

-- The number of the user's previous decision for `target` (0 if none),
-- and `seq`'s from now on. `routes`: the user's hash of them.
local function route_to(routes, target, seq)
  local prev = tonumber(redis.call('HGET', routes, target) or 0)
  redis.call('HSET', routes, target, seq)
  return prev
end

-- Keeps the decision (a table, as JSON) and answers `{'ok', <decision>}`.
local function decide(q, decision)
  local d = cjson.encode(decision)
  redis.call('SET', q.decision, d, 'PX', DECISION_TTL)
  return {'ok', d}
end

-- Whether a later step of `publisher`'s decision number `seq` may apply
-- at a target whose marks are in hash `marks`, `prev` being the number of
-- the publisher's previous decision for it (0: none): nil and the
-- publisher's mark there (`<seq> <what it gave>`, nil if none) if so, or
-- the answer: `{'duplicate', <what it gave>}` (applied before; '' if not
-- the last one), or `{'retry'}` (the previous one has not been applied
-- here yet).
local function later_step(marks, publisher, seq, prev)
  local m = redis.call('HGET', marks, publisher)
  local last, gave = 0, ''
  if m then
    local n
    n, gave = string.match(m, '^(%d+) ?(.*)$')
    last = tonumber(n)
  end
  if seq <= last then return {'duplicate', seq == last and gave or ''} end
  if last ~= prev then return {'retry'} end
  return nil, m
end

-- A room line's user step. KEYS 1-5: the user's last applied id,
-- session, the request's decision, the user's routes, its decision
-- counter. ARGV 1-5 as `user_step`. Decides the room (the session's now)
-- and numbers the room step: `{'ok', '{"room":…,"seq":…,"prev":…}'}`.
redis.register_function('chat_c_say', function(keys, args)
  local q, answer = user_step(keys, args)
  if not q then return answer end
  local room, seq = q.s.room, redis.call('INCR', keys[5])
  return decide(q, {room = room, seq = seq, prev = route_to(keys[4], 'room:' .. room, seq)})
end)

-- A room line's room step. KEYS 1-4: the room's history, its members per
-- edge, its marks, its version. ARGV 1-8: the publisher, the request's
-- entry id (its time names the history entry), the `seq` and `prev` its
-- user step gave, the text, the history cap and ttl, and the `seq` of the
-- publisher's first line in the router's run (its room steps go in one
-- round trip, their publishes in the next). Answers `{'ok', <history id>,
-- <version>, <edge>…}`: the edges to publish the line to, and the room's
-- version then (an edge shows the line to the members who joined at or
-- before it and left after it). Or as `later_step` (a duplicate gives the
-- history id and version it was given and the edges now: the router
-- publishes it again, and an edge that passed it on drops it).
--
-- A router that dies between a run's steps and its publishes leaves
-- several of a publisher's lines applied and unpublished; its successor
-- runs them again, and each must get its answer back, not only the last.
-- So besides the last answer (`marks`' field `<publisher>`) the answers
-- of the run before it are kept (field `<publisher>#`, `<seq> <id>
-- <version>;` each), until the publisher's next run here starts.
redis.register_function('chat_c_say_room', function(keys, args)
  local publisher, eid, text = args[1], args[2], args[5]
  local seq, prev, run = tonumber(args[3]), tonumber(args[4]), tonumber(args[8])
  local marks, earlier = keys[3], publisher .. '#'
  local answer, last = later_step(marks, publisher, seq, prev)
  if answer and answer[2] == '' then
    local kept = ';' .. (redis.call('HGET', marks, earlier) or '')
    local gave = string.match(kept, ';' .. seq .. ' ([^;]*);')
    if gave then answer = {'duplicate', gave} end
  end
  if answer and (answer[1] == 'retry' or answer[2] == '') then return answer end
  if answer then
    local id, v = string.match(answer[2], '^(%S+) ?(%d*)$')
    answer = {'duplicate', id, v}
  else
    local h = {cap = args[6], ttl = tonumber(args[7])}
    local id = add_history({eid = eid}, keys[1], h, 'from', publisher, 'text', text)
    local v = redis.call('GET', keys[4]) or '0'
    if last and tonumber(string.match(last, '^%d+')) >= run then
      redis.call('HSET', marks, earlier, (redis.call('HGET', marks, earlier) or '') .. last .. ';')
    else
      redis.call('HDEL', marks, earlier)
    end
    redis.call('HSET', marks, publisher, seq .. ' ' .. id .. ' ' .. v)
    answer = {'ok', id, v}
  end
  for _, edge in ipairs(redis.call('HKEYS', keys[2])) do answer[#answer + 1] = edge end
  return answer
end)

-- A join's user step (and a leave's: a join of the lobby). KEYS 1-6: the
-- user's last applied id, session, the request's decision, the user's
-- routes, its decision counter, its resume token. ARGV 1-5 as
-- `user_step`, 6: the room to go to, 7: `leave` for a `/leave` (refused
-- in the lobby, ARGV 6). Moves the session and its resume token's room,
-- and numbers the two room steps: `{'ok', '{"from":…,"to":…,"edge":…,
-- "seq":…,"prev_from":…,"prev_to":…}'}`; `{"stay":true}` when already
-- there, `{"not_in_room":true}` for a `/leave` in the lobby (no step).
redis.register_function('chat_c_join', function(keys, args)
  local q, answer = user_step(keys, args)
  if not q then return answer end
  local from, to = q.s.room, args[6]
  if args[7] == 'leave' and from == to then return decide(q, {not_in_room = true}) end
  if from == to then return decide(q, {stay = true}) end
  redis.call('HSET', q.session, 'room', to)
  if redis.call('EXISTS', keys[6]) == 1 then redis.call('HSET', keys[6], 'room', to) end
  local seq = redis.call('INCR', keys[5])
  return decide(q, {from = from, to = to, edge = q.s.edge, seq = seq,
    prev_from = route_to(keys[4], 'room:' .. from, seq),
    prev_to = route_to(keys[4], 'room:' .. to, seq)})
end)

-- A member entering or leaving a room, its room step. KEYS 1-4: the
-- room's members, its members per edge, its marks, its version (a counter
-- every membership change takes: the edges show a member the lines after
-- the version it joined at). ARGV 1-5: the user, the `seq` and the `prev`
-- (for this room) its user step gave, the edge of its session, `enter` or
-- `leave`. Answers `{'ok', <version>, <members now>, <edge>…}` (the edges
-- to tell), or as `later_step` with the members and edges now.
redis.register_function('chat_c_room_move', function(keys, args)
  local members, edges, marks, version = unpack(keys, 1, 4)
  local user, edge, enter = args[1], args[4], args[5] == 'enter'
  local answer = later_step(marks, user, tonumber(args[2]), tonumber(args[3]))
  if answer and answer[1] == 'retry' then return answer end
  if not answer then
    if enter and redis.call('SADD', members, user) == 1 then
      redis.call('HINCRBY', edges, edge, 1)
    elseif not enter and redis.call('SREM', members, user) == 1 then
      if redis.call('HINCRBY', edges, edge, -1) <= 0 then redis.call('HDEL', edges, edge) end
    end
    local v = redis.call('INCR', version)
    redis.call('HSET', marks, user, args[2] .. ' ' .. v)
    answer = {'ok', v}
  end
  answer[#answer + 1] = redis.call('SCARD', members)
  for _, e in ipairs(redis.call('HKEYS', edges)) do answer[#answer + 1] = e end
  return answer
end)

-- A room's size in the directory (`/rooms`), as a room step left it.
-- KEYS 1-3: the set of rooms, the room sizes, the version of each size.
-- ARGV 1-3: the room, its members, the room's version then. Older news
-- than the directory has (another router's later step came first) is
-- dropped: returns 1 if applied.
redis.register_function('chat_c_room_size', function(keys, args)
  local rooms, sizes, versions = unpack(keys, 1, 3)
  local room, n, v = args[1], tonumber(args[2]), tonumber(args[3])
  if v <= tonumber(redis.call('HGET', versions, room) or 0) then return 0 end
  redis.call('HSET', versions, room, v)
  if n > 0 then
    redis.call('HSET', sizes, room, n)
    redis.call('SADD', rooms, room)
  else
    redis.call('HDEL', sizes, room)
    redis.call('SREM', rooms, room)
  end
  return 1
end)

-- The end of a session (its edge restarted or died, or the connection
-- went), the user step. KEYS 1-5: the user's session, its resume token,
-- decision counter, routes, and the end in progress (`ending`). ARGV 1-3:
-- the edge the session must be on, its session id ('' for whichever it
-- holds), `quit` to revoke the resume token too. Ends the session here and
-- numbers the steps that follow: leaving its room, and leaving the edge's
-- session set (last: while the user is in it, an end can be found and
-- finished). Answers `{'ok', <decision>}`, `{'pending', <decision>}` (an
-- earlier end was not finished: finish that one first), or `{'gone'}`
-- (no such session there).
redis.register_function('chat_c_end', function(keys, args)
  local session, resume, counter, routes, ending = unpack(keys, 1, 5)
  local edge, sid, quit = args[1], args[2], args[3] == 'quit'
  local pending = redis.call('GET', ending)
  if pending then return {'pending', pending} end
  local s = where(session)
  if not s.sid or s.edge ~= edge or (sid ~= '' and s.sid ~= sid) then return {'gone'} end
  redis.call('DEL', session)
  if quit then redis.call('DEL', resume) end
  local seq = redis.call('INCR', counter)
  local d = cjson.encode({room = s.room, edge = s.edge, conn = s.conn, sid = s.sid, seq = seq,
    prev_room = route_to(routes, 'room:' .. s.room, seq),
    prev_edge = route_to(routes, 'edge:' .. s.edge, seq)})
  redis.call('SET', ending, d)
  return {'ok', d}
end)

-- An end finished: it is forgotten, unless another one replaced it.
-- KEYS 1: the end in progress. ARGV 1: the decision carried out.
redis.register_function('chat_c_ended', function(keys, args)
  if redis.call('GET', keys[1]) == args[1] then redis.call('DEL', keys[1]) end
  return 0
end)

-- A session entering or leaving its edge's session set (a login's step,
-- an end's last). KEYS 1-3: the edge's session set, its marks, its
-- liveness (a key the edge's heartbeat keeps, expiring with the beat).
-- ARGV 1-4: the user, the `seq` and `prev` (for this edge) its user step
-- gave, `add` or `remove`. Answers `{'ok'}`, `{'dead'}` (an `add` on an
-- edge whose beat ran out: the session is to be ended, as the reaper
-- would), or as `later_step`.
redis.register_function('chat_c_edge_session', function(keys, args)
  local user = args[1]
  local refused = later_step(keys[2], user, tonumber(args[2]), tonumber(args[3]))
  if refused then return refused end
  if args[4] == 'add' then
    if redis.call('EXISTS', keys[3]) == 0 then return {'dead'} end
    redis.call('SADD', keys[1], user)
  else
    redis.call('SREM', keys[1], user)
  end
  redis.call('HSET', keys[2], user, args[2])
  return {'ok'}
end)

-- Whether a dead edge may leave the directory: its beat ran out and it
-- holds no session. No session can join it after this answers 1 (an
-- `add` needs its liveness). KEYS 1-2: the edge's session set, its
-- liveness.
redis.register_function('chat_c_edge_gone', function(keys)
  if redis.call('EXISTS', keys[2]) == 1 or redis.call('SCARD', keys[1]) > 0 then return 0 end
  return 1
end)

-- A login's user step (docs/design.md, "The login, next"): what
-- chat_login does in the user's slot. KEYS 1-10: the request's done key
-- (it keeps the decision), the account, the user's failure count, its
-- session, resume token, inbox, subscriptions, decision counter, routes
-- and end in progress. ARGV 1-16: the user, the edge, conn, rid, the
-- client's address, the duplicate-login policy, the deadline (ms), the
-- new password hash ('' unless a registration), the new session id, the
-- old session's edge and room as read before, the lobby, and the token
-- part (`t` of resume.lua: next, ttl, presented, back room).
--
-- Answers `{'ok' | 'replaced', <decision>}`: the session is open here,
-- and the decision names the steps left (`old`: the replaced session's
-- room and edge to leave, and its connection to close; `new`: the room
-- and the edge to enter, each step numbered after the old one's) and
-- the reply (`lines`, `subs`, `inbox`, `expires`). Or `{'duplicate',
-- <decision>}` (applied before: carry it out again), `{'pending',
-- <end>}` (finish the user's end in progress first), `{'stale'}`,
-- `{'moved'}`, `{'exists'}`, `{'rejected'}` or `{'bad-token'}` (the last
-- three to be answered with their `ERR`).
redis.register_function('chat_c_login', function(keys, args)
  local done, account, fail_user, session, _, inbox, subscriptions, counter, routes, ending =
    unpack(keys, 1, 10)
  local user, edge, conn, rid, addr, policy, deadline, new_hash = unpack(args, 1, 8)
  local sid, at_edge, at_room, lobby = unpack(args, 9, 12)
  local t = {key = keys[5], next = args[13], ttl = tonumber(args[14]), presented = args[15],
    back_room = args[16]}
  local now = now_ms()
  -- Decided before: its steps are still to be carried out, however late
  -- (an instance killed after this step, taken over past the deadline),
  -- or the session would stay half open; the edge ends one it no longer
  -- waits for when the reply comes.
  local before = redis.call('GET', done)
  if before then return {'duplicate', before} end
  if now > tonumber(deadline) then return {'stale'} end
  local pending = redis.call('GET', ending)
  if pending then return {'pending', pending} end
  local old = where(session)
  if not same_place(old, at_edge, at_room) then return {'moved'} end
  local token = token_check(t)
  if token == 'moved' then return {'moved'} end
  if token == 'bad' then return {'bad-token'} end
  if new_hash ~= '' then
    if redis.call('EXISTS', account) == 1 then return {'exists'} end
    redis.call('HSET', account, 'password', new_hash, 'created', tostring(now))
  end
  if old.sid and policy == 'reject' then return {'rejected'} end
  redis.call('DEL', fail_user)
  local d = {}
  if old.sid then
    local seq = redis.call('INCR', counter)
    d.old = {room = old.room, edge = old.edge, conn = old.conn, sid = old.sid, seq = seq,
      prev_room = route_to(routes, 'room:' .. old.room, seq),
      prev_edge = route_to(routes, 'edge:' .. old.edge, seq)}
  end
  local room = lobby
  if token == 'good' and t.back_room ~= '' then room = t.back_room end
  local seq = redis.call('INCR', counter)
  d.new = {room = room, edge = edge, seq = seq,
    prev_room = route_to(routes, 'room:' .. room, seq),
    prev_edge = route_to(routes, 'edge:' .. edge, seq)}
  redis.call('HSET', session, 'edge', edge, 'conn', conn, 'sid', sid, 'room', room,
    'addr', addr, 'since', tostring(now))
  d.expires = token_issue(t, room, now)
  d.subs = table.concat(redis.call('SMEMBERS', subscriptions), ' ')
  d.lines = {{k = 'ok_login', user = user, room = lobby}}
  d.inbox = ''
  for _, e in ipairs(redis.call('XRANGE', inbox, '-', '+')) do
    local f = fields(e[2])
    d.lines[#d.lines + 1] = {k = 'dm', id = f.id or e[1], from = f.from or '?', text = f.text or ''}
    d.inbox = e[1]
  end
  if room ~= lobby then d.lines[#d.lines + 1] = {k = 'ok_join', room = room} end
  d.conn, d.rid, d.sid = conn, rid, sid
  local decided = cjson.encode(d)
  redis.call('SET', done, decided, 'PX', 600000)
  return {old.sid and 'replaced' or 'ok', decided}
end)

-- A publication's user step: the publication is the user's own (its
-- stream is in the user's slot), so it is added here. KEYS 1-6: as
-- `chat_c_say`'s first five, then the user's publications. ARGV 1-5 as
-- `user_step`, 6-8: the text, the history cap and ttl. Answers `{'ok',
-- '{"id":…}'}` (the line goes to every edge; its id orders it there).
redis.register_function('chat_c_publish', function(keys, args)
  local q, answer = user_step(keys, args)
  if not q then return answer end
  local h = {cap = args[7], ttl = tonumber(args[8])}
  return decide(q, {id = add_history(q, keys[6], h, 'text', args[6])})
end)

-- A subscription's (or unsubscription's) user step. KEYS 1-6: as
-- `chat_c_say`'s first five, then the user's subscriptions. ARGV 1-5 as
-- `user_step`, 6: the target, 7: the most subscriptions a user may have
-- (0: no limit), 8: `subscribe` or `unsubscribe`. Numbers the target's
-- step and the user's own (`{"target":…,"seq":…,"prev":…,"prev_own":…}`),
-- or decides `{"limit":<max>}` (no step).
redis.register_function('chat_c_subscribe', function(keys, args)
  local q, answer = user_step(keys, args)
  if not q then return answer end
  local target, max = args[6], tonumber(args[7])
  if args[8] == 'subscribe' and max > 0 and redis.call('SISMEMBER', keys[6], target) == 0
      and redis.call('SCARD', keys[6]) >= max then
    return decide(q, {limit = max})
  end
  local seq = redis.call('INCR', keys[5])
  return decide(q, {target = target, seq = seq,
    prev = route_to(keys[4], 'user:' .. target, seq),
    prev_own = route_to(keys[4], 'self', seq)})
end)

-- A subscription's step at its target (the target's slot). KEYS 1-4: the
-- target's account, subscribers, marks (for the steps of other users'
-- requests, and its own), publications. ARGV 1-4: the subscriber, the
-- `seq` and `prev` its user step gave, `subscribe` or `unsubscribe`.
-- Answers `{'ok', <last publication id>}` (the subscriber's edge shows
-- the target's publications after it; '0-0' if none; '-' if the target
-- has no account: no such user), or as `later_step` (a duplicate gives
-- the same).
redis.register_function('chat_c_subscriber', function(keys, args)
  local account, subscribers, marks, publications = unpack(keys, 1, 4)
  local user, seq = args[1], tonumber(args[2])
  local refused = later_step(marks, user, seq, tonumber(args[3]))
  if refused then return refused end
  local since = '-'
  if redis.call('EXISTS', account) == 1 then
    if args[4] == 'subscribe' then
      redis.call('SADD', subscribers, user)
    else
      redis.call('SREM', subscribers, user)
    end
    local last = redis.call('XREVRANGE', publications, '+', '-', 'COUNT', 1)[1]
    since = last and last[1] or '0-0'
  end
  redis.call('HSET', marks, user, seq .. ' ' .. since)
  return {'ok', since}
end)

-- The field of a user's marks that numbers her subscriptions' own steps
-- there: not a user name (names have no '@'), so apart from the user's
-- steps at herself (a subscription to herself, a message to herself),
-- numbered in line with other users' steps at her.
local OWN = '@own'

-- A subscription's last step, in the subscriber's own slot. KEYS 1-2:
-- the user's subscriptions, its marks. ARGV 1-5: the user, the target,
-- the `seq` and `prev_own` its user step gave, `subscribe`, `unsubscribe`
-- or `none` (the target has no account: nothing but the number).
-- Answers `{'ok'}` or as `later_step`.
redis.register_function('chat_c_own_subscription', function(keys, args)
  local target, seq = args[2], tonumber(args[3])
  local refused = later_step(keys[2], OWN, seq, tonumber(args[4]))
  if refused then return refused end
  redis.call('HSET', keys[2], OWN, seq)
  if args[5] == 'subscribe' then
    redis.call('SADD', keys[1], target)
  elseif args[5] == 'unsubscribe' then
    redis.call('SREM', keys[1], target)
  end
  return {'ok'}
end)

-- A private message's user step. KEYS 1-5: as `chat_c_say`'s. ARGV 1-5
-- as `user_step`, 6: the recipient. Numbers its three steps: the check
-- and the delivery in the recipient's slot (`seq_check`, `seq_deliver`,
-- each with its `prev` there), and the conversation's (`seq_deliver`,
-- `prev_dm`).
redis.register_function('chat_c_msg', function(keys, args)
  local q, answer = user_step(keys, args)
  if not q then return answer end
  local to = args[6]
  local check, deliver = redis.call('INCR', keys[5]), redis.call('INCR', keys[5])
  return decide(q, {to = to, seq_check = check, seq_deliver = deliver,
    prev_check = route_to(keys[4], 'user:' .. to, check),
    prev_deliver = route_to(keys[4], 'user:' .. to, deliver),
    prev_dm = route_to(keys[4], 'dm:' .. to, deliver)})
end)

-- A private message's check in the recipient's slot. KEYS 1-4: the
-- recipient's account, session, inbox's count per sender, marks. ARGV
-- 1-4: the sender, `seq_check`, `prev_check`, the most messages one
-- sender may have queued (0: no limit). Answers `{'ok', <verdict>}`:
-- `go`, `no-such-user` or `rate-limited` (the other two steps are sent
-- as `none` then), or as `later_step`.
redis.register_function('chat_c_msg_check', function(keys, args)
  local account, session, counts, marks = unpack(keys, 1, 4)
  local sender, seq, per_sender = args[1], tonumber(args[2]), tonumber(args[4])
  local refused = later_step(marks, sender, seq, tonumber(args[3]))
  if refused then return refused end
  local verdict = 'go'
  if redis.call('EXISTS', account) == 0 then
    verdict = 'no-such-user'
  elseif redis.call('HEXISTS', session, 'sid') == 0 and per_sender > 0
      and tonumber(redis.call('HGET', counts, sender) or 0) >= per_sender then
    verdict = 'rate-limited'
  end
  redis.call('HSET', marks, sender, seq .. ' ' .. verdict)
  return {'ok', verdict}
end)

-- A private message in its conversation (the conversation's slot). KEYS
-- 1-2: the conversation, its marks. ARGV 1-8: the sender, the request's
-- entry id (its time names the entry), `seq_deliver`, `prev_dm`, the
-- recipient, the text ('' with `none`), the history cap and ttl, then 9:
-- `none` if the check refused it. Answers `{'ok', <id>}` ('' for `none`)
-- or as `later_step` (a duplicate gives the id).
redis.register_function('chat_c_msg_dm', function(keys, args)
  local sender, eid, to, text = args[1], args[2], args[5], args[6]
  local seq = tonumber(args[3])
  local refused = later_step(keys[2], sender, seq, tonumber(args[4]))
  if refused then return refused end
  local id = ''
  if args[9] ~= 'none' then
    local h = {cap = args[7], ttl = tonumber(args[8])}
    id = add_history({eid = eid}, keys[1], h, 'from', sender, 'to', to, 'text', text)
  end
  redis.call('HSET', keys[2], sender, seq .. ' ' .. id)
  return {'ok', id}
end)

-- A private message's delivery (the recipient's slot). KEYS 1-4: the
-- recipient's session, inbox, inbox's count per sender, marks. ARGV 1-7:
-- the sender, `seq_deliver`, `prev_deliver`, the message's id ('' with
-- `none`), the text, the inbox's cap and ttl. Answers `{'ok', 'online',
-- <edge>, <conn>, <sid>}` (the router publishes it there), `{'ok',
-- 'queued'}`, `{'ok', 'none'}`, or as `later_step` (a duplicate gives
-- which of the three it was: an `online` one is published again to the
-- session there is now).
redis.register_function('chat_c_msg_deliver', function(keys, args)
  local session, inbox, counts, marks = unpack(keys, 1, 4)
  local sender, id, text = args[1], args[4], args[5]
  local refused = later_step(marks, sender, tonumber(args[2]), tonumber(args[3]))
  if refused then return refused end
  local function done(how)
    redis.call('HSET', marks, sender, args[2] .. ' ' .. how)
  end
  if id == '' then
    done('none')
    return {'ok', 'none'}
  end
  local s = redis.call('HMGET', session, 'edge', 'conn', 'sid')
  if s[3] then
    done('online')
    return {'ok', 'online', s[1], s[2], s[3]}
  end
  done('queued')
  queue_message(inbox, counts, {cap = args[6], ttl = tonumber(args[7])}, id, sender, text)
  return {'ok', 'queued'}
end)

-- A read's user step (`/history`, `/who`): numbers its one step, so that
-- it sees the user's own writes there. KEYS 1-5: as `chat_c_say`'s. ARGV
-- 1-5 as `user_step`, 6: the target, `room:<room>` or `dm:<user>` (''
-- for the session's room). Answers `{'ok', '{"target":…,"seq":…,
-- "prev":…}'}`.
redis.register_function('chat_c_read', function(keys, args)
  local q, answer = user_step(keys, args)
  if not q then return answer end
  local target = args[6] ~= '' and args[6] or 'room:' .. q.s.room
  local seq = redis.call('INCR', keys[5])
  return decide(q, {target = target, seq = seq, prev = route_to(keys[4], target, seq)})
end)

-- A read's step at its room or conversation. KEYS 1-2: the room's
-- members (`who`) or its history or the conversation (`history`), and
-- its marks. ARGV 1-3: the user, the `seq` and `prev` its user step gave,
-- 4: `who` (5: the room, 6: the most listed) or `history` (5: how many,
-- 6: the label, 7: the most bytes). Answers `{'ok', <lines, JSON>}`,
-- `{'duplicate', <lines>}` (read again: reading twice changes nothing),
-- or `{'retry'}` (the user's step before it there has not applied yet).
redis.register_function('chat_c_read_at', function(keys, args)
  local user, seq = args[1], tonumber(args[2])
  local refused = later_step(keys[2], user, seq, tonumber(args[3]))
  if refused and refused[1] == 'retry' then return refused end
  if not refused then redis.call('HSET', keys[2], user, seq) end
  local lines
  if args[4] == 'who' then
    lines = who_listing(keys[1], args[5], tonumber(args[6]))
  else
    lines = history_listing(keys[1], args[5], args[6], tonumber(args[7]))
  end
  return {refused and 'duplicate' or 'ok', cjson.encode(lines)}
end)

-- A request kept in the user's own slot, or whose only other step is a
-- read (`/subscriptions`, `/key set`, the inbox's acknowledgement;
-- `/rooms` and `/key <user>` read elsewhere after it, `chat_c_look`).
-- KEYS 1-3: the user's last applied id, session, the request's decision;
-- then by kind. ARGV 1-5 as `user_step`, 6: the kind, 7: the user, then
-- by kind:
-- - `subscriptions`: KEYS 4 the user's subscriptions; ARGV 8 the most listed;
-- - `key_set`: KEYS 4 the user's account; ARGV 8-9 the key, its fingerprint;
-- - `delivered` (any session of the user's): KEYS 4-5 the inbox, its
--   count per sender; ARGV 8 the last id shown;
-- - `admit`: nothing but the user's order.
-- Answers `{'ok', '{"lines":[…]}'}` (the reply's lines; none for
-- `delivered` and `admit`), or as `user_step`.
redis.register_function('chat_c_own', function(keys, args)
  local kind, user = args[6], args[7]
  local q = {applied = keys[1], session = keys[2], decision = keys[3],
    eid = args[1], prev = args[2], sid = args[3], at_edge = args[4], at_room = args[5]}
  local status = in_order(q)
  if status == 'duplicate' then return {'duplicate', redis.call('GET', q.decision) or ''} end
  if status then return {status} end
  if kind == 'delivered' then
    delivered(keys[4], keys[5], args[8])
    return decide(q, {})
  end
  if q.s.sid ~= q.sid then return {'stale'} end
  if kind == 'subscriptions' then
    return decide(q, {lines = subscriptions_listing(keys[4], tonumber(args[8]))})
  elseif kind == 'key_set' then
    return decide(q, {lines = key_set(keys[4], user, args[8], args[9])})
  end
  return decide(q, {})
end)

-- A read of another slot for a request `chat_c_own` admitted. KEYS 1:
-- the room sizes (ARGV 1 `rooms`, 2 the lobby, 3 the most listed) or a
-- user's account (ARGV 1 `key`, 2 the user). Answers the reply's lines
-- (JSON).
redis.register_function('chat_c_look', function(keys, args)
  if args[1] == 'rooms' then
    return cjson.encode(rooms_listing(keys[1], args[2], tonumber(args[3])))
  end
  return cjson.encode(key_listing(keys[1], args[2]))
end)
