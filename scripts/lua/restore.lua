-- Restores issuances PostgreSQL recorded and Redis has no record of (it
-- lost them: a master failed over before its replica had the write, or a
-- Redis without persistence restarted). PostgreSQL's record wins: the user
-- gets it back, finalized, so asking again answers ALREADY_ISSUED with the
-- code they were told, never a second coupon. The lost write may have left
-- the code in the queue: it is taken out, so nobody else is handed it
-- (LREM walks the queue, but this runs only for lost writes). A user who
-- has a record by now (issued again since) is left alone: PostgreSQL
-- refuses that second issuance, and supersede.lua makes the first win.
--
-- Only while the event is live in Redis (its meta exists): an event Redis
-- does not hold is rebuilt from PostgreSQL as a whole, and an offline one
-- is being rebuilt. A settled event's expiry carries over to the keys this
-- writes. Idempotent: a second run finds the records.
--
-- KEYS[1] couponIssued:{E}  KEYS[2] couponQueue:{E}  KEYS[3] couponMeta:{E}
-- ARGV: user_1, record_1 (finalized), queue entry_1, user_2, ...
-- Returns the number of users restored.
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
local restored = 0
for i = 1, #ARGV, 3 do
  local user, rec, entry = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('HSETNX', KEYS[1], user, rec) == 1 then
    redis.call('LREM', KEYS[2], 1, entry)
    restored = restored + 1
  end
end
local ttl = redis.call('PTTL', KEYS[3])
if ttl > 0 then
  for i = 1, 2 do
    if redis.call('PTTL', KEYS[i]) == -1 then redis.call('PEXPIRE', KEYS[i], ttl) end
  end
end
return restored
