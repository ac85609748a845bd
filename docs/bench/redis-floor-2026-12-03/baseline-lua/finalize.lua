-- Marks issuances as recorded in PostgreSQL: the record's state byte
-- becomes F and the user leaves the pending set. Only a record that still
-- holds the same code is touched, so a stale message cannot finalize
-- anything else. PostgreSQL holding the (code, user) is the truth: a record
-- marked conflicted earlier (C) whose issuance PostgreSQL now accepted (a
-- dead letter replayed after a fix) becomes F too and leaves the conflict
-- set. Notes the time in the progress key, which tells the sweeper that
-- the finalizer is moving (see claim_stale.lua).
--
-- KEYS[1] couponIssued:{E}  KEYS[2] couponPending:{E}  KEYS[3] couponProgress:{E}
-- KEYS[4] couponConflicts:{E}
-- ARGV: user_1, code_1, user_2, code_2, ...
-- Returns the number of issuances finalized (already-final ones included).
local done = 0
local conflicts_left = {}
for i = 1, #ARGV, 2 do
  local user, code = ARGV[i], ARGV[i + 1]
  local rec = redis.call('HGET', KEYS[1], user)
  if rec and string.sub(rec, 1, #code + 1) == code .. '\t' then
    local state = string.sub(rec, -1)
    if state ~= 'F' then
      redis.call('HSET', KEYS[1], user, string.sub(rec, 1, -2) .. 'F')
    end
    if state == 'C' then
      conflicts_left[#conflicts_left + 1] = user
    end
    redis.call('ZREM', KEYS[2], user)
    done = done + 1
  end
end
if #conflicts_left > 0 then
  redis.call('SREM', KEYS[4], unpack(conflicts_left))
end
if done > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('SET', KEYS[3], now, 'PX', 3600000)
end
return done
