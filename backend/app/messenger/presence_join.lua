-- A node claims users: ARGV nodes key, seen key, online prefix, claims prefix, the node's
-- held key, node, ttl_ms, user... -> the users who just came online (no other node).
local nodes, seen, online, claims, held, node = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local ttl = tonumber(ARGV[7])
redis.call('ZADD', nodes, now + ttl, node)
local came = {}
for i = 8, #ARGV do
  local uid = ARGV[i]
  local u = claims .. uid
  local had = redis.call('ZSCORE', u, node)
  redis.call('ZADD', u, now + ttl, node)
  redis.call('PEXPIRE', u, 3 * ttl)
  redis.call('SET', online .. uid, '1', 'PX', ttl)
  redis.call('SADD', held, uid)
  redis.call('HSET', seen, uid, now)
  if not had and redis.call('ZCOUNT', u, now, '+inf') == 1 then table.insert(came, uid) end
end
return came
