-- Settle deliveries. ARGV: op ('ack', 'nack', 'requeue', 'extend', 'withdraw', 'drop'), consumer, ms (nack: the
-- delay, extend: the new lease), then stream id, delivery count pairs. A delivery is settled
-- only while the pending-entries list still shows it held by this consumer with this count
-- (a lease that expired but was not claimed again can still be settled). Returns the indexes
-- (1-based) of the pairs that were stale. 'reply' (ARGV[3] the reply list, ARGV[4] the reply,
-- then one pair) pushes the reply and acks in one step, so a reply exists if and only if the
-- request was acked.
local op, consumer, ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local first = 4
if op == 'reply' then
  first = 6
  local inbox = ARGV[3]
  if string.sub(inbox, 1, #P + 2) ~= P .. 'r:' then return redis.error_reply('reply list outside the queue') end
  local pe = redis.call('XPENDING', S, G, ARGV[6], ARGV[6], 1)
  if #pe == 0 or pe[1][2] ~= consumer or tonumber(pe[1][4]) ~= tonumber(ARGV[7]) then return {1} end
  redis.call('RPUSH', inbox, ARGV[4])
  redis.call('PEXPIRE', inbox, ARGV[5])
  op = 'ack'
end
if SUBGONE then            -- a topic subscription deleted meanwhile (unsubscribe): every delivery is over
  local all = {}
  for j = first, #ARGV, 2 do all[#all + 1] = (j - first + 2) / 2 end
  return all
end
local now = now_ms()
local stale = {}
local acks = {}
local maxd = tonumber(redis.call('HGET', META, 'max_deliveries'))
-- an ack of a batch (not a priority queue's): one XPENDING over the batch's id range, for this
-- consumer, instead of one per delivery (the range may hold other deliveries of this consumer
-- too; a reply that fills the limit falls back to one XPENDING per delivery)
local pend = nil
if op == 'ack' and LEVELS == 0 and #ARGV - first > 2 then
  local lo, hi, lms, lsq, hms, hsq = nil, nil, 0, 0, 0, 0
  local ok = true
  for j = first, #ARGV, 2 do
    local ms, sq = string.match(ARGV[j], '^(%d+)-(%d+)$')
    if not ms then ok = false; break end
    ms, sq = tonumber(ms), tonumber(sq)
    if not lo or ms < lms or (ms == lms and sq < lsq) then lo, lms, lsq = ARGV[j], ms, sq end
    if not hi or ms > hms or (ms == hms and sq > hsq) then hi, hms, hsq = ARGV[j], ms, sq end
  end
  if ok then
    local lim = 2 * (#ARGV - first + 1) + 64
    local pe = redis.call('XPENDING', S, G, lo, hi, lim, consumer)
    if #pe < lim then
      pend = {}
      for _, e in ipairs(pe) do pend[e[1]] = e end
    end
  end
end
for j = first, #ARGV, 2 do
  local sid, count = split_sid(ARGV[j]), tonumber(ARGV[j + 1])   -- (a priority queue's "k/id": level k)
  local pe = {}
  if sid and pend then
    if pend[sid] then pe = {pend[sid]} end
  elseif sid then
    pe = redis.call('XPENDING', S, G, sid, sid, 1)
  end
  if not sid then
    stale[#stale + 1] = (j - first + 2) / 2
  elseif op == 'drop' then
    -- a request whose responders died, at its requester's timeout: removed, whoever holds it
    redis.call('XACK', S, G, sid); redis.call('XDEL', S, sid); redis.call('ZREM', L, sid); redis.call('ZREM', W, sid)
  elseif op == 'withdraw' then
    -- a request nobody took (not in the pending list): removed; one that was taken is stale
    if #pe == 0 then redis.call('XDEL', S, sid) else stale[#stale + 1] = (j - first + 2) / 2 end
  elseif #pe == 0 or pe[1][2] ~= consumer or tonumber(pe[1][4]) ~= count then
    stale[#stale + 1] = (j - first + 2) / 2
  elseif op == 'ack' and TAG ~= '' then
    -- a priority queue's delivery: its level's keys now (the batch below is for one stream)
    redis.call('XACK', S, G, sid); redis.call('XDEL', S, sid)
    redis.call('ZREM', L, sid); redis.call('ZREM', W, sid); redis.call('HDEL', DL, sid)
    redis.call('HINCRBY', META, 'acked', 1)
    group_done(sid, now)
  elseif op == 'ack' then
    acks[#acks + 1] = sid          -- removed together below (one call per structure)
  elseif op == 'extend' then
    redis.call('ZADD', L, now + ms, sid)
  else
    local e = redis.call('XRANGE', S, sid, sid)
    local last = now - tonumber(pe[1][3])
    if not e[1] then
      redis.call('XACK', S, G, sid); redis.call('ZREM', L, sid)
      group_done(sid, now)
    elseif op == 'nack' then
      redis.call('HINCRBY', META, 'nacked', 1)
      dead_letter(sid, e[1][2], 'rejected', count, now, last)
    elseif count + 1 > maxd then
      dead_letter(sid, e[1][2], 'max_deliveries', count, now, last)
    else
      redis.call('HINCRBY', META, 'nacked', 1)
      -- given back: due again after the delay; the failed delivery is counted now
      redis.call('ZREM', L, sid)
      redis.call('ZADD', W, now + ms, sid)
      redis.call('HINCRBY', META, 'redelivered', 1)
    end
  end
end
if #acks > 0 then
  redis.call('XACK', S, G, unpack(acks))
  if not TOPIC then redis.call('XDEL', S, unpack(acks)) end   -- a topic's log keeps it for the others
  redis.call('ZREM', L, unpack(acks))
  -- (given-back deliveries and waiting dead-letter moves are rare: their keys usually do not exist)
  if redis.call('EXISTS', W) == 1 then redis.call('ZREM', W, unpack(acks)) end
  if redis.call('EXISTS', DL) == 1 then redis.call('HDEL', DL, unpack(acks)) end
  redis.call('HINCRBY', META, 'acked', #acks)
  for _, sid in ipairs(acks) do group_done(sid, now) end   -- (one EXISTS when the queue has no groups)
end
return stale
