-- At-most-once take from a priority queue: up to ARGV[1] items, the highest level's first
-- (FIFO within a level). Returns the items (none: empty).
local n = tonumber(ARGV[1])
local out = {}
-- aging (meta max_wait_ms > 0): an item waiting longer than max_wait goes first, the oldest
-- such first (an item carries its put time, '<Bd': kind, seconds since the epoch, the putter's
-- clock; compared with the server's)
local mw = tonumber(redis.call('HGET', META, 'max_wait_ms') or '0') or 0
if mw > 0 then
  local now = now_ms()
  while #out < n do
    local bk, bt = nil, nil
    for k = 0, LEVELS - 1 do
      local h = redis.call('LINDEX', P .. 'q' .. k, 0)
      if h and #h >= 9 then
        local _, t = struct.unpack('<Bd', h)
        t = t * 1000
        if now - t > mw and (not bt or t < bt) then bk, bt = k, t end
      end
    end
    if not bk then break end
    out[#out + 1] = redis.call('LPOP', P .. 'q' .. bk)
  end
end
for k = LEVELS - 1, 0, -1 do
  if #out >= n then break end
  local got = redis.call('LPOP', P .. 'q' .. k, n - #out)
  if got then for _, x in ipairs(got) do out[#out + 1] = x end end
  if #out >= n then break end
end
if #out > 0 then redis.call('HINCRBY', META, 'dequeued', #out) end
return out
