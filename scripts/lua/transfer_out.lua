-- A transfer's first step, on the donor shard: up to N codes leave the
-- donor's queue (its tail) into a transfer record, in one atomic call. From here until
-- the target shard has them (transfer_in.lua) they are in the record and
-- nowhere else; whoever finds the record (the server that started the
-- transfer, another server, the sweeper) finishes it. Idempotent by the
-- transfer id: a re-sent call finds its record and returns the same codes,
-- or finds it done (empty: a finisher completed the transfer before the
-- re-sent call arrived) and moves nothing more.
--
-- KEYS[1] couponQueue:{D}  KEYS[2] couponTransfers:{D} (hash id -> record)
-- KEYS[3] couponSent:{D} (set of the ids of done transfers)
-- KEYS[4] couponMeta:{D}
-- KEYS[5] couponGuard:{D}, when the caller WAITs for replicas after the call
-- ARGV[1] transfer id  ARGV[2] N  ARGV[3] the target shard's tag
-- Record: "<target tag>\n<entry>\n<entry>...". Queue entries hold no newline.
-- A done transfer's record is gone and its id in the sent set (so the id
-- is never used again, and open records stay few).
-- Returns {'MOVING', {entries}, gen} (the record's, new or found),
-- {'DONE', {}, gen} (finished by someone, perhaps this call's first attempt
-- and a finisher), {'DRY', {}, gen} (the donor's queue is empty), or
-- {'OFFLINE', {}, ''}: the donor has no meta (a rebuild took it offline, or
-- it was lost), and nothing leaves it.
-- gen is the donor's generation (its meta's 'gen', '' until a rebuild
-- installs the event anew): step 2 lands only at a target of the same
-- generation, so codes a rebuild already put back in a queue never land
-- twice. A rebuild drops every record with the generation change, so a
-- record found here is always of the donor's current generation.
-- Written on every call, so that the WAIT behind it covers the writes of
-- an earlier attempt of this call too.
if KEYS[5] then redis.call('SET', KEYS[5], ARGV[1], 'PX', 60000) end
if redis.call('EXISTS', KEYS[4]) == 0 then return {'OFFLINE', {}, ''} end
local gen = redis.call('HGET', KEYS[4], 'gen') or ''
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then return {'DONE', {}, gen} end
local rec = redis.call('HGET', KEYS[2], ARGV[1])
if rec then
  local out, first = {}, true
  for line in string.gmatch(rec, '[^\n]+') do
    if first then first = false else out[#out + 1] = line end
  end
  return {'MOVING', out, gen}
end
-- From the tail: Issue pops from the head, and a pop a failover undid
-- leaves its code at the head, where restore.lua looks for it at the
-- user's home shard; a transfer must not carry it elsewhere first.
local codes = redis.call('RPOP', KEYS[1], tonumber(ARGV[2]))
if not codes then return {'DRY', {}, gen} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3] .. '\n' .. table.concat(codes, '\n'))
return {'MOVING', codes, gen}
