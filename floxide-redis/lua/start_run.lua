-- Starts a run: its record, context and first item, at once.
-- KEYS[1]: the partition's run index (`<pfx>runs`), for routing.
-- ARGV: pfx, retention, run id, workflow, context bytes, first item id, first node,
--       first item bytes, idempotency key ('' for none), deadline in ms since the epoch ('' for none)
-- Returns {'ok'} | {'exists'} | {'dup', existing run id}
local run, wf, ctx = ARGV[3], ARGV[4], ARGV[5]
local id, node, payload = ARGV[6], ARGV[7], ARGV[8]
local idem, deadline = ARGV[9], ARGV[10]
if idem ~= '' then
  local existing = redis.call('GET', PFX .. 'idem:' .. idem)
  if existing then return { 'dup', existing } end
end
local rk = run_key(run)
if redis.call('EXISTS', rk) == 1 then return { 'exists' } end
local now = now_ms()
redis.call('HSET', rk, 'wf', wf, 'st', 'pending', 't0', now, 'left', 1, 'ver', 0, 'm_items', 1)
if idem ~= '' then
  redis.call('HSET', rk, 'idem', idem)
  redis.call('SET', PFX .. 'idem:' .. idem, run)
end
if deadline ~= '' then redis.call('HSET', rk, 'dl', deadline) end
redis.call('SET', PFX .. 'ctx:' .. run, ctx)
redis.call('HSET', items_key(run), id, payload, id .. ':n', node, id .. ':s', 'P', id .. ':a', 1, id .. ':d', 0)
redis.call('ZADD', PFX .. 'runs', now, run)
push_ready(wf, entry(id, run), false)
publish(run)
return { 'ok' }
