-- Takes an event offline for a forced rebuild: its meta hash moves aside,
-- so Issue answers EVENT_NOT_FOUND and changes nothing until the rebuilt
-- state goes live. KEYS[1] couponMeta:{E}  KEYS[2] couponMetaOffline:{E}
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[2])
  return 1
end
return 0
