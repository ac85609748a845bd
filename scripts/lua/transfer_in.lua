-- A transfer's second step, on the target shard: the record's codes join
-- the target's queue and the transfer id is remembered, in one atomic call.
-- Idempotent by the transfer id: a re-sent call, or a finisher that finds
-- the donor's record still there (the donor's step 3 not done), adds
-- nothing twice. The donor's record is then spent: the third step drops
-- it, and it counts as holding nothing while its id is here.
--
-- KEYS[1] couponQueue:{T}  KEYS[2] couponReceived:{T} (set of transfer ids)
-- KEYS[3] couponGuard:{T}, when the caller WAITs for replicas after the call
-- ARGV[1] transfer id; ARGV[2..] the entries
-- Returns how many entries joined the queue (0 when received before).
if KEYS[3] then redis.call('SET', KEYS[3], ARGV[1], 'PX', 60000) end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return 0 end
for i = 2, #ARGV, 4000 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 3999, #ARGV)))
end
redis.call('SADD', KEYS[2], ARGV[1])
return #ARGV - 1
