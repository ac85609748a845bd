-- Issues coupons of one event to N users, atomically, in request order.
--
-- KEYS[1] couponQueue:{E}    list of "code\ttype\tvalue", shuffled at preload
-- KEYS[2] couponIssued:{E}   hash user -> "code\ttype\tvalue\tissued_ms\trequest_id\tP|F"
-- KEYS[3] couponMeta:{E}     hash starts_at, ends_at (unix ms), total, paused (1 or absent)
-- KEYS[4] couponPending:{E}  sorted set user -> issued_ms, issued but not yet in PostgreSQL
-- ARGV[1] N; then ARGV[2i], ARGV[2i+1] = user id, request id of item i (1-based)
--
-- Returns 2N values: status_i, record_i. Status: 1 ISSUED, 2 ALREADY_ISSUED,
-- 3 SOLD_OUT, 4 NOT_STARTED, 5 ENDED, 6 EVENT_NOT_FOUND, 7 PAUSED; the record is the
-- user's issued-hash entry for 1 and 2, else "".
--
-- Tabs separate record fields: ids may not contain control characters, so a
-- tab can never appear inside one, and the P/F state is always the last byte.
local n = tonumber(ARGV[1])
local out = {}

local meta = redis.call('HMGET', KEYS[3], 'starts_at', 'ends_at', 'paused')
local closed = nil
if not meta[1] then
  closed = 6
else
  -- The server's clock, not the caller's: every server agrees on the window.
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if now < tonumber(meta[1]) then
    closed = 4
  elseif now >= tonumber(meta[2]) then
    closed = 5
  elseif meta[3] == '1' then
    closed = 7
  else
    for i = 1, n do
      local user = ARGV[2 * i]
      local rec = redis.call('HGET', KEYS[2], user)
      if rec then
        out[#out + 1] = 2
        out[#out + 1] = rec
      else
        local entry = redis.call('LPOP', KEYS[1])
        if not entry then
          out[#out + 1] = 3
          out[#out + 1] = ''
        else
          rec = entry .. '\t' .. now .. '\t' .. ARGV[2 * i + 1] .. '\tP'
          redis.call('HSET', KEYS[2], user, rec)
          redis.call('ZADD', KEYS[4], now, user)
          out[#out + 1] = 1
          out[#out + 1] = rec
        end
      end
    end
    return out
  end
end

for i = 1, n do
  out[#out + 1] = closed
  out[#out + 1] = ''
end
return out
