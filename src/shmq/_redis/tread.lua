-- Read a topic. ARGV: subscription name ('' private), consumer, n, cursor (private: the next
-- seq it wants). Retention is applied first. Named: what the log lost past the group's
-- position is counted in its "missed" and the group moved past it, then up to n entries are
-- read in the group (NOACK: a plain subscription is at most once; each member gets different
-- ones). Returns {status (0, -1 no such subscription), entries, last seq published, first seq
-- in the log}.
local name, consumer, n, cursor = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
trim_old(now)
local first = first_seq()
local last = tonumber(redis.call('HGET', META, 'seq') or '0')
if name == '' then
  local c = math.max(cursor, first)
  return {0, redis.call('XRANGE', S, c .. '-0', '+', 'COUNT', n), last, first}
end
local G = 'g:' .. name
local d = group_seqs()[G]
if d == nil or redis.call('EXISTS', P .. 'sub:' .. name) == 0 then return {-1, {}, last, first} end
if first - d - 1 > 0 then
  redis.call('HINCRBY', P .. 'sub:' .. name, 'missed', first - d - 1)
  redis.call('XGROUP', 'SETID', S, G, (first - 1) .. '-0')
end
local r = redis.call('XREADGROUP', 'GROUP', G, consumer, 'COUNT', n, 'NOACK', 'STREAMS', S, '>')
local e = {}
if r then e = r[1][2] end
if #e > 0 then redis.call('HINCRBY', P .. 'sub:' .. name, 'delivered', #e) end
return {0, e, last, first}
