-- Gives a leased item back untouched (graceful shutdown): ready again at the front of the
-- queue, and not counted as a delivery.
-- KEYS[1]: the partition's timer set (`<pfx>tm`), for routing.
-- ARGV[5..]: run id, item id, token, the lease's holder
-- Returns {'ok'} | {'lost'}
local run, id, token = ARGV[5], ARGV[6], tonumber(ARGV[7])
local it = items_key(run)
local f = rcall('HMGET', it, id .. ':m', id .. ':w')
local m = parse_meta(f[1])
if not holds(m, token, f[2], ARGV[8]) then return { 'lost' } end
step_event(run, 'R', id, m.n, f[2], m.t, m.a, now_ms())
rcall('HSET', it, id .. ':m', meta('P', m.a, max(m.d - 1, 0), m.t, m.n, m.r))
rcall('ZREM', TIMERS, 'L' .. entry(id, run))
local r = read_run(run, { 'st', 'wf', 'pkc' })
local set = {}
if make_ready(run, id, r, true) and r.pkc then set.pkc = r.pkc end
write_run(run, set)
flush_history()
return { 'ok' }
