-- At-most-once put on a priority queue: ARGV[1] the level, then the items, appended to the
-- level's list q<level> if they fit under maxsize (counted over every level). Returns 1, or 0
-- when full (nothing appended).
local lv = tonumber(ARGV[1])
if lv < 0 or lv >= LEVELS then return redis.error_reply('priority out of range') end
local maxsize = tonumber(redis.call('HGET', META, 'maxsize') or '0')
if maxsize > 0 then
  local held = 0
  for k = 0, LEVELS - 1 do held = held + redis.call('LLEN', P .. 'q' .. k) end
  if held + #ARGV - 1 > maxsize then return 0 end
end
redis.call('RPUSH', P .. 'q' .. lv, unpack(ARGV, 2))
redis.call('HINCRBY', META, 'enqueued', #ARGV - 1)
return 1
