-- Claims pending issuances older than an age for republishing. Claiming
-- re-scores them, atomically, so with several servers sweeping at once each
-- issuance is claimed by one of them per back-off window (a lock with
-- expiry per issuance).
--
-- The next claim of an issuance backs off exponentially: it comes after as
-- long as the issuance has been pending (at least the age, at most the max
-- age), so a finalizer that is down for long (PostgreSQL outage) does not
-- get every pending issuance republished into its topic once per age.
-- The score after a claim is therefore "claimable from score + age".
--
-- While the finalizer has recorded an issuance of the event within the last
-- age, old pending issuances are most likely still queued in Kafka behind
-- the ones it is recording: republishing them would only add to its backlog
-- (and feed on itself). Then only issuances older than the max age are
-- claimed, so one lost message still comes back while traffic never pauses.
--
-- KEYS[1] couponPending:{E}  KEYS[2] couponIssued:{E}  KEYS[3] couponProgress:{E}
-- ARGV[1] age ms  ARGV[2] max claims  ARGV[3] max age ms
-- Returns user_1, record_1, user_2, record_2, ... Users whose record is gone
-- or already finalized are dropped from the pending set instead.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local age = tonumber(ARGV[1])
local max_age = math.max(age, tonumber(ARGV[3]))
local progress = tonumber(redis.call('GET', KEYS[3]) or '0')
local due = age
if now - progress < age then
  due = max_age
end
local users = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - due, 'LIMIT', 0, tonumber(ARGV[2]))
if #users == 0 then return {} end
-- One HMGET of them all, one ZADD and one ZREM (in slices: unpack() of more
-- than ~8,000 values overflows Lua's C stack): the calls per sweep do not
-- grow with the users claimed.
local SLICE = 4000
local recs = {}
for from = 1, #users, SLICE do
  local part = redis.call('HMGET', KEYS[2], unpack(users, from, math.min(from + SLICE - 1, #users)))
  for j = 1, #part do recs[from + j - 1] = part[j] end
end
local out, rescored, dropped = {}, {}, {}
for i, user in ipairs(users) do
  local rec = recs[i]
  if rec and string.sub(rec, -1) == 'P' then
    local issued_ms = tonumber(string.match(rec, '^[^\t]*\t[^\t]*\t[^\t]*\t(%d+)\t')) or now
    local wait = math.min(math.max(now - issued_ms, age), max_age)
    rescored[#rescored + 1] = now + wait - age
    rescored[#rescored + 1] = user
    out[#out + 1] = user
    out[#out + 1] = rec
  else
    dropped[#dropped + 1] = user
  end
end
for from = 1, #rescored, SLICE do
  redis.call('ZADD', KEYS[1], 'XX', unpack(rescored, from, math.min(from + SLICE - 1, #rescored)))
end
for from = 1, #dropped, SLICE do
  redis.call('ZREM', KEYS[1], unpack(dropped, from, math.min(from + SLICE - 1, #dropped)))
end
return out
