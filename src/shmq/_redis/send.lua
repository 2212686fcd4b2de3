-- Send messages. ARGV[1] '1': then one value per message, the packed message (common.lua),
-- with the queue's defaults (send_many); '5': then 5 values per message: the packed message, delay ms
-- (-1: the queue's), ttl ms (-1: the queue's, 0: none), dedup key (hex, '' none), group (the
-- g field, common.lua; '' none: a group with a message out gets the new one parked). Returns 3
-- values per message: id, status (0 sent, 1 a duplicate: id is the original's, 2 full:
-- maxsize, nothing sent from there on), stream id ('' when delayed or not sent). Mode '1'
-- (nothing can be a duplicate, full, delayed or grouped: send_many on an unbounded queue) returns
-- {first id, count} instead (the ids are consecutive).
local m = redis.call('HMGET', META, 'maxsize', 'delay_ms', 'ttl_ms', 'dedup_window_ms')
local maxsize = tonumber(m[1] or '0')
local held = 0
if maxsize > 0 then
  if LEVELS > 0 then
    for k = 0, LEVELS - 1 do held = held + redis.call('XLEN', P .. 's' .. k) end
    held = held + redis.call('ZCARD', D)
  else
    held = redis.call('XLEN', S) + redis.call('ZCARD', D)
  end
  held = held + tonumber(redis.call('HGET', META, 'parked') or '0')
end
local now = now_ms()
local out = {}
local sent = 0
local step = tonumber(ARGV[1])
local nid = tonumber(redis.call('HGET', META, 'next_id') or '0')   -- (written back once, at the end)
if step == 1 and maxsize == 0 and LEVELS == 0 and tonumber(m[2] or '0') <= 0 and tonumber(m[3] or '0') <= 0 then
  -- send_many with nothing to apply per message (no bound, delay, ttl, level): the XADDs alone
  for j = 2, #ARGV do
    nid = nid + 1
    redis.call('XADD', S, '*', 'i', nid, 'm', ARGV[j])
  end
  local sent = #ARGV - 1
  redis.call('HSET', META, 'next_id', nid)
  redis.call('HINCRBY', META, 'enqueued', sent)
  return {nid - sent + 1, sent}
end
for j = 2, #ARGV, step do
  local dk, dly, tl, g = '', -1, -1, ''
  if step == 5 then dk, dly, tl, g = ARGV[j + 3], tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]), ARGV[j + 4] end
  local old = false
  if dk ~= '' then old = redis.call('GET', P .. 'dd:' .. dk) end
  if old then
    redis.call('HINCRBY', META, 'dedup_hits', 1)
    out[#out + 1] = tonumber(old); out[#out + 1] = 1; out[#out + 1] = ''
  elseif maxsize > 0 and held >= maxsize then
    out[#out + 1] = 0; out[#out + 1] = 2; out[#out + 1] = ''
    break
  else
    nid = nid + 1
    local id = nid
    if dk ~= '' then redis.call('SET', P .. 'dd:' .. dk, id, 'PX', tonumber(m[4])) end
    local delay = dly; if delay < 0 then delay = tonumber(m[2] or '0') end
    local ttl = tl; if ttl < 0 then ttl = tonumber(m[3] or '0') end
    local f = {'i', id, 'm', ARGV[j]}
    if ttl > 0 then f[5] = 'x'; f[6] = now + ttl end       -- (no x field: no expiry)
    if LEVELS > 0 then
      local _, prio = struct.unpack('<BB', ARGV[j])
      if prio >= LEVELS then return redis.error_reply('priority out of range') end
      use_level(prio)
    end
    local sid = ''
    if g ~= '' then
      f[#f + 1] = 'g'; f[#f + 1] = g
      if redis.call('HEXISTS', GH, g) == 1 then
        -- the group has a message out: this one waits its turn (and its delay after that)
        local due = 0; if delay > 0 then due = now + delay end
        f[#f + 1] = 'due'; f[#f + 1] = due
        redis.call('HSET', P .. 'm:' .. id, unpack(f))
        redis.call('RPUSH', P .. 'gq:' .. g, id)
        redis.call('HINCRBY', META, 'parked', 1)
        delay = -1
      else
        redis.call('HSET', GH, g, id)
      end
    end
    if delay < 0 then
      -- parked
    elseif delay > 0 then
      redis.call('HSET', P .. 'm:' .. id, unpack(f))
      redis.call('ZADD', D, now + delay, id)
    else
      sid = redis.call('XADD', S, '*', unpack(f))
      if g ~= '' then redis.call('HSET', GS, TAG .. sid, g) end
    end
    held = held + 1
    sent = sent + 1
    if step ~= 1 then out[#out + 1] = id; out[#out + 1] = 0; out[#out + 1] = sid end
  end
end
if sent > 0 then
  redis.call('HSET', META, 'next_id', nid)
  redis.call('HINCRBY', META, 'enqueued', sent)
end
if step == 1 then return {nid - sent + 1, sent} end
return out
