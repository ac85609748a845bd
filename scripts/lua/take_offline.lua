-- Takes an event offline for a forced rebuild: its meta hash moves aside,
-- so Issue changes nothing until the rebuilt state goes live (a user
-- holding a coupon still gets it; others are told UNAVAILABLE, try again),
-- and controls go to the parked meta (control.lua), which the rebuild keeps. KEYS[1] couponMeta:{E}  KEYS[2] couponMetaOffline:{E}
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[2])
  return 1
end
return 0
