-- Restores what PostgreSQL recorded and Redis lost (a master failed over
-- before its replica had the write, or a Redis without persistence
-- restarted). PostgreSQL's record wins:
--   * a user with no record gets PostgreSQL's, finalized, so asking again
--     answers ALREADY_ISSUED with the code they were told, never a second
--     coupon (a user who has a record by now, issued again since, keeps it:
--     PostgreSQL refuses that second issuance and supersede.lua makes the
--     first win);
--   * the code PostgreSQL holds for the user is taken out of the queue,
--     where a lost pop left it, so nobody else is handed it.
-- A lost pop leaves its codes at the head of the queue, and issue calls
-- take codes from the head: a lost code still queued is among the first
-- entries, or it was handed on already (PostgreSQL then refuses that
-- issuance: a conflict reconcile reports). supersede.lua puts a refused
-- code that was free back at the tail, and PostgreSQL may record it for
-- the user Redis lost later. So only the first and the last HEAD entries
-- are searched, marked in place and removed by an LREM from that end that
-- stops at the last mark: this never walks a queue of a million codes.
--
-- Only while the event is live in Redis (its meta exists): an event Redis
-- does not hold is rebuilt from PostgreSQL as a whole, and an offline one
-- is being rebuilt. A settled event's expiry carries over to the keys this
-- writes. Idempotent: a second run finds the records, and the codes gone.
--
-- A sharded event's other shards are searched for the codes as well (a
-- transfer may have carried a lost code there): with every record given
-- empty, the call only takes the codes out of that shard's queue.
--
-- KEYS[1] couponIssued:{E}  KEYS[2] couponQueue:{E}  KEYS[3] couponMeta:{E}
-- ARGV: user_1, record_1 (finalized, or empty), queue entry_1, user_2, ...
-- Returns {users restored, codes taken out of the queue, codes not found
-- at its head}.
local HEAD = 10000
-- Never a queue entry: entries are "code\ttype\tvalue".
local MARK = '\0'
if redis.call('EXISTS', KEYS[3]) == 0 then return {0, 0, 0} end
local restored, wanted, codes = 0, {}, 0
for i = 1, #ARGV, 3 do
  if ARGV[i + 1] ~= '' and redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    restored = restored + 1
  end
  if not wanted[ARGV[i + 2]] then
    wanted[ARGV[i + 2]] = true
    codes = codes + 1
  end
end
local found = 0
-- Marks the wanted entries among the queue's entries first..last (tail
-- ones by negative index, which Redis walks from the tail), then removes
-- the marks with one LREM from that end.
local function take_out(first, last, from_tail)
  if found == codes or first > last then return end
  local len = redis.call('LLEN', KEYS[2])
  local part = redis.call('LRANGE', KEYS[2], first, last)
  local marked = 0
  for i, entry in ipairs(part) do
    if found == codes then break end
    if wanted[entry] then
      local at = first + i - 1
      if from_tail then at = at - len end
      redis.call('LSET', KEYS[2], at, MARK)
      wanted[entry] = nil
      found = found + 1
      marked = marked + 1
    end
  end
  if marked > 0 then
    redis.call('LREM', KEYS[2], from_tail and -marked or marked, MARK)
  end
end
-- The tail first: removing there leaves the head's positions as they are.
local len = redis.call('LLEN', KEYS[2])
take_out(math.max(HEAD, len - HEAD), len - 1, true)
take_out(0, HEAD - 1, false)
local ttl = redis.call('PTTL', KEYS[3])
if ttl > 0 and redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return {restored, found, codes - found}
