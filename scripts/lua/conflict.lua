-- Marks issuances PostgreSQL refused (it records their code for another
-- user, or the code is not the event's) as conflicted: the record's state
-- byte becomes C, the user leaves the pending set (so the sweeper stops
-- republishing it) and joins the event's conflict set (counted by
-- GetEvent, listed by reconcile). A user Redis has no record of (it lost
-- it) gets the refused record, conflicted, so the case stays visible. A
-- record holding another code is left alone: the message is stale.
-- Idempotent.
--
-- Nothing written outlives the event's keys: while the event is settled
-- (its meta expiring) a key this creates gets the meta's expiry; when
-- Redis does not hold the event at all (expired after retention, or
-- unknown), the retention.
--
-- KEYS[1] couponIssued:{E}  KEYS[2] couponPending:{E}  KEYS[3] couponConflicts:{E}
-- KEYS[4] couponMeta:{E}    KEYS[5] couponMetaOffline:{E}
-- ARGV[1] retention ms; then user_1, code_1, conflicted record_1, user_2, ...
-- Returns the number of issuances now conflicted (already-marked ones included).
local marked = 0
for i = 2, #ARGV, 3 do
  local user, code = ARGV[i], ARGV[i + 1]
  local rec = redis.call('HGET', KEYS[1], user)
  local state = nil
  if not rec then
    redis.call('HSET', KEYS[1], user, ARGV[i + 2])
    state = 'C'
  elseif string.sub(rec, 1, #code + 1) == code .. '\t' then
    state = string.sub(rec, -1)
    if state == 'P' then
      redis.call('HSET', KEYS[1], user, string.sub(rec, 1, -2) .. 'C')
      state = 'C'
    end
  end
  if state == 'C' then
    redis.call('ZREM', KEYS[2], user)
    redis.call('SADD', KEYS[3], user)
    marked = marked + 1
  end
end
local ttl = tonumber(ARGV[1])
for _, meta in ipairs({KEYS[4], KEYS[5]}) do
  if redis.call('EXISTS', meta) == 1 then
    ttl = redis.call('PTTL', meta)
    break
  end
end
if ttl > 0 then
  for i = 1, 3 do
    if redis.call('PTTL', KEYS[i]) == -1 then redis.call('PEXPIRE', KEYS[i], ttl) end
  end
end
return marked
