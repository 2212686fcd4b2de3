-- Create or open a queue. ARGV: create (0/1), exist_ok (0/1), ack (0/1), then settings as
-- field, value pairs. Returns {status, meta as a flat list}.
local create, exist_ok, ack = ARGV[1] == '1', ARGV[2] == '1', ARGV[3] == '1'
if redis.call('EXISTS', META) == 1 then
  if create and not exist_ok then return {'exists', {}} end
  return {'open', redis.call('HGETALL', META)}
end
if not create then return {'missing', {}} end
local kv = {}
for j = 4, #ARGV do kv[#kv + 1] = ARGV[j] end
redis.call('HSET', META, 'next_id', 0, 'created_at', now_ms(), unpack(kv))
if ack then
  local lv = tonumber(redis.call('HGET', META, 'levels') or '0') or 0
  if lv > 0 then
    for k = 0, lv - 1 do redis.call('XGROUP', 'CREATE', S .. k, 'g', '0', 'MKSTREAM') end
  else
    redis.call('XGROUP', 'CREATE', S, 'g', '0', 'MKSTREAM')
  end
end
return {'created', redis.call('HGETALL', META)}
