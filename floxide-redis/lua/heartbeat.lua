-- Renews a lease, if still held.
-- KEYS[1]: the partition's lease index (`<pfx>leases`).
-- ARGV: pfx, retention, run id, item id, token, lease in ms
-- Returns {'ok', run status} | {'lost'}
local run, id, token, lease_ms = ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local it = items_key(run)
local f = redis.call('HMGET', it, id .. ':s', id .. ':l')
if f[1] ~= 'I' or f[2] ~= token then return { 'lost' } end
redis.call('ZADD', PFX .. 'leases', now_ms() + lease_ms, entry(id, run))
return { 'ok', redis.call('HGET', run_key(run), 'st') or 'cancelled' }
