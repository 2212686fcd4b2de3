-- Shared by every script of the shmq Redis backend (prepended to each one when it is loaded).
-- KEYS[1] is a queue's key prefix "shmq:{NAME}:"; every key of the queue derives from it, so
-- all of them share one hash tag. A message is a stream entry with the fields
--   i id, x expiry time (ms, 0: none), m the message packed by the client:
--   struct '<BBdI' (kind, priority, send time in ms, header length), header block
--   (shmq._codec format), body. (Few fields: each one costs a reply element to parse.)
-- The stream's consumer group "g" holds the leases (its pending-entries list: who holds a
-- delivery and its delivery count); the sorted set "l" holds each lease's deadline (ms); "w"
-- the deliveries given back (nack, or a dead-letter move waiting for room) with the time they
-- are due again; "dl" the reason of a dead-letter move that waits for room.
local P = KEYS[1]
local META, S, L, D, W, DL = P .. 'meta', P .. 's', P .. 'l', P .. 'd', P .. 'w', P .. 'dl'
-- A priority queue (meta field levels > 0) has these four per level k: s<k>, l<k>, w<k>, dl<k>
-- (the delayed set d is shared); use_level(k) points S, L, W, DL at level k's, and a stream id
-- handed to a client carries its level as "k/id" (TAG).
local LEVELS = tonumber(redis.call('HGET', META, 'levels') or '0') or 0
local TAG = ''
-- G: the consumer group. A topic's ack=True subscription (KEYS[2] its name, set at the end of
-- this file) has the group "g:<name>" on the topic's stream, its own l:/w:/dl: keys, and its
-- settings and counters in the hash "sub:<name>" (META points there: the queue scripts run
-- unchanged, except that a settled message stays in the log for the other subscriptions).
local G = 'g'
local TOPIC, SUBGONE = false, false
local function use_level(k)
  k = tostring(k)
  S, L, W, DL = P .. 's' .. k, P .. 'l' .. k, P .. 'w' .. k, P .. 'dl' .. k
  TAG = k .. '/'
end
local function split_sid(s)
  local k, sid = string.match(s, '^(%d+)/(.+)$')
  if LEVELS > 0 then          -- a priority queue's stamp must name a level it has
    if not k or tonumber(k) >= LEVELS then return nil end
    use_level(k); return sid
  end
  return s
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function seq_of(id) return tonumber(string.match(id, '^(%d+)')) end
local function field(f, name)
  for j = 1, #f, 2 do if f[j] == name then return f[j + 1] end end
  return nil
end
local function set_field(f, name, value)
  for j = 1, #f, 2 do if f[j] == name then f[j + 1] = value; return end end
  f[#f + 1] = name; f[#f + 1] = value
end
local MHEAD = 14     -- struct.pack('<BBdI') size
local function unpack_m(m)
  local kind, prio, t, hl = struct.unpack('<BBdI', m)
  return kind, prio, t, string.sub(m, MHEAD + 1, MHEAD + hl), string.sub(m, MHEAD + hl + 1)
end
local function hdr(key, value)
  return struct.pack('<HBxI', #key, 0, #value) .. key .. value
end
-- Message groups (send(group=), docs/guide/groups.md): a grouped message carries the field g
-- (key type byte 0 str / 1 bytes, then the key). At most one message of a group is "out" (in a
-- stream, delivered or not, or in the delayed set): "gh" maps the group to it; the later ones
-- wait in the list "gq:<g>" as hashes m:<id> (field due: not before then), counted in meta
-- "parked". "gs" maps a grouped stream entry (its level tag and stream id) to its group, so
-- whatever removes the entry (ack, dead-letter move, a lost entry) lets the next one out.
local GH, GS = P .. 'gh', P .. 'gs'
local function level_stream(prio)
  if LEVELS > 0 then
    local k = math.min(prio, LEVELS - 1)
    return P .. 's' .. k, k .. '/'
  end
  return P .. 's', ''
end
-- XADD fields f (a message hash's) to the stream of its level; a grouped one is entered in gs
local function enter_stream(f)
  local st, tag = level_stream(select(2, struct.unpack('<BB', field(f, 'm'))))
  local sid = redis.call('XADD', st, '*', unpack(f))
  local g = field(f, 'g')
  if g then redis.call('HSET', GS, tag .. sid, g) end
  return sid
end
-- group g's message that was out is over: the next waiting one (if any) goes out
local function group_release(g, now)
  while true do
    local id = redis.call('LPOP', P .. 'gq:' .. g)
    if not id then redis.call('HDEL', GH, g); return end
    redis.call('HINCRBY', META, 'parked', -1)
    local h = P .. 'm:' .. id
    local f = redis.call('HGETALL', h)
    redis.call('DEL', h)
    if #f > 0 then
      local due, g2 = 0, {}
      for j = 1, #f, 2 do
        if f[j] == 'due' then due = tonumber(f[j + 1]) else g2[#g2 + 1] = f[j]; g2[#g2 + 1] = f[j + 1] end
      end
      redis.call('HSET', GH, g, id)
      if due > now then
        redis.call('HSET', h, unpack(g2))
        redis.call('ZADD', P .. 'd', due, id)
      else
        enter_stream(g2)
      end
      return
    end
  end
end
local HAS_GS = nil
-- the entry TAG .. sid leaves its stream: if it was a group's message out, the group goes on
local function group_done(sid, now)
  if HAS_GS == nil then HAS_GS = redis.call('EXISTS', GS) == 1 end
  if not HAS_GS then return end
  local g = redis.call('HGET', GS, TAG .. sid)
  if g then
    redis.call('HDEL', GS, TAG .. sid)
    group_release(g, now)
  end
end
-- The dead-letter move, in the one script that decided it: copy to the dead-letter queue's
-- stream (a new id there, x-dead-letter-* headers added), then remove from the source. A
-- full dead-letter queue (maxsize) leaves the message here, counted, retried in a second.
-- last: when it was last delivered (ms, 0 never). Returns false when it could not move.
local function dead_letter(sid, f, reason, count, now, last)
  local dlq = redis.call('HGET', META, 'dlq_prefix')
  if dlq and dlq ~= '' then
    local dm = redis.call('HMGET', dlq .. 'meta', 'maxsize', 'levels')
    local dmax, dlv = tonumber(dm[1] or '0'), tonumber(dm[2] or '0') or 0
    local dheld = 0
    if dmax > 0 then
      if dlv > 0 then
        for k = 0, dlv - 1 do dheld = dheld + redis.call('XLEN', dlq .. 's' .. k) end
      else
        dheld = redis.call('XLEN', dlq .. 's')
      end
    end
    if dmax > 0 and dheld >= dmax then
      redis.call('HINCRBY', META, 'dead_letter_failed', 1)
      redis.call('HSET', DL, sid, reason)
      redis.call('ZREM', L, sid)
      redis.call('ZADD', W, now + 1000, sid)
      return false
    end
    local kind, prio, t, h0, body = unpack_m(field(f, 'm'))
    local first = last
    if count > 1 then first = t end
    local g = {}
    for j = 1, #f, 2 do
      if f[j] ~= 'g' then g[#g + 1] = f[j]; g[#g + 1] = f[j + 1] end   -- the copy has no group
    end
    local nid = redis.call('HINCRBY', dlq .. 'meta', 'next_id', 1)
    local why = reason
    if TOPIC and reason == 'max_deliveries' then why = 'max-deliveries' end   -- (the topics' word)
    local h = h0 .. hdr('x-dead-letter-source', redis.call('HGET', META, 'name'))
      .. hdr('x-dead-letter-reason', why) .. hdr('x-delivery-count', tostring(count))
      .. hdr('x-first-delivery', string.format('%.3f', first / 1000))
      .. hdr('x-last-delivery', string.format('%.3f', last / 1000))
      .. hdr('x-original-timestamp', string.format('%.3f', t / 1000))
    if TOPIC then h = h .. hdr('x-original-seq', tostring(seq_of(sid))) else h = h .. hdr('x-original-id', field(f, 'i')) end
    set_field(g, 'm', struct.pack('<BBdI', kind, prio, now, #h) .. h .. body)
    set_field(g, 'i', tostring(nid)); set_field(g, 'x', '0')
    local ds = dlq .. 's'
    if dlv > 0 then ds = ds .. math.min(prio, dlv - 1) end   -- the same level in the priority DLQ
    redis.call('XADD', ds, '*', unpack(g))
    redis.call('HINCRBY', dlq .. 'meta', 'enqueued', 1)
    redis.call('HINCRBY', META, 'dead_lettered', 1)
  end
  if reason == 'expired' then redis.call('HINCRBY', META, 'expired', 1) end
  redis.call('XACK', S, G, sid)
  if not TOPIC then redis.call('XDEL', S, sid) end
  redis.call('ZREM', L, sid)
  redis.call('ZREM', W, sid)
  redis.call('HDEL', DL, sid)
  group_done(sid, now)
  return true
end
-- Topics (shmq._redis.topic): the stream S holds message seq as entry id "<seq>-0"; meta "seq"
-- is the last seq published, "entries" the most the log keeps, "retention_ms" its age limit.
local function first_seq()
  local e = redis.call('XRANGE', S, '-', '+', 'COUNT', 1)
  if e[1] then return seq_of(e[1][1]) end
  return tonumber(redis.call('HGET', P .. 'meta', 'seq') or '0') + 1
end
-- drop the messages older than retention (counted in "dropped"), oldest first
local function trim_old(now)
  local ret = tonumber(redis.call('HGET', P .. 'meta', 'retention_ms') or '0') or 0
  if ret <= 0 then return end
  local cutoff = now - ret
  while true do
    local e = redis.call('XRANGE', S, '-', '+', 'COUNT', 128)
    local k = 0
    for _, x in ipairs(e) do
      local _, _, t = struct.unpack('<BBd', field(x[2], 'm'))
      if t >= cutoff then break end
      k = k + 1
    end
    if k == 0 then return end
    redis.call('XTRIM', S, 'MINID', (seq_of(e[k][1]) + 1) .. '-0')
    redis.call('HINCRBY', P .. 'meta', 'dropped', k)
    if k < #e then return end
  end
end
-- {group name -> the seq it delivered last}
local function group_seqs()
  local out = {}
  if redis.call('EXISTS', S) == 0 then return out end
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', S)) do
    out[field(g, 'name')] = seq_of(field(g, 'last-delivered-id'))
  end
  return out
end
if KEYS[2] then
  G, L, W, DL, META, TOPIC = 'g:' .. KEYS[2], P .. 'l:' .. KEYS[2], P .. 'w:' .. KEYS[2], P .. 'dl:' .. KEYS[2],
    P .. 'sub:' .. KEYS[2], true
  SUBGONE = redis.call('EXISTS', META) == 0
end
