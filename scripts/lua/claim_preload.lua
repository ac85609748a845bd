-- Hands the Redis half of an event's preload fence to a job, unless the
-- event is live already (then it says with which preload id). A job takes
-- the fence only from the job it replaces, or when nobody holds it, so the
-- fence passes in the order PostgreSQL granted the jobs; the replaced job's
-- staging list goes with it.
--
-- KEYS[1] couponMeta:{E}  KEYS[2] couponPreload:{E}
-- KEYS[3] the replaced job's staging list  KEYS[4] this job's staging list
-- ARGV[1] this job's preload id  ARGV[2] the replaced job's preload id ('' if none)
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'LIVE', redis.call('HGET', KEYS[1], 'preload_id') or ''}
end
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[1] and owner ~= ARGV[2] then
  return {'FENCED', owner}
end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3], KEYS[4])
return {'CLAIMED', ''}
