-- Gives a shard of a sharded event (shard 1 and up) the event's meta: the
-- window, the total and the controls, as the event's own meta (shard 0's)
-- holds them. A shard whose meta is missing gets it whole; one that has it
-- takes the controls only when they are newer (control_seq), like
-- control.lua, so a copy applied twice, late or out of order never undoes
-- a newer one. Called only after shard 0's meta was read, and shard 0 is
-- live before any other shard: no shard is ever live before the event.
--
-- KEYS[1] couponMeta:{S}  KEYS[2..] the shard's other keys (see control.lua)
-- ARGV[1] starts_at  ARGV[2] ends_at (unix ms)  ARGV[3] total
-- ARGV[4] 1 paused, 0 not  ARGV[5] control_seq
-- ARGV[6] 1 when PostgreSQL records the event settled, else 0
-- ARGV[7] 1 while the preload makes the shards (shard 0's meta has no
--   shards_made yet), else 0: a shard whose meta is missing after that
--   was lost (its master lost its data) and is not made again, empty: its
--   users' records are gone with it, and its users hear what PostgreSQL
--   holds, as for an event Redis lost.
-- Returns 1 applied, 0 already as new, -1 missing and not made (lost).
local meta = KEYS[1]
local fresh = redis.call('EXISTS', meta) == 0
if fresh and ARGV[7] ~= '1' then return -1 end
if not fresh and tonumber(redis.call('HGET', meta, 'control_seq') or '0') >= tonumber(ARGV[5]) then
  return 0
end
redis.call('HSET', meta, 'starts_at', ARGV[1], 'ends_at', ARGV[2], 'total', ARGV[3],
  'control_seq', ARGV[5])
if ARGV[4] == '1' then
  redis.call('HSET', meta, 'paused', '1')
else
  redis.call('HDEL', meta, 'paused')
end
if fresh then return 1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[6] ~= '1' and tonumber(ARGV[2]) > now then
  for i = 1, #KEYS do redis.call('PERSIST', KEYS[i]) end
end
return 1
