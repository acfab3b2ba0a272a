-- Routes a batch of frames to the other nodes that hold sockets of their users.
-- ARGV: claims prefix, channel prefix, this node, and the frames,
-- "<users>\n<frame>\n<users>\n<frame>..." with each frame's users comma-separated (one
-- argument: what a call costs the node is mostly per argument; frames are compact JSON,
-- so never hold a raw newline). For each frame it finds the other nodes with a claim on
-- any of its users (expired claims too: a node that has no socket of the user drops the
-- frame) and publishes to each such node's channel, once per call, the same format,
-- holding only that node's users and frames. Returns how many nodes it published to.
local claims_prefix, channel_prefix, me, data = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local claims, out, order = {}, {}, {}
local pos, size = 1, #data
while pos <= size do
  local users_end = string.find(data, '\n', pos, true)
  local frame_end = string.find(data, '\n', users_end + 1, true) or size + 1
  local users = string.sub(data, pos, users_end - 1)
  local frame = string.sub(data, users_end + 1, frame_end - 1)
  pos = frame_end + 1
  local per = {}
  for uid in string.gmatch(users, '[^,]+') do
    local nodes = claims[uid]
    if nodes == nil then
      nodes = redis.call('ZRANGE', claims_prefix .. uid, 0, -1)
      claims[uid] = nodes
    end
    for _, node in ipairs(nodes) do
      if node ~= me then
        local theirs = per[node]
        if theirs == nil then
          theirs = {}
          per[node] = theirs
          if out[node] == nil then
            out[node] = {}
            order[#order + 1] = node
          end
          local parts = out[node]
          parts[#parts + 1] = theirs
          parts[#parts + 1] = frame
        end
        theirs[#theirs + 1] = uid
      end
    end
  end
end
for _, node in ipairs(order) do
  local parts = out[node]
  for k = 1, #parts, 2 do parts[k] = table.concat(parts[k], ',') end
  redis.call('PUBLISH', channel_prefix .. node, table.concat(parts, '\n'))
end
return #order
