-- Shared helpers for takes: due work, timers, leases, popping ready items.
-- A part of every script's prelude, after the parts `scripts.rs` lists before it (the key
-- layout and the call set-up are in `base.lua`).

-- Takes ----------------------------------------------------------------------------------------

-- Hands expired leases back to the queue and makes due retries ready (32 at most per call).
local function due_work(now)
  local due = rcall('ZRANGEBYSCORE', TIMERS, '-inf', text(now), 'LIMIT', '0', '32')
  if #due == 0 then return end
  rcall('ZREM', TIMERS, unpack(due))
  for _, member in ipairs(due) do
    local kind, e = sub(member, 1, 1), sub(member, 2)
    local id, run = split(e)
    local it = items_key(run)
    local f = rcall('HMGET', it, id .. ':m', id .. ':w')
    local m = parse_meta(f[1])
    if m and ((kind == 'L' and m.s == 'I') or (kind == 'R' and m.s == 'R')) then
      if kind == 'L' then step_event(run, 'E', id, m.n, f[2], m.t, m.a, now) end
      rcall('HSET', it, id .. ':m', with_state(m, 'P'))
      local r = read_run(run, { 'st', 'wf', 'pkc' })
      local set = {}
      if make_ready(run, id, r, kind == 'L') and r.pkc then set.pkc = r.pkc end
      if kind == 'L' then
        rcall('HINCRBY', run_key(run), 'm_reclaimed', '1')
        rcall('INCR', PFX .. 'reclaimed')
      end
      write_run(run, set)
    end
  end
end

-- Moves up to 256 parked items of a resumed run back to the queue (the rest on a later take).
local function unpark(run, marker)
  local r = read_run(run, { 'st', 'wf', 'pkc' })
  if not takes_items[r.st] then return end
  local ids = rcall('RPOP', parked_key(run), '256')
  if not ids then ids = {} end
  local entries = {}
  for i, id in ipairs(ids) do entries[i] = entry(id, run) end
  enqueue(r.wf, entries, false)
  local left = max(0, tonumber(r.pkc or '0') - #ids)
  rcall('HSET', run_key(run), 'pkc', left)
  if left > 0 and #ids > 0 then rcall('LPUSH', queue_key(r.wf), marker) end
end

-- Lease timers to add (ZADD arguments) collect in TIMER_ADDS, written by `flush_timers`.

local function add_timer(at, member)
  local n = #TIMER_ADDS
  TIMER_ADDS[n + 1] = text(at)
  TIMER_ADDS[n + 2] = member
end

local function flush_timers()
  if #TIMER_ADDS > 0 then
    call_chunked('ZADD', TIMERS, TIMER_ADDS)
    TIMER_ADDS = {}
  end
end

-- Leases item `id` of `run` to `worker`: its state's attempt `a` (a text), its delivery `d`,
-- token `t`, node and request as read (the lease's timer is added by `flush_timers`). The
-- state is made from those texts, without a table. The run's first lease (`first`: the run
-- was pending) makes it running; that lease's history line is kept with the item's state
-- (see the key layout).
local function lease(run, id, a, d, t, node, rid, worker, lease_ms, now, first)
  local until_ms = now + lease_ms
  add_timer(until_ms, 'L' .. id .. ':' .. run)
  if first then rcall('HSET', run_key(run), 'st', 'running') end
  if first and STEP_HISTORY and d == 1 and a == '1' then
    rcall('HSET', items_key(run), id .. ':m', state_text('I', a, text(d), text(t), node, rid),
      id .. ':w', worker, 'hl', text(now) .. ' ' .. text(t) .. ' ' .. text(until_ms) .. ' ' .. id,
      'hw', node .. ' ' .. worker)
  else
    rcall('HSET', items_key(run), id .. ':m',
      state_text('I', a, text(d), text(t), node, rid), id .. ':w', worker)
    step_event(run, 'L', id, node, worker, t, num(a), now, d, until_ms, true)
  end
end

-- Pops ready entries of `wf` and leases up to `max_n` items to `worker` (skipping stale
-- entries, parking items of paused or failed runs, dropping those of finished runs,
-- dead-lettering poison items; 256 entries examined at most). The context is left out of an
-- item of a run whose version is `held[run]` (the worker holds that context).
-- The leased items go into the flat reply `out` (see take.lua), 11 values each after index
-- `base`. Returns how many were leased, whether the batch is full, and whether entries are
-- left unexamined (the budget ran out).
local function pop_ready(wf, worker, lease_ms, max_deliveries, max_n, held, now, out, base)
  local count = 0
  local runs = {}
  local budget = 256
  while count < max_n do
    if budget == 0 then return count, false, true end
    local want = min(max_n - count, budget)
    local popped = rcall('RPOP', queue_key(wf), text(want))
    if not popped then return count, false, false end
    budget = budget - #popped
    -- Fewer entries than asked for: the queue is empty now (unless a resumed run's items
    -- were moved back to it below), no need to ask again.
    local drained = #popped < want
    for _, e in ipairs(popped) do
      if sub(e, 1, 1) == '@' then
        unpark(sub(e, 2), e)
        drained = false
      else
        local id, run = split(e)
        local r = runs[run]
        if not r then
          local v = rcall('HMGET', run_key(run), 'st', 'dl', 'ver', 'ctx')
          r = { st = v[1], dl = v[2], ver = v[3], ctx = v[4], wf = wf }
          runs[run] = r
        end
        -- Entries of finished runs (their items are gone) are dropped without a read.
        if accepts_results[r.st] then
          local f = rcall('HMGET', items_key(run), id .. ':m', id)
          -- (The state is read into locals: a table per item costs as much as a command.)
          local ms, ma, md, mt, mn, mr = match(f[1] or '', META)
          if ms == 'P' then
            if takes_items[r.st] then
              local d = num(md) + 1
              if d > max_deliveries then
                local m = parse_meta(f[1])
                -- (In the words of floxide-core's `poison_error`.)
                local err = 'poison item: delivered ' .. m.d ..
                  ' times without a commit (limit ' .. max_deliveries .. ')'
                dead_letter(run, id, m, f[2], err, now)
                record_error(run, id, m.n, err, m.a, now)
                step_event(run, 'F', id, m.n, '', m.t, m.a, now)
                r.left = tonumber(r.left or rcall('HGET', run_key(run), 'left') or '1') - 1
                local set = { err = err, left = r.left, nerr = 1 }
                finish_run(run, set, 'failed', now)
                write_run(run, set)
                r.st = 'failed'
              else
                local first = r.st == 'pending'
                if first then r.st = 'running' end
                local token = num(mt) + 1
                lease(run, id, ma, d, token, mn, mr, worker, lease_ms, now, first)
                local ctx, same = r.ctx or '', 0
                if held[run] == num(r.ver or '0') then ctx, same = '', 1 end
                local b = base + count * 11
                out[b + 1] = run
                out[b + 2] = id
                out[b + 3] = token
                out[b + 4] = f[2] or ''
                out[b + 5] = mn
                out[b + 6] = ma
                out[b + 7] = d
                out[b + 8] = r.dl or ''
                out[b + 9] = same
                out[b + 10] = ctx
                out[b + 11] = r.ver or '0'
                count = count + 1
              end
            else
              rcall('LPUSH', parked_key(run), id)
              rcall('HINCRBY', run_key(run), 'pkc', '1')
            end
          end
        end
      end
    end
    if drained and count < max_n then return count, false, false end
  end
  return count, true, false
end

-- Leases up to `max_n` ready items of `wf` for `worker`; returns the reply (see take.lua)
-- and how many items it leased. A take fused into a commit (`into`, the commit's reply, holds
-- `at` values) writes its items there instead (its count and the reply's head are the
-- commit's to set). Expired leases and due retries are rare, so under load they are looked for
-- on about one take in four (by the server's clock), and always before answering that nothing
-- is ready.
local function take_next(wf, worker, lease_ms, max_deliveries, max_n, held, woken, now, into, at)
  now = now or now_ms()
  local fused = into ~= nil
  local out, base = into or { 1, 0 }, at or 2
  local reply = nil
  local scanned = now % 4 == 0
  if scanned then due_work(now) end
  local count, full, more = pop_ready(wf, worker, lease_ms, max_deliveries, max_n, held, now, out, base)
  if count == 0 and more then reply = { 2 } end
  -- A take that leased nothing looks for due work (unless it just did) and looks again; then
  -- it says when work falls due. (A fused one too: its worker then blocks at once, without
  -- an idle take of its own.) The earliest timer tells whether anything is due at all: when
  -- nothing is, there is nothing to look for, and it is also when work falls due.
  local first_due
  if not reply and count == 0 and not scanned then
    first_due = rcall('ZRANGE', TIMERS, '0', '0', 'WITHSCORES')
    if first_due[2] and tonumber(first_due[2]) <= now then
      first_due = nil
      due_work(now)
      count, full, more = pop_ready(wf, worker, lease_ms, max_deliveries, max_n, held, now, out, base)
      if count == 0 and more then reply = { 2 } end
    end
  end
  flush_timers()
  flush_events(now)
  if reply then return reply, 0 end
  if count > 0 then
    -- A worker woken from its wait passes the wake-up on while work may be left.
    if woken and full then wake(wf, 1) end
    if not fused then out[2] = count end
    return out, count
  end
  local next_due = -1
  local d = first_due or rcall('ZRANGE', TIMERS, '0', '0', 'WITHSCORES')
  if d[2] then next_due = max(0, tonumber(d[2]) - now) end
  return { 0, next_due }, 0
end
