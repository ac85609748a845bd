-- Issues coupons of one event to N users, atomically, in request order.
--
-- What a user holds decides first: a user with a record gets it back
-- (status 2), whatever happened to the event since (paused, closed, ended,
-- sold out, offline for a rebuild, its meta gone). The event's state
-- decides only for users who hold nothing: no meta (6, or 8 while a
-- rebuild has it offline), before the window (4), after it (5), paused
-- (7); then stock: a code each, in request order, until the queue is
-- empty (3). A user named twice in one call gets one code: the second
-- item is answered with the record the first one made.
--
-- Redis calls per call do not grow with N: one HMGET of every user, one
-- LPOP of as many codes as new users, one HSET and one ZADD of them all.
--
-- KEYS[1] couponQueue:{E}    list of "code\ttype\tvalue", shuffled at preload
-- KEYS[2] couponIssued:{E}   hash user -> "code\ttype\tvalue\tissued_ms\trequest_id\tP|F|C"
-- KEYS[3] couponMeta:{E}     hash starts_at, ends_at (unix ms), total, paused (1 or absent)
-- KEYS[4] couponPending:{E}  sorted set user -> issued_ms, issued but not yet in PostgreSQL
-- KEYS[5] couponMetaOffline:{E}  the meta hash while a forced rebuild has the event offline
-- ARGV[1] N; then ARGV[2i], ARGV[2i+1] = user id, request id of item i (1-based)
--
-- Returns 2N values: status_i, record_i. Status: 1 ISSUED, 2 HELD (the
-- record decides: the caller tells ISSUED to the request that made it
-- from ALREADY_ISSUED), 3 SOLD_OUT, 4 NOT_STARTED, 5 ENDED, 6 NOT_IN_REDIS,
-- 7 PAUSED, 8 OFFLINE; the record is the user's issued-hash entry for 1
-- and 2, else "".
--
-- Tabs separate record fields: ids may not contain control characters, so a
-- tab can never appear inside one, and the state is always the last byte.
local n = tonumber(ARGV[1])
if n == 0 then return {} end
-- unpack() of more than ~8,000 values overflows Lua's C stack.
local SLICE = 4000

local users = {}
for i = 1, n do users[i] = ARGV[2 * i] end
local held = {}
for from = 1, n, SLICE do
  local part = redis.call('HMGET', KEYS[2], unpack(users, from, math.min(from + SLICE - 1, n)))
  for j = 1, #part do held[from + j - 1] = part[j] end
end

local t = redis.call('TIME')
-- The server's clock, not the caller's: every server agrees on the window.
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local closed = nil
local meta = redis.call('HMGET', KEYS[3], 'starts_at', 'ends_at', 'paused')
if not meta[1] then
  closed = 6
  if redis.call('EXISTS', KEYS[5]) == 1 then closed = 8 end
elseif now < tonumber(meta[1]) then
  closed = 4
elseif now >= tonumber(meta[2]) then
  closed = 5
elseif meta[3] == '1' then
  closed = 7
end

-- Items that need a code: the first mention of each user holding nothing.
local wanting = {}
local first = {}
if not closed then
  for i = 1, n do
    if not held[i] and not first[users[i]] then
      first[users[i]] = i
      wanting[#wanting + 1] = i
    end
  end
end
local codes = {}
if #wanting > 0 then
  codes = redis.call('LPOP', KEYS[1], #wanting) or {}
end

local made = {}
local fields, scores = {}, {}
for k = 1, #codes do
  local i = wanting[k]
  local rec = codes[k] .. '\t' .. now .. '\t' .. ARGV[2 * i + 1] .. '\tP'
  made[users[i]] = rec
  fields[#fields + 1] = users[i]
  fields[#fields + 1] = rec
  scores[#scores + 1] = now
  scores[#scores + 1] = users[i]
end
for from = 1, #fields, SLICE do
  redis.call('HSET', KEYS[2], unpack(fields, from, math.min(from + SLICE - 1, #fields)))
  redis.call('ZADD', KEYS[4], unpack(scores, from, math.min(from + SLICE - 1, #scores)))
end

local out = {}
for i = 1, n do
  local user = users[i]
  local rec = held[i]
  if rec then
    out[2 * i - 1], out[2 * i] = 2, rec
  elseif closed then
    out[2 * i - 1], out[2 * i] = closed, ''
  elseif made[user] and first[user] == i then
    out[2 * i - 1], out[2 * i] = 1, made[user]
  elseif made[user] then
    out[2 * i - 1], out[2 * i] = 2, made[user]
  else
    out[2 * i - 1], out[2 * i] = 3, ''
  end
end
return out
