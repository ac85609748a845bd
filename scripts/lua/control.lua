-- Applies an operator's control to a live event, atomically: pause,
-- resume, or a new end of the window (close and extend). Issue reads the
-- same meta hash, so the next script call sees the change.
--
-- A new end also takes the expiry off the event's keys (an event that had
-- ended and settled is reopened; see the sweeper's retention).
--
-- KEYS[1] couponMeta:{E}; KEYS[2..] the event's other keys
-- ARGV[1] pause | resume | ends_at   ARGV[2] the new ends_at (unix ms), for ends_at
-- Returns 1; an error reply NOT_LIVE when the event is not live in Redis.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('NOT_LIVE the event is not live in redis')
end
local action = ARGV[1]
if action == 'pause' then
  redis.call('HSET', KEYS[1], 'paused', '1')
elseif action == 'resume' then
  redis.call('HDEL', KEYS[1], 'paused')
elseif action == 'ends_at' then
  redis.call('HSET', KEYS[1], 'ends_at', ARGV[2])
  for i = 1, #KEYS do redis.call('PERSIST', KEYS[i]) end
else
  return redis.error_reply('BAD_ACTION ' .. action)
end
return 1
