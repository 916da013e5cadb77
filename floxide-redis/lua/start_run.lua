-- Starts a run: its record (with its context), its first item, queued, at once.
-- KEYS[1]: the partition's run index (`<pfx>runs`), for routing.
-- ARGV[5..]: run id, workflow, context bytes, first item id, first node, first item bytes,
--            idempotency key ('' for none), deadline in ms since the epoch ('' for none)
-- Returns {'ok'} | {'exists'} | {'dup', existing run id}; a retry of the request that started
-- the run (same request id) gets {'ok'}.
local run, wf, ctx = ARGV[5], ARGV[6], ARGV[7]
local id, node, payload = ARGV[8], ARGV[9], ARGV[10]
local idem, deadline = ARGV[11], ARGV[12]
if idem ~= '' then
  local existing = redis.call('GET', PFX .. 'idem:' .. idem)
  if existing then
    if redis.call('HGET', run_key(existing), 'rid') == RID then return { 'ok' } end
    return { 'dup', existing }
  end
end
local started_by = redis.call('HGET', run_key(run), 'rid')
if started_by then
  if started_by == RID then return { 'ok' } end
  return { 'exists' }
end
local now = now_ms()
-- The record keeps the run's input (`inp`: its first item's bytes) for tools to show and search.
local set = { wf = wf, st = 'pending', t0 = now, left = 1, ver = 0, m_items = 1, rid = RID, ctx = ctx,
              inp = payload }
if idem ~= '' then
  set.idem = idem
  redis.call('SET', PFX .. 'idem:' .. idem, run)
end
if deadline ~= '' then set.dl = deadline end
write_run(run, set)
redis.call('HSET', items_key(run), id, payload, id .. ':m', meta('P', 1, 0, 0, node))
redis.call('ZADD', RUNS, text(now), run)
enqueue(wf, { entry(id, run) }, false)
return { 'ok' }
