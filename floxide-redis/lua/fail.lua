-- Records a failed step, fenced by its lease: schedules its retry as a delayed item, or
-- dead-letters it and fails the run.
-- KEYS[1]: the partition's delayed index (`<pfx>delayed`).
-- ARGV: pfx, retention, run id, item id, token, error record (JSON), error text,
--       retry delay in ms ('' to dead-letter)
-- Returns {'ok', 'failed' when the run failed now, else ''} | {'lost'} | {'inactive', status}
local run, id, token = ARGV[3], ARGV[4], ARGV[5]
local record, text, retry = ARGV[6], ARGV[7], ARGV[8]
local it, rk = items_key(run), run_key(run)
local e = entry(id, run)
local f = redis.call('HMGET', it, id .. ':s', id .. ':l', id .. ':n')
if f[1] ~= 'I' or f[2] ~= token then return { 'lost' } end
local st = redis.call('HGET', rk, 'st')
local effect = after_failure(st, retry ~= '')
if effect == 'inactive' then
  redis.call('HSET', it, id .. ':s', 'X')
  redis.call('HDEL', it, id .. ':l', id .. ':w')
  redis.call('HINCRBY', rk, 'left', -1)
  redis.call('ZREM', PFX .. 'leases', e)
  return { 'inactive', st or 'cancelled' }
end
local now = now_ms()
redis.call('HINCRBY', rk, 'm_failed', 1)
-- The record's attempt is the item's, which only the server knows.
local rec = cjson.decode(record)
rec.attempt = tonumber(redis.call('HGET', it, id .. ':a') or '1')
redis.call('RPUSH', PFX .. 'errs:' .. run, cjson.encode(rec))
if effect == 'retry' then
  redis.call('HSET', it, id .. ':s', 'R', id .. ':d', 0)
  redis.call('HINCRBY', it, id .. ':a', 1)
  redis.call('HDEL', it, id .. ':l', id .. ':w')
  redis.call('ZREM', PFX .. 'leases', e)
  redis.call('ZADD', PFX .. 'delayed', now + tonumber(retry), e)
  redis.call('HINCRBY', rk, 'm_retries', 1)
  return { 'ok', '' }
end
local failed = dead_letter(run, id, 'node `' .. (f[3] or '') .. '` failed: ' .. text, now)
return { 'ok', failed and 'failed' or '' }
