-- Marks issuances as recorded in PostgreSQL: the record's state byte
-- becomes F and the user leaves the pending set. Only a record that still
-- holds the same code is touched, so a stale message cannot finalize
-- anything else. PostgreSQL holding the (code, user) is the truth: a record
-- marked conflicted earlier (C) whose issuance PostgreSQL now accepted (a
-- dead letter replayed after a fix) becomes F too and leaves the conflict
-- set. Notes the time in the progress key, which tells the sweeper that
-- the finalizer is moving (see claim_stale.lua).
--
-- Redis calls per call do not grow with the batch: one HMGET of every
-- user, then one HSET, one ZREM and one SREM of them all (in slices, as
-- unpack() of more than ~8,000 values overflows Lua's C stack). Items are
-- decided in order against the records as the earlier items left them, so
-- a user named twice behaves as two calls would.
--
-- KEYS[1] couponIssued:{E}  KEYS[2] couponPending:{E}  KEYS[3] couponProgress:{E}
-- KEYS[4] couponConflicts:{E}
-- ARGV: user_1, code_1, user_2, code_2, ...
-- Returns {the number of issuances finalized (already-final ones
-- included), {the 1-based item numbers of the users with no record}}
-- (nested: unpack() of a long list would overflow Lua's C stack).
local SLICE = 4000
local function each_slice(cmd, key, list)
  for from = 1, #list, SLICE do
    redis.call(cmd, key, unpack(list, from, math.min(from + SLICE - 1, #list)))
  end
end

local n = #ARGV / 2
if n == 0 then return {0, {}} end
local users = {}
for i = 1, n do users[i] = ARGV[2 * i - 1] end
local recs = {}
for from = 1, n, SLICE do
  local part = redis.call('HMGET', KEYS[1], unpack(users, from, math.min(from + SLICE - 1, n)))
  for j = 1, #part do
    local user = users[from + j - 1]
    if recs[user] == nil then recs[user] = part[j] end
  end
end

local done = 0
local changed, order = {}, {}
local leaving, conflicts_left = {}, {}
local unknown = {}
for i = 1, n do
  local user, code = users[i], ARGV[2 * i]
  local rec = recs[user]
  if not rec then unknown[#unknown + 1] = i end
  if rec and string.sub(rec, 1, #code + 1) == code .. '\t' then
    local state = string.sub(rec, -1)
    if state ~= 'F' then
      rec = string.sub(rec, 1, -2) .. 'F'
      recs[user] = rec
      if not changed[user] then order[#order + 1] = user end
      changed[user] = rec
    end
    if state == 'C' then conflicts_left[#conflicts_left + 1] = user end
    leaving[#leaving + 1] = user
    done = done + 1
  end
end

local fields = {}
for _, user in ipairs(order) do
  fields[#fields + 1] = user
  fields[#fields + 1] = changed[user]
end
each_slice('HSET', KEYS[1], fields)
each_slice('ZREM', KEYS[2], leaving)
each_slice('SREM', KEYS[4], conflicts_left)
if done > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('SET', KEYS[3], now, 'PX', 3600000)
end
return {done, unknown}
