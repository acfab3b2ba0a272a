-- A node's heartbeat: ARGV nodes key, online prefix, claims prefix, node, ttl_ms, user...
-- -> the users whose claim was not there any more (Redis restarted, or a survivor took
-- this node for dead): the caller joins them again. Only refreshes: a user who left
-- meanwhile is not brought back.
local nodes, online, claims, node = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ttl = tonumber(ARGV[5])
redis.call('ZADD', nodes, now + ttl, node)
local missing = {}
for i = 6, #ARGV do
  local uid = ARGV[i]
  local u = claims .. uid
  if redis.call('ZSCORE', u, node) then
    redis.call('ZADD', u, now + ttl, node)
    redis.call('PEXPIRE', u, 3 * ttl)
    redis.call('SET', online .. uid, '1', 'PX', ttl)
  else
    table.insert(missing, uid)
  end
end
return missing
