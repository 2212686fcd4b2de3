-- Create or join a named subscription. ARGV: name, on_slow, start kind ('latest', 'earliest',
-- 'seq', 'time'), its argument (seq, or epoch ms), consumer. The start applies only when the
-- subscription is created. Returns {'ok' | 'other' (it exists with another on_slow), its on_slow}.
-- ARGV[6]: ack ('0'/'1', must agree too), then an ack=True subscription's settings as field,
-- value pairs (visibility_ms, max_deliveries, dlq_prefix, ...: what the queue scripts read).
local name, slow, kind, arg, consumer, ack = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6]
local H, G = P .. 'sub:' .. name, 'g:' .. name
if redis.call('EXISTS', H) == 1 then
  local have = redis.call('HGET', H, 'on_slow')
  local have_ack = redis.call('HGET', H, 'ack') or '0'
  if have ~= slow or have_ack ~= ack then return {'other', have .. ', ack=' .. have_ack} end
  redis.call('XGROUP', 'CREATECONSUMER', S, G, consumer)
  return {'ok', have}
end
trim_old(now_ms())
local first = first_seq()
local last = tonumber(redis.call('HGET', META, 'seq') or '0')
local d = last
if kind == 'earliest' then
  d = first - 1
elseif kind == 'seq' then
  d = math.max(arg - 1, first - 1)
elseif kind == 'time' then
  d = last
  local from = first
  while from <= last do
    local e = redis.call('XRANGE', S, from .. '-0', '+', 'COUNT', 128)
    if #e == 0 then break end
    local found = false
    for _, x in ipairs(e) do
      local _, _, t = struct.unpack('<BBd', field(x[2], 'm'))
      if t >= arg then d = seq_of(x[1]) - 1; found = true; break end
    end
    if found then break end
    from = seq_of(e[#e][1]) + 1
  end
end
redis.call('XGROUP', 'CREATE', S, G, d .. '-0', 'MKSTREAM')
redis.call('XGROUP', 'CREATECONSUMER', S, G, consumer)
redis.call('HSET', H, 'on_slow', slow, 'missed', 0, 'delivered', 0, 'ack', ack)
for j = 7, #ARGV, 2 do redis.call('HSET', H, ARGV[j], ARGV[j + 1]) end
redis.call('SADD', P .. 'subs', name)
if slow == 'block' then redis.call('SADD', P .. 'block', name) end
return {'ok', slow}
