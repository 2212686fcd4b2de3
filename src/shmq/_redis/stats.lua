-- The counts stats() needs, read at one instant: {stream length, pending, leases past their
-- deadline, given back, given back and due} (a priority queue: these five per level, level 0
-- first), then the number of delayed messages.
local now = now_ms()
local out = {}
local function counts()
  local pending = 0
  if redis.call('EXISTS', S) == 1 then pending = redis.call('XPENDING', S, G)[1] end
  for _, v in ipairs({redis.call('XLEN', S), pending, redis.call('ZCOUNT', L, '-inf', now), redis.call('ZCARD', W),
                      redis.call('ZCOUNT', W, '-inf', now)}) do out[#out + 1] = v end
end
if LEVELS > 0 then
  for k = 0, LEVELS - 1 do use_level(k); counts() end
else
  counts()
end
out[#out + 1] = redis.call('ZCARD', D)
return out
