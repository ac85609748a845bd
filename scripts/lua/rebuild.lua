-- Installs an event's Redis state rebuilt from PostgreSQL, in one step:
-- staged queue, issued hash and pending set replace the live keys and the
-- meta hash is written, which makes the event live again. Refuses when the
-- event is live, so it can never overwrite issuances made meanwhile.
--
-- The controls come from PostgreSQL as read when the rebuild started; a
-- control applied to the parked meta since (control.lua takes controls
-- while a rebuild has the event offline) is newer and is kept.
--
-- KEYS[1] couponRebuildStaging:{E}  KEYS[2] couponIssuedStaging:{E}
-- KEYS[3] couponPendingStaging:{E}  KEYS[4] couponQueue:{E}
-- KEYS[5] couponIssued:{E}          KEYS[6] couponPending:{E}
-- KEYS[7] couponMeta:{E}            KEYS[8] couponMetaOffline:{E}
-- KEYS[9] couponConflicts:{E}
-- KEYS[10] couponTransfers:{E}  KEYS[11] couponSent:{E}  KEYS[12] couponReceived:{E}
-- ARGV[1] starts_at ms  ARGV[2] ends_at ms  ARGV[3] total
-- ARGV[4] expected queue length  ARGV[5] expected issued count
-- ARGV[6] the preload id PostgreSQL records for the event
-- ARGV[7] 1 when the event is paused, else 0  ARGV[8] its control number
-- ARGV[9] the rebuild's generation (a shard of a sharded event): the
--   transfer records of the old state go, and a late step of one of them
--   finds another generation and adds nothing (see transfer_in.lua)
-- ARGV[10] 1 on shard 0 of a sharded event: every shard is made
--   (shards_made, see shard_meta.lua), else 0
-- ARGV[11] 1 to install the state parked offline (a shard of a sharded
--   event: the rebuild brings the shards online once every one is in,
--   so no shard's new state ever issues beside another's old), else 0
-- ARGV[12] the rebuild's id: a parked meta another rebuild names (see
--   take_offline.lua) is refused (FENCED), and a state installed parked
--   names this rebuild
-- ARGV[13..] users whose staged record is conflicted (state C)
if redis.call('EXISTS', KEYS[7]) == 1 then
  return redis.error_reply('EVENT_LIVE event is live; take it offline first')
end
local owner = redis.call('HGET', KEYS[8], 'rebuilder')
if owner and owner ~= ARGV[12] then
  return redis.error_reply('FENCED another rebuild of the event took it offline since')
end
if redis.call('LLEN', KEYS[1]) ~= tonumber(ARGV[4]) or redis.call('HLEN', KEYS[2]) ~= tonumber(ARGV[5]) then
  return redis.error_reply('STAGING_INCOMPLETE staged state does not match')
end
local ends, paused, seq = ARGV[2], ARGV[7], ARGV[8]
local parked = redis.call('HMGET', KEYS[8], 'ends_at', 'paused', 'control_seq')
if parked[3] and tonumber(parked[3]) > tonumber(seq) then
  ends, seq = parked[1], parked[3]
  paused = parked[2] == '1' and '1' or '0'
end
redis.call('DEL', KEYS[4], KEYS[5], KEYS[6], KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12])
for i = 13, #ARGV do redis.call('SADD', KEYS[9], ARGV[i]) end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('RENAME', KEYS[1], KEYS[4]) end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('RENAME', KEYS[2], KEYS[5]) end
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('RENAME', KEYS[3], KEYS[6]) end
-- The staging keys expire unless installed; installed, they live.
redis.call('PERSIST', KEYS[4])
redis.call('PERSIST', KEYS[5])
redis.call('PERSIST', KEYS[6])
local meta = ARGV[11] == '1' and KEYS[8] or KEYS[7]
redis.call('HSET', meta, 'starts_at', ARGV[1], 'ends_at', ends, 'total', ARGV[3],
  'preload_id', ARGV[6], 'control_seq', seq, 'gen', ARGV[9])
if paused == '1' then redis.call('HSET', meta, 'paused', '1') end
if ARGV[10] == '1' then redis.call('HSET', meta, 'shards_made', '1') end
if ARGV[11] == '1' then redis.call('HSET', meta, 'rebuilder', ARGV[12]) end
return 1
