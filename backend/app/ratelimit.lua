-- Many hits in one call. KEYS are the buckets, each once; ARGV[1] is now, ARGV[2] the hits,
-- "<key index> <rate> <burst>;" each (one argument: what a call costs the node is mostly
-- per argument). Hits are taken in order, so two on one bucket count as two.
-- Returns each hit's retry_after, '0' when allowed.
local now = tonumber(ARGV[1])
local tats, changed, answers = {}, {}, {}
for i, rate, burst in string.gmatch(ARGV[2], '(%d+) ([^ ]+) ([^;]+);') do
  i = tonumber(i)
  local interval = 1.0 / tonumber(rate)
  local tat = tats[i] or tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local allow_at = tat - (tonumber(burst) - 1) * interval
  if now < allow_at then
    answers[#answers + 1] = tostring(allow_at - now)
  else
    tat = tat + interval
    changed[i] = true
    answers[#answers + 1] = '0'
  end
  tats[i] = tat
end
for i in pairs(changed) do
  local tat = tats[i]
  redis.call('SET', KEYS[i], tostring(tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
end
return answers
