-- Publish to a topic: ARGV the packed messages (common.lua's m field). The log keeps at most
-- "entries" messages (older ones trimmed, counted in "dropped"); a subscription with
-- on_slow=block holds the publishers while it lags by "entries" messages. Returns {status
-- (0 all published, 2 the gate stopped the rest), the seqs published}.
local now = now_ms()
trim_old(now)
local cap = tonumber(redis.call('HGET', META, 'entries'))
local last = tonumber(redis.call('HGET', META, 'seq') or '0')
local gate = nil
local blockers = redis.call('SMEMBERS', P .. 'block')
if #blockers > 0 then
  local gs = group_seqs()
  local first = first_seq()
  for _, name in ipairs(blockers) do
    local d = gs['g:' .. name]
    if d and redis.call('HGET', P .. 'sub:' .. name, 'ack') == '1' then
      -- an ack=True subscription holds the gate at its oldest unacked message too
      local pe = redis.call('XPENDING', S, 'g:' .. name)
      if tonumber(pe[1]) > 0 then d = math.min(d, seq_of(pe[2]) - 1) end
    end
    if d then
      d = math.max(d, first - 1)   -- what retention dropped does not hold anyone
      if gate == nil or d < gate then gate = d end
    end
  end
end
local out = {}
local status = 0
for j = 1, #ARGV do
  if gate and last - gate >= cap then status = 2; break end
  last = last + 1
  redis.call('XADD', S, last .. '-0', 'm', ARGV[j])
  out[#out + 1] = last
end
if #out > 0 then
  redis.call('HSET', META, 'seq', last)
  redis.call('HINCRBY', META, 'published', #out)
  local n = redis.call('XLEN', S)
  if n > cap then
    redis.call('XTRIM', S, 'MAXLEN', cap)
    redis.call('HINCRBY', META, 'dropped', n - cap)
  end
end
return {status, out}
