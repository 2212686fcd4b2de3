-- The counts stats() needs, read at one instant: {stream length, pending, leases past their
-- deadline, given back, given back and due, delayed}.
local now = now_ms()
local pending = 0
if redis.call('EXISTS', S) == 1 then pending = redis.call('XPENDING', S, 'g')[1] end
return {redis.call('XLEN', S), pending, redis.call('ZCOUNT', L, '-inf', now), redis.call('ZCARD', W),
        redis.call('ZCOUNT', W, '-inf', now), redis.call('ZCARD', D)}
