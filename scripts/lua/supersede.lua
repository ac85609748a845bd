-- Resolves issuances PostgreSQL refused because their user holds another
-- coupon of the event there (Redis had lost the user's record, and the
-- user was issued again): PostgreSQL's coupon wins. The user's record
-- becomes that coupon, finalized; the user leaves the pending and conflict
-- sets; the refused code, when PostgreSQL says nobody holds it (the caller
-- passes its queue entry only then), goes back to the queue. The case is
-- kept in the superseded hash (user -> refused code, held code) for
-- reconcile to report. Idempotent: once the record holds PostgreSQL's
-- coupon, a redelivered message changes nothing (the refused code is not
-- queued twice); a record holding a third code is left alone (a stale
-- message). A user Redis has no record of gets PostgreSQL's; the refused
-- code is then not queued (where it is cannot be known here; reconcile
-- sees it).
--
-- Nothing written outlives the event's keys: while the event is settled
-- (its meta expiring) a key this creates gets the meta's expiry; when
-- Redis does not hold the event at all, the retention.
--
-- KEYS[1] couponIssued:{E}  KEYS[2] couponPending:{E}  KEYS[3] couponConflicts:{E}
-- KEYS[4] couponQueue:{E}   KEYS[5] couponSuperseded:{E}
-- KEYS[6] couponMeta:{E}    KEYS[7] couponMetaOffline:{E}
-- ARGV[1] retention ms; then per issuance: user, refused code, its queue
-- entry ('' when the code is not free), PostgreSQL's record of the user (finalized)
-- Returns the number of refused codes queued again.
local live = redis.call('EXISTS', KEYS[6]) == 1 or redis.call('EXISTS', KEYS[7]) == 1
local queued = 0
for i = 2, #ARGV, 4 do
  local user, code, entry, held = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local rec = redis.call('HGET', KEYS[1], user)
  if not rec or string.sub(rec, 1, #code + 1) == code .. '\t' then
    redis.call('HSET', KEYS[1], user, held)
    redis.call('ZREM', KEYS[2], user)
    redis.call('SREM', KEYS[3], user)
    redis.call('HSET', KEYS[5], user, code .. '\t' .. string.match(held, '^[^\t]*'))
    if rec and live and entry ~= '' then
      redis.call('RPUSH', KEYS[4], entry)
      queued = queued + 1
    end
  end
end
local ttl = tonumber(ARGV[1])
if live then
  local meta = KEYS[6]
  if redis.call('EXISTS', meta) == 0 then meta = KEYS[7] end
  ttl = redis.call('PTTL', meta)
end
if ttl > 0 then
  for _, k in ipairs({KEYS[1], KEYS[4], KEYS[5]}) do
    if redis.call('PTTL', k) == -1 then redis.call('PEXPIRE', k, ttl) end
  end
end
return queued
