-- Makes a preloaded event live in one step, so an Issue never sees a
-- half-loaded queue: the staged list becomes the queue and the meta hash
-- (whose presence is what makes the event exist for Issue) is written.
--
-- KEYS[1] couponStaging:{E}  KEYS[2] couponQueue:{E}  KEYS[3] couponMeta:{E}
-- KEYS[4] couponIssued:{E}   KEYS[5] couponPending:{E}
-- ARGV[1] starts_at ms  ARGV[2] ends_at ms  ARGV[3] total
if redis.call('EXISTS', KEYS[3]) == 1 then
  return redis.error_reply('EVENT_EXISTS event is already live in Redis')
end
local staged = redis.call('LLEN', KEYS[1])
if staged ~= tonumber(ARGV[3]) then
  return redis.error_reply('STAGING_INCOMPLETE staged ' .. staged .. ' of ' .. ARGV[3])
end
-- Leftovers of an event that was never made live must not leak into this one.
redis.call('DEL', KEYS[2], KEYS[4], KEYS[5])
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[3], 'starts_at', ARGV[1], 'ends_at', ARGV[2], 'total', ARGV[3])
return 1
