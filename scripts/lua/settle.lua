-- Settles an event whose window has ended and that has nothing pending:
-- every key of it gets the retention expiry. Decided here, atomically, with
-- the clock and the window Issue uses (Redis TIME and the meta hash), so a
-- server's skewed clock or a control recorded in PostgreSQL but not yet
-- here cannot settle an event that still issues; and an extension
-- (control.lua) either comes before (the event is open: nothing happens)
-- or after (it takes the expiry off again).
--
-- KEYS[1] couponMeta:{E}  KEYS[2] couponPending:{E}  KEYS[3..] the event's other keys
-- ARGV[1] retention ms
-- Returns the meta's ends_at (unix ms) when settled, 0 when the event is
-- open or has pending issuances, -1 when Redis holds no meta of it.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ends = tonumber(redis.call('HGET', KEYS[1], 'ends_at'))
if now < ends or redis.call('ZCARD', KEYS[2]) > 0 then
  return 0
end
-- Once: a pass that finds them expiring already leaves the expiry as it is.
for i = 1, #KEYS do
  if redis.call('PTTL', KEYS[i]) == -1 then redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
end
return ends
