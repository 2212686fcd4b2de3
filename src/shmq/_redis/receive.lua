-- Take up to n messages under a lease. ARGV: consumer, n, lease ms (-1: the queue's).
-- First the due delayed messages join the stream; then leases past their deadline (expired,
-- nacked, or a dead consumer's) are claimed again (XCLAIM counts the delivery), dead-lettered
-- past max_deliveries; then new entries. Expired messages (ttl) are dead-lettered or dropped.
-- Returns {entries, next deadline ms (-1 none), group's last-delivered id}; an entry is
-- {stream id, delivery count, fields}.
local consumer, n = ARGV[1], tonumber(ARGV[2])
local m = redis.call('HMGET', META, 'visibility_ms', 'max_deliveries')
local vt = tonumber(ARGV[3]); if vt < 0 then vt = tonumber(m[1]) end
local maxd = tonumber(m[2])
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', D, '-inf', now, 'LIMIT', 0, 256)
for _, id in ipairs(due) do
  local f = redis.call('HGETALL', P .. 'm:' .. id)
  if #f > 0 then redis.call('XADD', S, '*', unpack(f)) end
  redis.call('DEL', P .. 'm:' .. id)
  redis.call('ZREM', D, id)
end
local out = {}
local function expired(f) local x = tonumber(field(f, 'x') or '0'); return x > 0 and x <= now end
local leases = redis.call('ZRANGEBYSCORE', L, '-inf', now, 'LIMIT', 0, n)
for _, sid in ipairs(leases) do
  local pe = redis.call('XPENDING', S, 'g', sid, sid, 1)
  if #pe == 0 then
    redis.call('ZREM', L, sid)
  else
    local count = tonumber(pe[1][4])
    local e = redis.call('XCLAIM', S, 'g', consumer, 0, sid)
    local f = e[1] and e[1][2]
    if not f then
      redis.call('XACK', S, 'g', sid); redis.call('ZREM', L, sid)
    elseif count + 1 > maxd then
      dead_letter(sid, f, 'max_deliveries', count, now)
    elseif expired(f) then
      dead_letter(sid, f, 'expired', count, now)
    else
      redis.call('ZADD', L, now + vt, sid)
      redis.call('HINCRBY', META, 'redelivered', 1)
      out[#out + 1] = {sid, count + 1, f}
    end
  end
end
if #out < n then
  local r = redis.call('XREADGROUP', 'GROUP', 'g', consumer, 'COUNT', n - #out, 'STREAMS', S, '>')
  if r then
    for _, e in ipairs(r[1][2]) do
      local sid, f = e[1], e[2]
      if expired(f) then
        dead_letter(sid, f, 'expired', 1, now)
      else
        redis.call('ZADD', L, now + vt, sid)
        out[#out + 1] = {sid, 1, f}
      end
    end
  end
end
if #out > 0 then
  redis.call('HINCRBY', META, 'dequeued', #out)
  return {out, -1, '', now}
end
local nxt = -1
local a = redis.call('ZRANGE', L, 0, 0, 'WITHSCORES')
if a[2] then nxt = tonumber(a[2]) end
local b = redis.call('ZRANGE', D, 0, 0, 'WITHSCORES')
if b[2] and (nxt < 0 or tonumber(b[2]) < nxt) then nxt = tonumber(b[2]) end
local last = '0-0'
local groups = redis.call('XINFO', 'GROUPS', S)
for _, g in ipairs(groups) do
  if field(g, 'name') == 'g' then last = field(g, 'last-delivered-id') end
end
return {out, nxt, last, now}
