-- Undoes take_offline.lua after a forced rebuild failed or was stopped: the
-- parked meta hash goes back, and the event issues again from the state it
-- had, as if the rebuild had never started; what the rebuild staged is
-- dropped (also when there is nothing to put back).
--
-- KEYS[1] couponMeta:{E}  KEYS[2] couponMetaOffline:{E}  KEYS[3..] rebuild's staging keys
-- Returns 1 back online, 0 when it was live already, -1 when nothing was parked.
for i = 3, #KEYS do redis.call('DEL', KEYS[i]) end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  return -1
end
redis.call('RENAME', KEYS[2], KEYS[1])
return 1
