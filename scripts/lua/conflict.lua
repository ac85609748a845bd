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
-- Redis calls per call do not grow with the batch: one HMGET of every
-- user, then one HSET, one ZREM and one SADD of them all (in slices, as
-- unpack() of more than ~8,000 values overflows Lua's C stack). Items are
-- decided in order against the records as the earlier items left them, so
-- a user named twice behaves as two calls would.
--
-- KEYS[1] couponIssued:{E}  KEYS[2] couponPending:{E}  KEYS[3] couponConflicts:{E}
-- KEYS[4] couponMeta:{E}    KEYS[5] couponMetaOffline:{E}
-- ARGV[1] retention ms; then user_1, code_1, conflicted record_1, user_2, ...
-- Returns the number of issuances now conflicted (already-marked ones included).
local SLICE = 4000
local function each_slice(cmd, key, list)
  for from = 1, #list, SLICE do
    redis.call(cmd, key, unpack(list, from, math.min(from + SLICE - 1, #list)))
  end
end

local n = (#ARGV - 1) / 3
local users = {}
for i = 1, n do users[i] = ARGV[3 * i - 1] end
local recs = {}
for from = 1, n, SLICE do
  local part = redis.call('HMGET', KEYS[1], unpack(users, from, math.min(from + SLICE - 1, n)))
  for j = 1, #part do
    local user = users[from + j - 1]
    if recs[user] == nil then recs[user] = part[j] end
  end
end

local marked = 0
local changed, order, conflicted = {}, {}, {}
for i = 1, n do
  local user, code, refused = users[i], ARGV[3 * i], ARGV[3 * i + 1]
  local rec = recs[user]
  local state = nil
  if not rec then
    rec, state = refused, 'C'
  elseif string.sub(rec, 1, #code + 1) == code .. '\t' then
    state = string.sub(rec, -1)
    if state == 'P' then
      rec, state = string.sub(rec, 1, -2) .. 'C', 'C'
    end
  end
  if state == 'C' then
    if rec ~= recs[user] then
      recs[user] = rec
      if not changed[user] then order[#order + 1] = user end
      changed[user] = rec
    end
    conflicted[#conflicted + 1] = user
    marked = marked + 1
  end
end

local fields = {}
for _, user in ipairs(order) do
  fields[#fields + 1] = user
  fields[#fields + 1] = changed[user]
end
each_slice('HSET', KEYS[1], fields)
each_slice('ZREM', KEYS[2], conflicted)
each_slice('SADD', KEYS[3], conflicted)

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
