-- Renews a lease, if still held.
-- KEYS[1]: the partition's timer set (`<pfx>tm`), for routing.
-- ARGV[5..]: run id, item id, token, lease in ms, the lease's holder
-- Returns {'ok', run status} | {'lost'}
local run, id, token, lease_ms = ARGV[5], ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
local f = rcall('HMGET', items_key(run), id .. ':m', id .. ':w')
local m = parse_meta(f[1])
if not m then
  -- A cancelled or completed run's items are gone: tell the step its run is over.
  local st = rcall('HGET', run_key(run), 'st')
  if st and not accepts_results[st] then return { 'ok', st } end
end
if not holds(m, token, f[2], ARGV[9]) then return { 'lost' } end
local now = now_ms()
rcall('ZADD', TIMERS, text(now + lease_ms), 'L' .. entry(id, run))
step_event(run, 'H', id, m.n, f[2], m.t, m.a, now, nil, now + lease_ms)
flush_history()
return { 'ok', rcall('HGET', run_key(run), 'st') or 'cancelled' }
