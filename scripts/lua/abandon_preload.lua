-- Ends a preload job that will not go live: drops its staging list and, if
-- it still holds it, its fence, so it can never make the event live; after
-- this the job's rows may be deleted from PostgreSQL. When the event is live
-- already it changes nothing and says with which preload id (a job that
-- went live must not be undone).
--
-- KEYS[1] couponMeta:{E}  KEYS[2] couponPreload:{E}  KEYS[3] the job's staging list
-- ARGV[1] the job's preload id
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'LIVE', redis.call('HGET', KEYS[1], 'preload_id') or ''}
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
redis.call('DEL', KEYS[3])
return {'ABANDONED', ''}
