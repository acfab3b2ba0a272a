-- Put before each presence script: times come from Redis's clock, not the nodes'.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
