-- Fan-out on a Redis Cluster, one part of the key space: which nodes hold sockets of
-- these users. ARGV: the part's claims prefix, user... -> one list of nodes per user, in
-- order (expired claims too, as fanout_route.lua: a node without the socket drops it).
local claims_prefix = ARGV[1]
local out = {}
for i = 2, #ARGV do
  out[#out + 1] = redis.call('ZRANGE', claims_prefix .. ARGV[i], 0, -1)
end
return out
