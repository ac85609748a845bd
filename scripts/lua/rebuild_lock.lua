-- The lock a rebuild of an event holds while it runs, so that two rebuilds
-- of one event (two operators, a retrying wrapper) never interleave their
-- staging. It expires unless renewed, so a killed rebuild holds it up for
-- at most its lifetime; the next rebuild then finishes what it left.
--
-- KEYS[1] couponRebuild:{E}
-- ARGV[1] take | renew | release  ARGV[2] the rebuild's id  ARGV[3] lifetime ms
-- Returns 1 done; for take and renew, the holder's remaining ms (negative)
-- when another rebuild holds it.
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[2] then
  if ARGV[1] == 'release' then return 1 end
  return -redis.call('PTTL', KEYS[1])
end
if ARGV[1] == 'release' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
