-- Ends a preload job that will not go live: drops its staging list and, if
-- it still holds it, its fence, so it can never make the event live; after
-- this the job's rows may be deleted from PostgreSQL. When the event is live
-- already it changes nothing and says with which preload id (a job that
-- went live must not be undone).
--
-- A fence held by another id is reported, and dropped (with its staging
-- list) only when the caller names that id in ARGV[2]: a job PostgreSQL
-- still names as the event's only holder knows any other id is a dead
-- predecessor's (compare-and-delete, so a fence passed on meanwhile stays).
--
-- KEYS[1] couponMeta:{E}  KEYS[2] couponPreload:{E}  KEYS[3] the job's staging list
-- KEYS[4] the stale holder's staging list (or the job's again)
-- ARGV[1] the job's preload id  ARGV[2] a stale holder's id to drop, or ''
-- Returns {'LIVE', id}, {'FENCED', holder} (abandoned; another id holds
-- the fence) or {'ABANDONED', ''}.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'LIVE', redis.call('HGET', KEYS[1], 'preload_id') or ''}
end
redis.call('DEL', KEYS[3])
local owner = redis.call('GET', KEYS[2])
if owner == ARGV[1] or (owner and ARGV[2] ~= '' and owner == ARGV[2]) then
  redis.call('DEL', KEYS[2], KEYS[4])
  return {'ABANDONED', ''}
end
if owner then
  return {'FENCED', owner}
end
return {'ABANDONED', ''}
