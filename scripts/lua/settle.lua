-- Settles an event whose window has ended and that has nothing pending:
-- every key of it gets the retention expiry. Decided here, atomically, with
-- the clock and the window Issue uses (Redis TIME and the meta hash), so a
-- server's skewed clock or a control recorded in PostgreSQL but not yet
-- here cannot settle an event that still issues; and an extension
-- (control.lua) either comes before (the event is open: nothing happens)
-- or after (it takes the expiry off again).
--
-- A shard of a sharded event with an open transfer record is not settled
-- either (its codes are on their way). An event of several shards is
-- first checked on every shard (ARGV[2] = 'check': nothing is written),
-- and only then settled shard by shard, so no shard's keys start expiring
-- while another shard is still open.
--
-- KEYS[1] couponMeta:{E}  KEYS[2] couponPending:{E}  KEYS[3] couponTransfers:{E}
-- KEYS[4..] the event's other keys
-- ARGV[1] retention ms  ARGV[2] 'check' to check only
-- Returns the meta's ends_at (unix ms) when settled, 0 when the event is
-- open or has pending issuances, -1 when Redis holds no meta of it.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ends = tonumber(redis.call('HGET', KEYS[1], 'ends_at'))
if now < ends or redis.call('ZCARD', KEYS[2]) > 0 or redis.call('HLEN', KEYS[3]) > 0 then
  return 0
end
if ARGV[2] == 'check' then return ends end
-- Once: a pass that finds them expiring already leaves the expiry as it is.
for i = 1, #KEYS do
  if redis.call('PTTL', KEYS[i]) == -1 then redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
end
return ends
