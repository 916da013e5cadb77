-- Commits a step's effects, fenced by its lease: the context (replaced only if still at the
-- version the step's merge was based on; a held step also requires the version it read),
-- successor items (known ids are ignored), the item's completion (its bytes are dropped),
-- outputs, errors, counters and the run's completion when no item is left. Optionally takes
-- the worker's next item in the same call: the only new successor goes straight to the
-- worker ("direct hand-off"), else the next ready item of the workflow is taken.
-- KEYS[1]: the partition's timer set (`<pfx>tm`), for routing.
-- ARGV[5..]: run id, item id, token, required version ('' for none), context base version
--            ('' when the context is unchanged), context bytes, node, duration in µs,
--            successor count n, then n × (id, node, bytes), output count m, then m outputs
--            (JSON), error count k, then k errors (JSON), then for the next take: workflow
--            ('' for none), worker id, lease in ms, max deliveries, max items, woken flag,
--            the context version the worker holds after this step (-1 for none)
-- Returns {'ok', final status or '', take reply (see take.lua) when asked}
--       | {'conflict', version} | {'lost'} | {'inactive', status}
-- A retry of the request that committed (same request id) gets {'ok', …} again, with the
-- items its take leased.
local run, id, token = ARGV[5], ARGV[6], tonumber(ARGV[7])
local required, base, ctx, node = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local dur = tonumber(ARGV[12])
local it, rk = items_key(run), run_key(run)
local e = entry(id, run)

local i = 13
local succs = {}
for _ = 1, tonumber(ARGV[i]) do
  succs[#succs + 1] = { id = ARGV[i + 1], node = ARGV[i + 2], bytes = ARGV[i + 3] }
  i = i + 3
end
i = i + 1
local outputs = {}
for _ = 1, tonumber(ARGV[i]) do outputs[#outputs + 1] = ARGV[i + 1]; i = i + 1 end
i = i + 1
local errors = {}
for _ = 1, tonumber(ARGV[i]) do errors[#errors + 1] = ARGV[i + 1]; i = i + 1 end
i = i + 1
local next_wf = ARGV[i] or ''
local worker, lease_ms, max_del, max_n = ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
local woken, have_ver = ARGV[i + 5] == '1', tonumber(ARGV[i + 6] or '-1')

-- The item and the successors' states, in one read.
local fields = { id .. ':m', id .. ':x' }
for _, s in ipairs(succs) do fields[#fields + 1] = s.id .. ':m' end
local f = hmget_chunked(it, fields)
local m = parse_meta(f[1])
if not m or m.s ~= 'I' or m.t ~= token then
  if m and m.s == 'C' and m.r == RID then
    -- This request committed before its reply was lost: answer as then.
    local st = redis.call('HGET', rk, 'st')
    local reply = { 'ok', is_finished(st) and st or '' }
    if next_wf ~= '' then reply[3] = leased_rows(entries_of(f[2]), worker) end
    return reply
  end
  local fin = redis.call('HMGET', rk, 'frid', 'st', 'fx')
  if not m and fin[1] == RID then
    -- This request finished the run (whose items are gone) before its reply was lost.
    local reply = { 'ok', fin[2] or '' }
    if next_wf ~= '' then reply[3] = leased_rows(entries_of(fin[3]), worker) end
    return reply
  end
  -- A cancelled or completed run's items are gone: its in-flight steps learn it is over.
  if not m and fin[2] and not accepts_results(fin[2]) then return { 'inactive', fin[2] } end
  return { 'lost' }
end

local r = read_run(run, { 'st', 'ver', 'wf', 'left', 'out', 'pkc', 'nout', 'nerr', 'exp', 'dl',
                          'm_done', 'm_items', 'nt' })
if not accepts_results(r.st) then
  redis.call('HSET', it, id .. ':m', with_state(m, 'X', RID))
  redis.call('ZREM', TIMERS, 'L' .. e)
  return { 'inactive', r.st or 'cancelled' }
end
local ver = tonumber(r.ver or '0')
if required ~= '' and tonumber(required) ~= ver then return { 'conflict', ver } end
local set = {}
if base ~= '' then
  if tonumber(base) ~= ver then return { 'conflict', ver } end
  ver = ver + 1
  set.ctx, set.ver = ctx, ver
end
local now = now_ms()
local st = r.st
if st == 'pending' then st = 'running' end

-- Successors: new ones are stored; the only new one of a worker that asked for its next item
-- is leased to it at once, the others are queued (parked while the run is paused or failed).
local fresh = {}
for k, s in ipairs(succs) do
  if not f[2 + k] then fresh[#fresh + 1] = s end
end
local direct = next_wf ~= '' and #fresh == 1 and takes_items(st) and max_n >= 1
local hset = { id .. ':m', with_state(m, 'C', RID) }
local queued = {}
for _, s in ipairs(fresh) do
  hset[#hset + 1] = s.id
  hset[#hset + 1] = s.bytes
  hset[#hset + 1] = s.id .. ':m'
  if direct then
    hset[#hset + 1] = meta('I', 1, 1, 1, s.node)
    hset[#hset + 1] = s.id .. ':w'
    hset[#hset + 1] = worker
    hset[#hset + 1] = id .. ':x'
    hset[#hset + 1] = entry(s.id, run)
  else
    hset[#hset + 1] = meta('P', 1, 0, 0, s.node)
    queued[#queued + 1] = s.id
  end
end
call_chunked('HSET', it, hset)
redis.call('HDEL', it, id)
redis.call('ZREM', TIMERS, 'L' .. e)
if direct then redis.call('ZADD', TIMERS, now + lease_ms, 'L' .. entry(fresh[1].id, run)) end
if #queued > 0 then
  if takes_items(st) then
    local entries = {}
    for k, q in ipairs(queued) do entries[k] = entry(q, run) end
    enqueue(r.wf, entries, false)
  else
    call_chunked('LPUSH', parked_key(run), queued)
    set.pkc = tonumber(r.pkc or '0') + #queued
  end
end

-- Outputs (the first in the record, the others in a list), errors, counters.
local extra = {}
for k, o in ipairs(outputs) do
  if k == 1 and not r.out then set.out = o else extra[#extra + 1] = o end
end
if #extra > 0 then
  call_chunked('RPUSH', outs_key(run), extra)
  set.nout = tonumber(r.nout or '0') + #extra
  keep_expiry(outs_key(run), r.exp)
end
if #errors > 0 then
  call_chunked('RPUSH', errs_key(run), errors)
  set.nerr = tonumber(r.nerr or '0') + #errors
  keep_expiry(errs_key(run), r.exp)
end
local left = tonumber(r.left or '1') + #fresh - 1
set.left = left
set.m_done = tonumber(r.m_done or '0') + 1
if #fresh > 0 then set.m_items = tonumber(r.m_items or '0') + #fresh end
set.nt = add_timing(r.nt, node, dur)

local new = after_commit(r.st, left, r.out or set.out)
local fin = ''
if new ~= r.st then
  if is_finished(new) then
    fin = new
    set.frid = RID
    if new == 'failed' then set.err = 'workflow `' .. r.wf .. '`' .. NO_OUTPUT end
    finish_run(run, set, new, now)
  else
    set.st = new
  end
end
write_run(run, set)
if r.exp then keep_expiry(it, r.exp) end

if next_wf == '' then return { 'ok', fin } end
if direct then
  local s = fresh[1]
  local same, bytes = 1, ''
  if have_ver ~= ver then same, bytes = 0, redis.call('HGET', rk, 'ctx') or '' end
  return { 'ok', fin, { 1, 1, run, s.id, 1, s.bytes, s.node, 1, 1, r.dl or '', same, bytes, ver } }
end
local reply = take_next(next_wf, worker, lease_ms, max_del, max_n, run, have_ver, woken)
local taken = taken_entries(reply)
if #taken > 0 then
  -- For a retry of this request: in the run's record once its items are gone.
  if fin == 'completed' then
    redis.call('HSET', rk, 'fx', joined(taken))
  else
    redis.call('HSET', it, id .. ':x', joined(taken))
  end
end
return { 'ok', fin, reply }
