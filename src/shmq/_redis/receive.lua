-- Take up to n messages under a lease. ARGV: consumer, n, lease ms (-1: the queue's), and
-- 'timers' to only apply what is due (n = 0: no delivery) and expire unread messages.
-- First the due delayed messages join the stream; then deliveries given back (w) and leases
-- past their deadline (l: expired, or a dead consumer's) are claimed again (XCLAIM counts the
-- delivery), dead-lettered past max_deliveries; then new entries. Expired messages (ttl) are
-- dead-lettered or dropped. Returns {deliveries (emit below), next deadline ms (-1 none), group's
-- last-delivered id, server time ms}.
local consumer, n, timers = ARGV[1], tonumber(ARGV[2]), ARGV[4] == 'timers'
if SUBGONE then return {{}, -2, '0-0', 0} end     -- a topic subscription deleted (unsubscribe)
local m = redis.call('HMGET', META, 'visibility_ms', 'max_deliveries')
local vt = tonumber(ARGV[3]); if vt < 0 then vt = tonumber(m[1]) end
local maxd = tonumber(m[2])
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', D, '-inf', now, 'LIMIT', 0, 256)
for _, id in ipairs(due) do
  local f = redis.call('HGETALL', P .. 'm:' .. id)
  if #f > 0 then enter_stream(f) end
  redis.call('DEL', P .. 'm:' .. id)
  redis.call('ZREM', D, id)
end
local out, got = {}, 0
-- a delivery in the reply: 5 values (stream id with its level tag, delivery count, message id,
-- m field, g field or ''), flat (fewer elements for the client to parse); a topic
-- subscription's: {stream id, count, fields} (shmq._redis.topic reads the topic's fields)
local function emit(tsid, count, f)
  got = got + 1
  if TOPIC then out[got] = {tsid, count, f}; return end
  local i, m, g = nil, nil, ''
  for j = 1, #f, 2 do
    local k = f[j]
    if k == 'i' then i = f[j + 1] elseif k == 'm' then m = f[j + 1] elseif k == 'g' then g = f[j + 1] end
  end
  local b = #out
  out[b + 1] = tsid; out[b + 2] = count; out[b + 3] = i or ''; out[b + 4] = m or ''; out[b + 5] = g
end
local function expired(f) local x = tonumber(field(f, 'x') or '0'); return x > 0 and x <= now end
local function claim(sid, given_back)
  local pe = redis.call('XPENDING', S, G, sid, sid, 1)
  if #pe == 0 then
    redis.call('ZREM', L, sid); redis.call('ZREM', W, sid); redis.call('HDEL', DL, sid)
    group_done(sid, now)
    return
  end
  local count, last = tonumber(pe[1][4]), now - tonumber(pe[1][3])
  local why = redis.call('HGET', DL, sid)
  if timers then
    -- apply what is due without delivering (no claim: the delivery count stays)
    local e = redis.call('XRANGE', S, sid, sid)
    local f = e[1] and e[1][2]
    if not f then
      redis.call('XACK', S, G, sid); redis.call('ZREM', L, sid); redis.call('ZREM', W, sid)
      group_done(sid, now)
    elseif why then
      dead_letter(sid, f, why, count, now, last)
    elseif not given_back and count + 1 > maxd then
      dead_letter(sid, f, 'max_deliveries', count, now, last)
    elseif expired(f) then
      dead_letter(sid, f, 'expired', count, now, last)
    elseif not given_back then
      redis.call('ZREM', L, sid); redis.call('ZADD', W, now, sid)
      redis.call('HINCRBY', META, 'redelivered', 1)
    end
    return
  end
  local e = redis.call('XCLAIM', S, G, consumer, 0, sid)
  local f = e[1] and e[1][2]
  if not f then
    redis.call('XACK', S, G, sid); redis.call('ZREM', L, sid); redis.call('ZREM', W, sid)
    group_done(sid, now)
  elseif why then
    dead_letter(sid, f, why, count, now, last)
  elseif count + 1 > maxd then
    dead_letter(sid, f, 'max_deliveries', count, now, last)
  elseif expired(f) then
    dead_letter(sid, f, 'expired', count, now, last)
  else
    redis.call('ZREM', W, sid)
    redis.call('ZADD', L, now + vt, sid)
    if not given_back then redis.call('HINCRBY', META, 'redelivered', 1) end
    emit(TAG .. sid, count + 1, f)
  end
end
local function pass()
  local lim = n; if timers then lim = 256 end
  for _, sid in ipairs(redis.call('ZRANGEBYSCORE', W, '-inf', now, 'LIMIT', 0, lim)) do
    if timers or got < n then claim(sid, true) end
  end
  if timers or got < n then
    for _, sid in ipairs(redis.call('ZRANGEBYSCORE', L, '-inf', now, 'LIMIT', 0, lim)) do
      if timers or got < n then claim(sid, false) end
    end
  end
  if timers then
    -- unread messages past their ttl (a consumer that reads them would expire them too)
    local last = '0-0'
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', S)) do
      if field(g, 'name') == G then last = field(g, 'last-delivered-id') end
    end
    for _, e in ipairs(redis.call('XRANGE', S, '(' .. last, '+', 'COUNT', 1000)) do
      if expired(e[2]) then dead_letter(e[1], e[2], 'expired', 0, now, 0) end
    end
  elseif got < n then
    local r = redis.call('XREADGROUP', 'GROUP', G, consumer, 'COUNT', n - got, 'STREAMS', S, '>')
    if r then
      local z, nz, dl = {}, 0, now + vt
      for _, e in ipairs(r[1][2]) do
        local sid, f = e[1], e[2]
        -- (the common case inline: fields i, m and nothing else, as send.lua writes them)
        if #f == 4 and f[1] == 'i' and f[3] == 'm' and not TOPIC then
          nz = nz + 2; z[nz - 1] = dl; z[nz] = sid
          local b = #out
          out[b + 1] = TAG .. sid; out[b + 2] = 1; out[b + 3] = f[2]; out[b + 4] = f[4]; out[b + 5] = ''
          got = got + 1
        elseif expired(f) then
          dead_letter(sid, f, 'expired', 1, now, now)
        else
          nz = nz + 2; z[nz - 1] = dl; z[nz] = sid
          emit(TAG .. sid, 1, f)
        end
      end
      if nz > 0 then redis.call('ZADD', L, unpack(z)) end
    end
  end
end
-- a priority queue with aging (meta max_wait_ms > 0, PriorityQueue(max_wait=)): a message that
-- has been ready for longer than max_wait goes first, the oldest such first, whatever its level.
-- A message's time is its stream id's (the server's clock when it joined the stream: its send,
-- or the end of its delay or of its wait in its group; a redelivery keeps it). Each level's
-- oldest ready message is the first of: its given-back deliveries due, its leases due, its
-- first new entry.
local MW = 0
if LEVELS > 0 and not timers then MW = tonumber(redis.call('HGET', META, 'max_wait_ms') or '0') or 0 end
if MW > 0 then
  local lasts = {}
  local function oldest(k)
    use_level(k)
    local t = nil
    local function older(sid) local x = seq_of(sid); if x and (not t or x < t) then t = x end end
    for _, z in ipairs({W, L}) do
      local a = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, 1)
      if a[1] then older(a[1]) end
    end
    if not lasts[k] then
      lasts[k] = '0-0'
      if redis.call('EXISTS', S) == 1 then
        for _, g in ipairs(redis.call('XINFO', 'GROUPS', S)) do
          if field(g, 'name') == G then lasts[k] = field(g, 'last-delivered-id') end
        end
      end
    end
    local e = redis.call('XRANGE', S, '(' .. lasts[k], '+', 'COUNT', 1)
    if e[1] then older(e[1][1]) end
    return t
  end
  local tries = 0
  while got < n and tries < n + 16 do
    tries = tries + 1
    local bk, bt = nil, nil
    for k = 0, LEVELS - 1 do
      local t = oldest(k)
      if t and now - t > MW and (not bt or t < bt) then bk, bt = k, t end
    end
    if not bk then break end
    use_level(bk)
    local saved = n
    n = got + 1; pass(); n = saved
    lasts[bk] = nil
  end
end
-- a priority queue: the highest level first, each level's redeliveries before its new messages
if LEVELS > 0 then
  for k = LEVELS - 1, 0, -1 do
    use_level(k); pass()
    if not timers and got >= n then break end
  end
else
  pass()
end
if got > 0 then
  redis.call('HINCRBY', META, 'dequeued', got)
  return {out, -1, '', now}
end
local nxt = -1
local function soonest(z)
  local a = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  if a[2] and (nxt < 0 or tonumber(a[2]) < nxt) then nxt = tonumber(a[2]) end
end
local function last_id()
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', S)) do
    if field(g, 'name') == G then return field(g, 'last-delivered-id') end
  end
  return '0-0'
end
soonest(D)
if LEVELS > 0 then
  -- a priority queue: each level's stream and the id its group last delivered, to wait on
  local lasts = {}
  for k = 0, LEVELS - 1 do
    use_level(k); soonest(L); soonest(W)
    lasts[#lasts + 1] = S; lasts[#lasts + 1] = last_id()
  end
  return {out, nxt, lasts, now}
end
soonest(L); soonest(W)
return {out, nxt, last_id(), now}
