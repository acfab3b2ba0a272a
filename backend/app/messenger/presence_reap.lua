-- A survivor takes over a dead node: ARGV nodes key, seen key, online prefix, claims
-- prefix, held prefix, ttl_ms, batch -> nil, or {dead node, users who went offline}.
-- SPOP hands each of a dead node's users to exactly one survivor, so nobody is announced
-- twice and no lock is needed; the node is forgotten once its set is empty.
local nodes, seen, online, claims, held = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ttl, batch = tonumber(ARGV[6]), tonumber(ARGV[7])
local dead = redis.call('ZRANGEBYSCORE', nodes, '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1)
if #dead == 0 then return false end
local node = dead[1]
local last_seen = tonumber(dead[2]) - ttl
local set = held .. node
local result = {node}
for _, uid in ipairs(redis.call('SPOP', set, batch)) do
  local u = claims .. uid
  if redis.call('ZREM', u, node) == 1 and redis.call('ZCOUNT', u, now, '+inf') == 0 then
    redis.call('DEL', u, online .. uid)
    local last = tonumber(redis.call('HGET', seen, uid) or 0)
    if last < last_seen then redis.call('HSET', seen, uid, last_seen) end
    table.insert(result, uid)
  end
end
if redis.call('SCARD', set) == 0 then redis.call('ZREM', nodes, node) end
return result
