-- Gives a leased item back untouched (graceful shutdown): not counted as a delivery.
-- KEYS[1]: the partition's lease index (`<pfx>leases`).
-- ARGV: pfx, retention, run id, item id, token
-- Returns {'ok'} | {'lost'}
local run, id, token = ARGV[3], ARGV[4], ARGV[5]
local it = items_key(run)
local f = redis.call('HMGET', it, id .. ':s', id .. ':l')
if f[1] ~= 'I' or f[2] ~= token then return { 'lost' } end
redis.call('HSET', it, id .. ':s', 'P')
redis.call('HINCRBY', it, id .. ':d', -1)
redis.call('HDEL', it, id .. ':l', id .. ':w')
redis.call('ZREM', PFX .. 'leases', entry(id, run))
local wf = redis.call('HGET', run_key(run), 'wf')
if wf then push_ready(wf, entry(id, run), true) end
return { 'ok' }
