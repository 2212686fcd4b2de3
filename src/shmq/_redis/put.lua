-- At-most-once put on a bounded queue: append the items (ARGV) if they fit under maxsize.
-- Returns 1, or 0 when full (nothing appended).
local maxsize = tonumber(redis.call('HGET', META, 'maxsize') or '0')
local q = P .. 'q'
if maxsize > 0 and redis.call('LLEN', q) + #ARGV > maxsize then return 0 end
redis.call('RPUSH', q, unpack(ARGV))
redis.call('HINCRBY', META, 'enqueued', #ARGV)
return 1
