-- At-most-once take from a priority queue: up to ARGV[1] items, the highest level's first
-- (FIFO within a level). Returns the items (none: empty).
local n = tonumber(ARGV[1])
local out = {}
for k = LEVELS - 1, 0, -1 do
  local got = redis.call('LPOP', P .. 'q' .. k, n - #out)
  if got then for _, x in ipairs(got) do out[#out + 1] = x end end
  if #out >= n then break end
end
if #out > 0 then redis.call('HINCRBY', META, 'dequeued', #out) end
return out
