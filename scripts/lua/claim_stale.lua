-- Claims pending issuances older than an age for republishing. Claiming
-- re-scores them to now, atomically, so with several servers sweeping at
-- once each issuance is claimed by one of them per age window (a lock with
-- expiry per issuance), and a failed republish is retried one age later.
--
-- KEYS[1] couponPending:{E}  KEYS[2] couponIssued:{E}
-- ARGV[1] age ms  ARGV[2] max claims
-- Returns user_1, record_1, user_2, record_2, ... Users whose record is gone
-- or already finalized are dropped from the pending set instead.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local users = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]), 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, user in ipairs(users) do
  local rec = redis.call('HGET', KEYS[2], user)
  if rec and string.sub(rec, -1) == 'P' then
    redis.call('ZADD', KEYS[1], 'XX', now, user)
    out[#out + 1] = user
    out[#out + 1] = rec
  else
    redis.call('ZREM', KEYS[1], user)
  end
end
return out
