-- The consumers named in ARGV have no connection left (their process died or the network
-- dropped them): their leases end now, so the next receive claims those messages again (the
-- claim counts the failed delivery). Consumers that hold nothing are removed from the group.
if SUBGONE then return 0 end
local now = now_ms()
local moved = 0
local function reap()
  for _, c in ipairs(ARGV) do
    local pe = redis.call('XPENDING', S, G, '-', '+', 10000, c)
    for _, e in ipairs(pe) do
      moved = moved + redis.call('ZADD', L, 'XX', 'CH', now, e[1])   -- leases only (not given-back ones)
    end
    if #pe == 0 then redis.call('XGROUP', 'DELCONSUMER', S, G, c) end
  end
end
if LEVELS > 0 then
  for k = 0, LEVELS - 1 do use_level(k); reap() end
else
  reap()
end
return moved
