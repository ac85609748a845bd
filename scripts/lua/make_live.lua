-- Makes a preloaded event live in one step, so an Issue never sees a
-- half-loaded queue: the job's staging list becomes the queue and the meta
-- hash (whose presence is what makes the event exist for Issue) is written
-- with the job's preload id. Only the job holding the fence can do it, and
-- doing it again is harmless: a retry after a lost reply answers 2.
--
-- KEYS[1] this job's staging list  KEYS[2] couponQueue:{E}  KEYS[3] couponMeta:{E}
-- KEYS[4] couponIssued:{E}  KEYS[5] couponPending:{E}  KEYS[6] couponPreload:{E}
-- ARGV[1] starts_at ms  ARGV[2] ends_at ms  ARGV[3] total  ARGV[4] preload id
if redis.call('EXISTS', KEYS[3]) == 1 then
  if redis.call('HGET', KEYS[3], 'preload_id') == ARGV[4] then
    return 2
  end
  return redis.error_reply('EVENT_EXISTS event is already live in Redis')
end
if redis.call('GET', KEYS[6]) ~= ARGV[4] then
  return redis.error_reply('FENCED another preload job holds the event')
end
local staged = redis.call('LLEN', KEYS[1])
if staged ~= tonumber(ARGV[3]) then
  return redis.error_reply('STAGING_INCOMPLETE staged ' .. staged .. ' of ' .. ARGV[3])
end
-- Leftovers of an event that was never made live must not leak into this one.
redis.call('DEL', KEYS[2], KEYS[4], KEYS[5])
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[3], 'starts_at', ARGV[1], 'ends_at', ARGV[2], 'total', ARGV[3],
  'preload_id', ARGV[4])
redis.call('DEL', KEYS[6])
return 1
