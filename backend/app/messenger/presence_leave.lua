-- A node lets users go: ARGV seen key, online prefix, claims prefix, the node's held key,
-- node, user... -> the users who just went offline (no other live node).
local seen, online, claims, held, node = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local gone = {}
for i = 6, #ARGV do
  local uid = ARGV[i]
  local u = claims .. uid
  local had = redis.call('ZREM', u, node)
  redis.call('SREM', held, uid)
  redis.call('HSET', seen, uid, now)
  if redis.call('ZCOUNT', u, now, '+inf') == 0 then
    redis.call('DEL', u, online .. uid)
    if had == 1 then table.insert(gone, uid) end
  end
end
return gone
