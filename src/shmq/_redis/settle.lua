-- Settle deliveries. ARGV: op ('ack', 'nack', 'requeue', 'extend'), consumer, ms (nack: the
-- delay, extend: the new lease), then stream id, delivery count pairs. A delivery is settled
-- only while the pending-entries list still shows it held by this consumer with this count
-- (a lease that expired but was not claimed again can still be settled). Returns the indexes
-- (1-based) of the pairs that were stale.
local op, consumer, ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local stale = {}
local maxd = tonumber(redis.call('HGET', META, 'max_deliveries'))
for j = 4, #ARGV, 2 do
  local sid, count = ARGV[j], tonumber(ARGV[j + 1])
  local pe = redis.call('XPENDING', S, 'g', sid, sid, 1)
  if #pe == 0 or pe[1][2] ~= consumer or tonumber(pe[1][4]) ~= count then
    stale[#stale + 1] = (j - 2) / 2
  elseif op == 'ack' then
    redis.call('XACK', S, 'g', sid); redis.call('XDEL', S, sid); redis.call('ZREM', L, sid)
    redis.call('HINCRBY', META, 'acked', 1)
  elseif op == 'extend' then
    redis.call('ZADD', L, now + ms, sid)
  else
    local e = redis.call('XRANGE', S, sid, sid)
    if not e[1] then
      redis.call('XACK', S, 'g', sid); redis.call('ZREM', L, sid)
    elseif op == 'nack' then
      dead_letter(sid, e[1][2], 'rejected', count, now)
    elseif count + 1 > maxd then
      dead_letter(sid, e[1][2], 'max_deliveries', count, now)
    else
      redis.call('ZADD', L, now + ms, sid)
    end
  end
end
return stale
