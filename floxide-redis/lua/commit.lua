-- Commits a batch of steps, in order, each fenced by its lease and applied or refused on its
-- own (but a run's context changes after a refused one are refused too, see below): the
-- context (replaced only if still at the version the step's merge was based on; a held step
-- also requires the version it read), successor items (known ids are ignored), the item's
-- completion (its bytes are dropped), outputs, errors, counters, and the run's completion when
-- no item is left. A run's record is read once and written once per script, however many of
-- its steps the batch holds. Optionally takes up to n items for the worker in the same call:
-- new successors go straight to the worker ("direct hand-off", no queue round trip), then
-- ready items of the workflow fill what is left; workers are woken only for what this take
-- left in the queue.
-- KEYS[1]: the partition's timer set (`<pfx>tm`), for routing.
-- ARGV[5..]: step count k, then k × (run id, item id, token, required version ('' for none),
--            context base version ('' when the context is unchanged), context bytes, the
--            context version the worker holds after the step ('' for none), node,
--            duration in µs, the lease's holder, successor count s, s × (id, node, bytes), output count o,
--            o outputs (JSON), error count e, e errors (JSON)), then for the take: workflow
--            ('' for none), worker id, lease in ms, max deliveries, n, woken flag
-- Returns {k × ({'ok', final status or ''} | {'conflict', version} | {'lost'} |
--          {'inactive', status}), take reply (see take.lua) or {0, -1}}
-- A retry of the request (same request id) answers its applied steps with {'ok', …} again and
-- gets the items its take leased.
local k = num(ARGV[5])
local i = 6
local commits = {}
local NONE = {}  -- shared by the steps without outputs, errors or parked successors (read only)
for c = 1, k do
  local x = {
    run = ARGV[i], id = ARGV[i + 1], token = num(ARGV[i + 2]), required = ARGV[i + 3],
    base = ARGV[i + 4], ctx = ARGV[i + 5], have = ARGV[i + 6], node = ARGV[i + 7],
    dur = tonumber(ARGV[i + 8]), holder = ARGV[i + 9], succs = {}, outputs = NONE, errors = NONE,
  }
  i = i + 10
  for _ = 1, num(ARGV[i]) do
    x.succs[#x.succs + 1] = { id = ARGV[i + 1], node = ARGV[i + 2], bytes = ARGV[i + 3] }
    i = i + 3
  end
  i = i + 1
  local n = num(ARGV[i])
  if n > 0 then x.outputs = {} end
  for o = 1, n do x.outputs[o] = ARGV[i + o] end
  i = i + 1 + n
  n = num(ARGV[i])
  if n > 0 then x.errors = {} end
  for e = 1, n do x.errors[e] = ARGV[i + e] end
  i = i + 1 + n
  commits[c] = x
end
local next_wf = ARGV[i] or ''
local worker, lease_ms, max_del = ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
local budget = next_wf ~= '' and num(ARGV[i + 4]) or 0
local woken = ARGV[i + 5] == '1'
local last = PFX .. 'wc:' .. (worker or '')
local now = now_ms()
-- A direct hand-off's lease end, and the fixed starts of the history lines of commits and
-- hand-offs (see the key layout; the latter made at the first hand-off).
local until_ms = now + (lease_ms or 0)
local commit_line = 'C ' .. text(now) .. ' '
local lease_line

-- Runs touched by the batch: their record's fields, read once; `set` collects the writes.
-- The fields only some commits need are read when needed (`rare`): a hash kept compact by
-- Redis looks each field up by a scan, a missing one by a scan of it all. (The table is made
-- by one constructor: filled field by field, Lua would grow it four times.)
local runs, order = {}, {}
local function run_of(run)
  local x = runs[run]
  if not x then
    local v = redis.call('HMGET', run_key(run), 'st', 'ver', 'wf', 'left', 'out', 'dl', 'm_done',
      'm_items', 'nt')
    -- Only a finished run has a finish time (`t1`); of those only a failed one takes commits.
    local t1 = v[1] == 'failed' and redis.call('HGET', run_key(run), 't1') or false
    local f = { st = v[1], ver = v[2], wf = v[3], left = v[4], out = v[5], t1 = t1, dl = v[6],
                m_done = v[7], m_items = v[8], nt = v[9] }
    x = { f = f, set = {}, touched = false }
    runs[run] = x
    order[#order + 1] = run
  end
  return x
end

-- Field `name` of a touched run's record, read from it the first time it is asked for.
local function rare(run, name)
  local r = runs[run].f
  if r[name] == nil then r[name] = redis.call('HGET', run_key(run), name) end
  return r[name]
end

local held = {}      -- run -> context version this worker holds after its applied steps
local direct = {}    -- successors leased straight to the worker: {run, successor}
local queued = {}    -- workflow -> entries to queue
local done = {}      -- the committed items' lease timers, removed in one command

-- Applies step `x`; returns its reply row (the final status is filled in at the end) and
-- whether it was applied now.
local function commit_one(x)
  local it = items_key(x.run)
  local e = entry(x.id, x.run)
  local fields = { x.id .. ':m' }
  for _, s in ipairs(x.succs) do fields[#fields + 1] = s.id .. ':m' end
  local f = hmget_chunked(it, fields)
  local m = parse_meta(f[1])
  if not m or m.s ~= 'I' or m.t ~= x.token then
    local r = run_of(x.run).f
    -- This request applied the step before its reply was lost: answer as then.
    if m and m.s == 'C' and m.r == RID then
      x.again = true
      return { 'ok', is_finished(r.st) and r.st or '' }
    end
    if not m and rare(x.run, 'frid') == RID then return { 'ok', r.st or '' } end
    -- A cancelled or completed run's items are gone: its in-flight steps learn it is over.
    if not m and r.st and not accepts_results(r.st) then return { 'inactive', r.st } end
    if m then step_event(x.run, 'Z', x.id, m.n, x.holder, x.token, m.a, now) end
    return { 'lost' }
  end
  local run = run_of(x.run)
  local r = run.f
  if not accepts_results(r.st) then
    redis.call('HSET', it, x.id .. ':m', with_state(m, 'X', RID))
    redis.call('ZREM', TIMERS, 'L' .. e)
    return { 'inactive', r.st or 'cancelled' }
  end
  local ver = num(r.ver or '0')
  if x.required ~= '' and num(x.required) ~= ver then return { 'conflict', ver } end
  if x.base ~= '' then
    if num(x.base) ~= ver then return { 'conflict', ver } end
    ver = ver + 1
    r.ver, run.set.ver, run.set.ctx = ver, ver, x.ctx
    held[x.run] = ver
  elseif x.have ~= '' then
    held[x.run] = num(x.have)
  end
  if r.st == 'pending' then r.st = 'running'; run.set.st = 'running' end
  run.touched = true

  -- Successors: new ones are stored, leased straight to the worker while it has room, the
  -- others queued (parked while the run is paused or failed).
  local fresh = 0
  -- The item's payload goes (emptied in the same write as its completion).
  local hset = { x.id .. ':m', with_state(m, 'C', RID), x.id, '' }
  local parked = NONE
  for n, s in ipairs(x.succs) do
    if not f[1 + n] then
      fresh = fresh + 1
      hset[#hset + 1] = s.id
      hset[#hset + 1] = s.bytes
      hset[#hset + 1] = s.id .. ':m'
      if budget > 0 and takes_items(r.st) and r.wf == next_wf then
        budget = budget - 1
        -- (The lease names this request: a retry of it finds the item handed over.)
        hset[#hset + 1] = meta('I', 1, 1, 1, s.node, RID)
        hset[#hset + 1] = s.id .. ':w'
        hset[#hset + 1] = worker
        direct[#direct + 1] = { x.run, s }
        add_timer(until_ms, 'L' .. entry(s.id, x.run))
        -- (The routine history lines of a commit are made here, from fewer pieces.)
        if STEP_HISTORY then
          lease_line = lease_line or 'L ' .. text(now) .. ' 1 1 1 ' .. text(until_ms) .. ' '
          history_line(x.run, lease_line .. s.id .. ' ' .. s.node .. ' ' .. worker)
        end
      else
        hset[#hset + 1] = meta('P', 1, 0, 0, s.node)
        if takes_items(r.st) then
          local q = queued[r.wf]
          if not q then q = {}; queued[r.wf] = q end
          q[#q + 1] = entry(s.id, x.run)
        else
          if parked == NONE then parked = {} end
          parked[#parked + 1] = s.id
        end
      end
    end
  end
  call_chunked('HSET', it, hset)
  done[#done + 1] = 'L' .. e
  if STEP_HISTORY then
    history_line(x.run, commit_line .. text(m.t) .. ' ' .. text(m.a) .. ' - - ' .. x.id .. ' ' ..
      m.n .. ' ' .. x.holder)
  end
  if #parked > 0 then
    call_chunked('LPUSH', parked_key(x.run), parked)
    keep_expiry(parked_key(x.run), r.t1)
    r.pkc = tonumber(rare(x.run, 'pkc') or '0') + #parked
    run.set.pkc = r.pkc
  end

  -- Outputs (the first in the record, the others in a list, pushed once per run at the
  -- end), errors, counters.
  for _, o in ipairs(x.outputs) do
    if not r.out then
      r.out = o
      run.set.out = o
    else
      run.outs = run.outs or {}
      run.outs[#run.outs + 1] = o
    end
  end
  if #x.errors > 0 then
    call_chunked('RPUSH', errs_key(x.run), x.errors)
    r.nerr = tonumber(rare(x.run, 'nerr') or '0') + #x.errors
    run.set.nerr = r.nerr
    keep_expiry(errs_key(x.run), r.t1)
  end
  -- Counters: only those that change are written.
  r.left = num(r.left or '1')
  if fresh ~= 1 then
    r.left = r.left + fresh - 1
    run.set.left = r.left
  end
  r.m_done = num(r.m_done or '0') + 1
  run.set.m_done = r.m_done
  if fresh > 0 then
    r.m_items = num(r.m_items or '0') + fresh
    run.set.m_items = r.m_items
  end
  run.durs = run.durs or {}
  run.durs[#run.durs + 1] = x.node
  run.durs[#run.durs + 1] = x.dur
  return { 'ok', '' }, true
end

-- A retried request whose take was applied gets the same items back: those its first
-- attempt popped from the queue (remembered), and those it handed over (below).
local replay = next_wf ~= '' and replay_take(last, worker) or nil
local replies = {}
local last_of = {}
-- Once a context change of a run is refused, its later ones in the batch are refused too:
-- the worker may have joined them onto the refused one, whose version another commit can reach.
local broken = {}
for c, x in ipairs(commits) do
  local row, applied
  if x.base ~= '' and broken[x.run] then
    row = { 'conflict', tonumber(run_of(x.run).f.ver or '0') }
  else
    row, applied = commit_one(x)
  end
  if x.base ~= '' and row[1] ~= 'ok' then broken[x.run] = true end
  replies[c] = row
  if applied then last_of[x.run] = c end
end

-- Each touched run: its new status (finished when nothing is left), written once.
for _, run in ipairs(order) do
  local x = runs[run]
  if x.touched then
    local r = x.f
    if x.outs then
      call_chunked('RPUSH', outs_key(run), x.outs)
      r.nout = tonumber(rare(run, 'nout') or '0') + #x.outs
      x.set.nout = r.nout
      keep_expiry(outs_key(run), r.t1)
    end
    if x.durs then x.set.nt = add_timings(r.nt, x.durs) end
    local new = after_commit(r.st, r.left, r.out)
    if new ~= r.st and is_finished(new) then
      x.set.frid = RID
      if new == 'failed' then x.set.err = 'workflow `' .. r.wf .. '`' .. NO_OUTPUT end
      finish_run(run, x.set, new, now, r)
      replies[last_of[run]][2] = new
    elseif new ~= r.st then
      x.set.st = new
    end
    write_run(run, x.set)
    if r.t1 then keep_expiry(items_key(run), r.t1) end
  end
end
if #done > 0 then call_chunked('ZREM', TIMERS, done) end

-- Queue what was not handed over; the take pops from it before anyone is woken.
local woke = {}
for wf, entries in pairs(queued) do
  if enqueue_quietly(wf, entries) then woke[wf] = #entries end
end

local take = { 0, -1 }
if next_wf ~= '' then
  -- A retry of an applied step: its successors the first attempt handed over to this worker
  -- (its lease names that request) are handed over again.
  if RETRY then
    for _, x in ipairs(commits) do
      if x.again then
        for _, s in ipairs(x.succs) do
          local f = redis.call('HMGET', items_key(x.run), s.id .. ':m', s.id .. ':w')
          local m = parse_meta(f[1])
          if m and m.s == 'I' and m.t == 1 and m.r == RID and f[2] == worker then
            direct[#direct + 1] = { x.run, s }
            budget = budget - 1
          end
        end
      end
    end
  end
  -- The reply, flat: the handed-over successors first, then what the take leased.
  local reply, n = { 1, 0 }, 2
  for _, d in ipairs(direct) do
    local run, s = d[1], d[2]
    local x = runs[run]
    local ver = num(x.f.ver or '0')
    local same, bytes = 1, ''
    if held[run] ~= ver then same, bytes = 0, x.set.ctx or redis.call('HGET', run_key(run), 'ctx') or '' end
    -- (One value at a time: the table grows in order.)
    reply[n + 1] = run
    reply[n + 2] = s.id
    reply[n + 3] = 1
    reply[n + 4] = s.bytes
    reply[n + 5] = s.node
    reply[n + 6] = 1
    reply[n + 7] = 1
    reply[n + 8] = x.f.dl or ''
    reply[n + 9] = same
    reply[n + 10] = bytes
    reply[n + 11] = ver
    n = n + 11
  end
  if replay then
    if replay[1] == 1 then
      for v = 3, 2 + replay[2] * 11 do
        n = n + 1
        reply[n] = replay[v]
      end
    end
  elseif budget > 0 then
    -- The take writes its items into this reply; only they are remembered for a retry.
    local _, count =
      take_next(next_wf, worker, lease_ms, max_del, budget, held, woken, now, reply, n)
    remember_take(last, reply, n, count)
    n = n + 11 * count
  end
  if n > 2 then
    reply[2] = (n - 2) / 11
    take = reply
  end
end
for wf, n in pairs(woke) do
  local left = wf == next_wf and budget > 0 and redis.call('LLEN', queue_key(wf)) or n
  if left > 0 then wake(wf, left) end
end
flush_timers()
flush_events(now)
return { replies, take }
