-- Takes an event (or one shard of it) offline for a forced rebuild: its
-- meta hash moves aside, so Issue changes nothing until the rebuilt state
-- goes live (a user holding a coupon still gets it; others are told
-- UNAVAILABLE, try again), and controls go to the parked meta
-- (control.lua), which the rebuild keeps. The parked meta names the
-- rebuild that parked it last (also one parked before, by a rebuild that
-- died): an earlier rebuild that lost its lock and goes on is fenced off,
-- since rebuild.lua and bring_online.lua refuse a parked meta another
-- rebuild names.
--
-- KEYS[1] couponMeta:{E}  KEYS[2] couponMetaOffline:{E}
-- ARGV[1] the rebuild's id
-- Returns 1 moved, 0 not live (parked already, or absent).
local moved = 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[2])
  moved = 1
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HSET', KEYS[2], 'rebuilder', ARGV[1])
end
return moved
