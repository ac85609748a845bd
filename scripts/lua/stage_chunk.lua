-- Appends one chunk of a preload job's entries to the job's staging list,
-- exactly once: a retry whose first reply was lost finds the chunk there
-- already and changes nothing. Refuses a job that lost the fence.
--
-- KEYS[1] this job's staging list  KEYS[2] couponPreload:{E}
-- ARGV[1] preload id  ARGV[2] the list's length before this chunk
-- ARGV[3..] the chunk's entries
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return redis.error_reply('FENCED another preload job holds the event')
end
local before = tonumber(ARGV[2])
local n = #ARGV - 2
local len = redis.call('LLEN', KEYS[1])
if len == before + n then
  return len
end
if len ~= before then
  return redis.error_reply('STAGING_MISMATCH staged ' .. len .. ', expected ' .. before)
end
-- unpack() of more than ~8,000 values overflows Lua's C stack.
for i = 3, #ARGV, 4000 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 3999, #ARGV)))
end
return len + n
