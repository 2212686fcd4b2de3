-- Topic bookkeeping. ARGV[1]: 'unsub' name (returns 1, 0 when there is none), 'leave' name
-- consumer (a member closes), or 'info' (returns {last seq, first seq, log length, then per
-- named subscription: name, on_slow, missed, delivered, lag, its consumers' names, and for an
-- ack=True one {acked, redelivered, dead_lettered, in flight}}).
local op = ARGV[1]
if op == 'unsub' or op == 'leave' then
  local name = ARGV[2]
  if redis.call('EXISTS', P .. 'sub:' .. name) == 0 then return 0 end
  if op == 'leave' then
    redis.call('XGROUP', 'DELCONSUMER', S, 'g:' .. name, ARGV[3])
    return 1
  end
  redis.call('XGROUP', 'DESTROY', S, 'g:' .. name)
  redis.call('DEL', P .. 'sub:' .. name, P .. 'l:' .. name, P .. 'w:' .. name, P .. 'dl:' .. name)
  redis.call('SREM', P .. 'subs', name)
  redis.call('SREM', P .. 'block', name)
  return 1
end
trim_old(now_ms())
local first = first_seq()
local last = tonumber(redis.call('HGET', META, 'seq') or '0')
local out = {last, first, redis.call('XLEN', S)}
local gs = group_seqs()
for _, name in ipairs(redis.call('SMEMBERS', P .. 'subs')) do
  local h = redis.call('HMGET', P .. 'sub:' .. name, 'on_slow', 'missed', 'delivered', 'ack', 'acked', 'redelivered',
                       'dead_lettered')
  local d = gs['g:' .. name] or last
  local cs = {}
  if gs['g:' .. name] then
    for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', S, 'g:' .. name)) do cs[#cs + 1] = field(c, 'name') end
  end
  local acks = {}
  if h[4] == '1' and gs['g:' .. name] then
    local held = redis.call('XPENDING', S, 'g:' .. name)[1] - redis.call('ZCARD', P .. 'w:' .. name)
    acks = {tonumber(h[5] or '0'), tonumber(h[6] or '0'), tonumber(h[7] or '0'), math.max(0, held)}
  end
  out[#out + 1] = {name, h[1], tonumber(h[2] or '0'), tonumber(h[3] or '0'), last - math.max(d, first - 1), cs, acks}
end
return out
