-- Puts a parked meta back: undoes take_offline.lua after a forced rebuild
-- failed or was stopped (the event issues again from the state it had, as
-- if the rebuild had never started), or makes a sharded event's rebuilt
-- shard live once every shard is installed. What the rebuild staged is
-- dropped (also when there is nothing to put back).
--
-- KEYS[1] couponMeta:{E}  KEYS[2] couponMetaOffline:{E}  KEYS[3..] rebuild's staging keys
-- ARGV[1] the rebuild's id  ARGV[2] the generation the parked meta must
--   hold ('' for any: putting the state before the rebuild back)
-- Returns 1 back online, 0 when it was live already, -1 when nothing was
-- parked, -2 when the parked meta is another rebuild's or of another
-- generation (nothing changed).
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  for i = 3, #KEYS do redis.call('DEL', KEYS[i]) end
  return -1
end
local parked = redis.call('HMGET', KEYS[2], 'rebuilder', 'gen')
if (parked[1] and parked[1] ~= ARGV[1]) or (ARGV[2] ~= '' and (parked[2] or '') ~= ARGV[2]) then
  return -2
end
for i = 3, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('RENAME', KEYS[2], KEYS[1])
redis.call('HDEL', KEYS[1], 'rebuilder')
return 1
