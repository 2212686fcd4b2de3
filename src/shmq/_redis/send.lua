-- Send one message. ARGV: body, kind, header block, priority, delay ms (-1: the queue's),
-- ttl ms (-1: the queue's, 0: none), dedup key (hex, '' none). Returns {id, status}:
-- status 0 sent, 1 a duplicate (id: the original's), 2 full (maxsize); then the stream id ('' when
-- delayed or not sent).
local dk = ARGV[7]
if dk ~= '' then
  local old = redis.call('GET', P .. 'dd:' .. dk)
  if old then
    redis.call('HINCRBY', META, 'dedup_hits', 1)
    return {tonumber(old), 1, ''}
  end
end
local m = redis.call('HMGET', META, 'maxsize', 'delay_ms', 'ttl_ms', 'dedup_window_ms')
local maxsize = tonumber(m[1] or '0')
if maxsize > 0 and redis.call('XLEN', S) + redis.call('ZCARD', D) >= maxsize then return {0, 2, ''} end
local now = now_ms()
local id = redis.call('HINCRBY', META, 'next_id', 1)
if dk ~= '' then redis.call('SET', P .. 'dd:' .. dk, id, 'PX', tonumber(m[4])) end
local delay = tonumber(ARGV[5]); if delay < 0 then delay = tonumber(m[2] or '0') end
local ttl = tonumber(ARGV[6]); if ttl < 0 then ttl = tonumber(m[3] or '0') end
local exp = 0; if ttl > 0 then exp = now + ttl end
local f = {'i', id, 'b', ARGV[1], 'k', ARGV[2], 'h', ARGV[3], 't', now, 'p', ARGV[4], 'x', exp}
local sid = ''
if delay > 0 then
  redis.call('HSET', P .. 'm:' .. id, unpack(f))
  redis.call('ZADD', D, now + delay, id)
else
  sid = redis.call('XADD', S, '*', unpack(f))
end
redis.call('HINCRBY', META, 'enqueued', 1)
return {id, 0, sid}
