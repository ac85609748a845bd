-- A transfer's third step, on the donor shard, once the target received
-- its codes (transfer_in.lua): the spent record goes and its id joins the
-- sent set, at once, so that a re-sent step 1 of the id moves nothing and
-- the open records stay few. Idempotent.
--
-- KEYS[1] couponTransfers:{D}  KEYS[2] couponSent:{D}
-- ARGV[1] transfer id
redis.call('SADD', KEYS[2], ARGV[1])
return redis.call('HDEL', KEYS[1], ARGV[1])
