-- A transfer's second step, on the target shard: the record's codes join
-- the target's queue and the transfer id is remembered, in one atomic call.
-- Idempotent by the transfer id: a re-sent call, or a finisher that finds
-- the donor's record still there (the donor's step 3 not done), adds
-- nothing twice. The donor's record is then spent: the third step drops
-- it, and it counts as holding nothing while its id is here.
--
-- Lands only at a target of the donor's generation (see transfer_out.lua):
-- a target without meta (offline for a rebuild, or lost) or rebuilt since
-- step 1 takes nothing; the record stays, and a rebuild drops it (its
-- codes are in the rebuilt queues already).
--
-- KEYS[1] couponQueue:{T}  KEYS[2] couponReceived:{T} (set of transfer ids)
-- KEYS[3] couponMeta:{T}
-- KEYS[4] couponGuard:{T}, when the caller WAITs for replicas after the call
-- ARGV[1] transfer id  ARGV[2] the donor's generation; ARGV[3..] the entries
-- Returns how many entries joined the queue (0 when received before), or
-- -1: the target is offline, lost or of another generation.
if KEYS[4] then redis.call('SET', KEYS[4], ARGV[1], 'PX', 60000) end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[3]) == 0 or (redis.call('HGET', KEYS[3], 'gen') or '') ~= ARGV[2] then
  return -1
end
for i = 3, #ARGV, 4000 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 3999, #ARGV)))
end
redis.call('SADD', KEYS[2], ARGV[1])
return #ARGV - 2
