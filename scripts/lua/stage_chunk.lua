-- Appends one part of a preload job's chunk to the job's staging list,
-- exactly once: a retry whose first reply was lost finds the part there
-- already and changes nothing. Only this job appends to its list, in
-- order, and a chunk's parts are sent in order, so a list already longer
-- than this part's end holds it, and later parts of the same chunk (a
-- retried chunk whose earlier attempt got further than its reply), if its
-- first and last entries are where this part's go (codes are unique, so
-- another fill's list never matches). Returns
-- the list's length as of this part's end. Refuses a job that lost the
-- fence.
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
if len >= before + n then
  -- Only if the entries there are this part's: a list that survived a
  -- reset (a failover that lost the DEL) holds another fill's codes.
  if redis.call('LINDEX', KEYS[1], before) == ARGV[3]
      and redis.call('LINDEX', KEYS[1], before + n - 1) == ARGV[#ARGV] then
    return before + n
  end
  return redis.error_reply('STAGING_MISMATCH staged ' .. len .. ' entries, not this part at ' .. before)
end
if len ~= before then
  return redis.error_reply('STAGING_MISMATCH staged ' .. len .. ', expected ' .. before)
end
-- unpack() of more than ~8,000 values overflows Lua's C stack.
for i = 3, #ARGV, 4000 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 3999, #ARGV)))
end
return len + n
