-- Brings an event's meta hash up to the operators' controls PostgreSQL
-- recorded: the window's end and the pause, as of control number ARGV[1].
-- Every control is recorded in PostgreSQL first, with the next number;
-- a number the meta already holds (or a newer one) changes nothing, so a
-- control applied twice, late or out of order (a retried call, the
-- sweeper's repair, a rebuild's copy) never undoes a newer one. While a
-- forced rebuild has the event offline, its parked meta takes the control
-- and the rebuild keeps it.
--
-- An end in the future takes the retention expiry off the event's keys (an
-- event that had ended and settled is open again: an extension, which
-- also clears the settlement in PostgreSQL); any other control leaves
-- their expiry as it is, and so does every control of an event PostgreSQL
-- records settled (ARGV[4]: a close whose time came from a clock ahead of
-- Redis's must not make a settled event's keys live forever).
--
-- KEYS[1] couponMeta:{E}  KEYS[2] couponMetaOffline:{E}  KEYS[3..] the event's other keys
-- ARGV[1] control number  ARGV[2] ends_at (unix ms)  ARGV[3] 1 paused, 0 not
-- ARGV[4] 1 when PostgreSQL records the event settled, else 0
-- Returns 1 applied, 0 already as new; an error reply NOT_LIVE when Redis
-- holds no meta of the event.
local meta = KEYS[1]
if redis.call('EXISTS', meta) == 0 then
  meta = KEYS[2]
  if redis.call('EXISTS', meta) == 0 then
    return redis.error_reply('NOT_LIVE the event is not live in redis')
  end
end
local seq = tonumber(ARGV[1])
if tonumber(redis.call('HGET', meta, 'control_seq') or '0') >= seq then
  return 0
end
redis.call('HSET', meta, 'ends_at', ARGV[2], 'control_seq', ARGV[1])
if ARGV[3] == '1' then
  redis.call('HSET', meta, 'paused', '1')
else
  redis.call('HDEL', meta, 'paused')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[4] ~= '1' and tonumber(ARGV[2]) > now then
  for i = 1, #KEYS do redis.call('PERSIST', KEYS[i]) end
end
return 1
