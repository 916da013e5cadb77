-- The commit script's parts: the functions that apply its steps and write its runs, and the
-- state of the call they serve (commit.lua has the arguments, the reply and each call's flow,
-- which makes each part of that state anew). scripts.rs puts this file before commit.lua, so
-- that the library makes the functions once, when it loads: made by each call, with their
-- upvalues and their garbage, they cost 5% of a lone run's script time.
local plan, starts, outs_at, errs_at, runs, order
local held, direct, queued, done, again, broken, kept, replies, last_of
local now, until_ms, commit_line, lease_line, next_wf, worker, budget
local NONE = {}      -- shared by the steps without parked successors (read only)
local OK = { 'ok', '' }  -- the reply row of an applied step whose run goes on (shared, read only)
local AGAIN = { 'again' }

-- Where the parts of the step whose arguments start at ARGV[i] are: its successor count, its
-- first successor's id, its output count, its error count, and the next step.
local function step_parts(i)
  local ns = num(ARGV[i + 12])
  local o = i + 13 + 3 * ns
  local e = o + 1 + num(ARGV[o])
  return ns, i + 13, o, e, e + 1 + num(ARGV[e])
end

-- Whole chains (see above): where the parts of the one at ARGV[j] are: its step count, where
-- its context base is, and the next chain.
local function chain_parts(j)
  local x = j + 5
  return num(ARGV[j + 3]), x, x + 5 + num(ARGV[x + 4])
end

-- Whether a run at status `st` with `left` items outstanding (a text) completes with a
-- routine history when its steps in this call change that count by `delta`: it has an
-- output (`has_out`) and no history note (`hx`), and routine histories are not kept.
local function completes_quietly(st, left, delta, has_out, hx)
  return takes_items[st] and num(left or '1') + delta == 0 and has_out and not hx
    and not KEEP_ROUTINE
end

-- The id of a run's first item (floxide-core's `ItemId::ROOT`).
local FIRST_ITEM = '00000000000000000000000000000001'

-- Whether item `id`'s lease, read as state `ms` and token `mt`, may be the first lease of its
-- run's first item, still held under `token` (see `run_of`).
local function first_lease(id, token, ms, mt)
  return ms == 'I' and token == '1' and mt == '1' and id == FIRST_ITEM
end

-- A run's writes (see `run_of`), with room made for those of a run that finishes: grown one
-- field at a time, the table would be rebuilt four times. (A field set to nil in a
-- constructor keeps its room; `pairs` skips it.)
local function new_set()
  return { st = nil, t1 = nil, out = nil, nt = nil, left = nil, m_items = nil, frid = nil,
           ver = nil }
end

-- Runs touched by the batch: their record's fields, read once, and `set`, the writes.
-- The fields only some commits need are read when needed (`rare`): a hash kept compact by
-- Redis looks each field up by a scan, a missing one by a scan of it all. (The table is made
-- by one constructor: filled field by field, Lua would grow it four times.)
-- A run whose first item is on its first lease (`fresh`, see `first_lease`), and which made
-- no other item (no `m_items`), has had nothing committed, failed or noted yet: every other
-- item descends from a commit of the first, and after a failure, expiry or release of it
-- only a new lease, under a higher token, holds it again. So it has no counters, outputs,
-- errors, context version, node timings or history note, and only its status and
-- idempotency key are read (its workflow, `wf`, and deadline, `dl`, when asked for).
local function run_of(run, fresh)
  local r = runs[run]
  if r then return r end
  if fresh then
    local v = rcall('HMGET', run_key(run), 'st', 'idem', 'm_items')
    if takes_items[v[1]] and not v[3] then
      r = { st = v[1], ver = false, left = false, out = false, t1 = false, m_items = false,
            nt = false, nout = false, nerr = false, idem = v[2], hx = false, set = new_set(),
            touched = false }
    end
  end
  if not r then
    -- (With what finishing the run needs: most runs of a batch finish in it.)
    local v = rcall('HMGET', run_key(run), 'st', 'ver', 'wf', 'left', 'out', 'dl', 'm_items',
      'nt', 'nout', 'nerr', 'idem', 'hx')
    -- Only a finished run has a finish time (`t1`); of those only a failed one takes commits.
    local t1 = v[1] == 'failed' and rcall('HGET', run_key(run), 't1') or false
    r = { st = v[1], ver = v[2], wf = v[3], left = v[4], out = v[5], t1 = t1, dl = v[6],
          m_items = v[7], nt = v[8], nout = v[9], nerr = v[10], idem = v[11], hx = v[12],
          set = new_set(), touched = false }
  end
  -- Quiet: this call completes the run with a routine history if all its steps apply. Its
  -- items and history would go at once, so its steps' item writes and history lines are
  -- not made, only noted (`lazy`), and made after all (`unquiet`) if it does not.
  local p = plan[run]
  r.quiet = p and p.chain and completes_quietly(r.st, r.left, p.delta, r.out or p.outs > 0, r.hx)
  runs[run] = r
  order[#order + 1] = run
  return r
end

-- Field `name` of a touched run's record, read from it the first time it is asked for.
local function rare(run, name)
  local r = runs[run]
  if r[name] == nil then r[name] = rcall('HGET', run_key(run), name) end
  return r[name]
end

-- Adds output `v` to run `r`: the first goes in its record, the others in a list (pushed
-- once per run at the end).
local function add_output(r, v)
  if not r.out then
    r.out = v
    r.set.out = v
  else
    r.outs = r.outs or {}
    r.outs[#r.outs + 1] = v
  end
end

-- The writes to a run's item hash that commit item `id` (its state `ma`..`mn` as read): its
-- state, committed, and its bytes, emptied; more are appended from index 5.
local function committed_writes(id, field, ma, md, mt, mn)
  return { field, state_text('C', ma, md, mt, mn, RID), id, '' }
end

-- Appends to `hset` (filled up to `h`) new successor `sid`'s bytes and state field name.
local function new_item_writes(hset, h, sid, sbytes, sfield)
  hset[h + 1] = sid
  hset[h + 2] = sbytes
  hset[h + 3] = sfield
  return h + 3
end

-- Appends to `hset` (filled up to `h`) the lease of new successor `sid` kept for the step's
-- worker `holder` until `ends` (see above), and adds its lease line; returns the new fill.
local function keep_writes(run, hset, h, sid, snode, holder, ends)
  hset[h + 1] = state_text('I', '1', '1', '0', snode, RID)
  hset[h + 2] = sid .. ':w'
  hset[h + 3] = holder
  if STEP_HISTORY then
    history_line(run, 'L ' .. text(now) .. ' 0 1 1 ' .. text(ends) .. ' ' .. sid .. ' ' ..
      snode .. ' ' .. holder)
  end
  return h + 3
end

-- Adds the commit line of item `id` (see the key layout).
local function commit_event(run, id, ma, mt, mn, holder)
  if STEP_HISTORY then
    history_line(run, commit_line .. mt .. ' ' .. ma .. ' - - ' .. id .. ' ' .. mn .. ' ' .. holder)
  end
end

-- Makes the item writes and history lines a quiet run's applied steps left unmade (it turned
-- out not to finish, or not routinely), and ends its quiet. (Nothing else adds a line to a
-- quiet run's history: a step refused with a line ends the quiet first, see `not_leased`.)
local function unquiet(run, r)
  local lazy = r.lazy
  r.quiet, r.lazy = false, nil
  if not lazy then return end
  local hsets = r.hsets or {}
  for j = 1, r.nlazy, 3 do
    -- (A step read from the store noted its state; a kept one's is known.)
    local i, state = lazy[j], lazy[j + 1]
    local id, holder = ARGV[i + 1], ARGV[i + 9]
    local ma, md, mt, mn
    if state then
      local _
      _, ma, md, mt, mn = match(state, META)
    else
      ma, md, mt, mn = '1', '1', '0', ARGV[i + 7]
    end
    local hset = committed_writes(id, id .. ':m', ma, md, mt, mn)
    if lazy[j + 2] > 0 then
      -- (A quiet step created all its successors, kept for its worker.)
      local h, ends = 4, now + num(ARGV[i + 10])
      for s = i + 13, i + 10 + 3 * lazy[j + 2], 3 do
        local sid = ARGV[s]
        h = new_item_writes(hset, h, sid, ARGV[s + 2], sid .. ':m')
        h = keep_writes(run, hset, h, sid, ARGV[s + 1], holder, ends)
      end
    end
    commit_event(run, id, ma, mt, mn, holder)
    hsets[#hsets + 1] = hset
  end
  r.hsets = hsets
end

-- The answer to step `id` of `run` (leased under `token`, a text) when its lease is not found
-- as leased: applied before by this request, refused (run over), or lost.
local function not_leased(run, id, f1, token, holder, s, ns)
  local m = parse_meta(f1)
  local r = run_of(run)
  -- (Its lines follow those of the run's steps applied before it.)
  if r.lazy then unquiet(run, r) end
  -- This request applied the step before its reply was lost: answer as then.
  if m and m.s == 'C' and m.r == RID then
    again[#again + 1] = run
    again[#again + 1] = s
    again[#again + 1] = ns
    return { 'ok', is_finished[r.st] and r.st or '' }
  end
  if not m and rare(run, 'frid') == RID then return { 'ok', r.st or '' } end
  -- A cancelled or completed run's items are gone: its in-flight steps learn it is over.
  if not m and r.st and not accepts_results[r.st] then return { 'inactive', r.st } end
  if m then step_event(run, 'Z', id, m.n, holder, num(token), m.a, now) end
  return { 'lost' }
end

-- Applies the step whose arguments start at ARGV[i] (see above); returns its reply row (the
-- final status is filled in at the end) and whether it was applied now.
local function commit_one(c)
  local i = starts[c]
  local run, id, token, required = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local base, holder, keep_ms = ARGV[i + 4], ARGV[i + 9], ARGV[i + 10]
  local ns, s, o, e = num(ARGV[i + 12]), i + 13, outs_at[c], errs_at[c]
  if base ~= '' and broken[run] then
    return { 'conflict', num(run_of(run).ver or '0') }, false
  end
  local it = items_key(run)
  local timer = 'L' .. id .. ':' .. run   -- its lease's timer (see `entry`)
  -- (Each field name is made once: its state's, and its successors' in `fields` or `field1`.)
  local field = id .. ':m'
  local fields, field1
  if ns == 1 then
    field1 = ARGV[s] .. ':m'
  elseif ns > 1 then
    fields = { field }
    for n = 0, ns - 1 do fields[n + 2] = ARGV[s + 3 * n] .. ':m' end
  end
  -- `f1` is the item's state as stored (nil for a kept one), `f[1 + n]` successor n's.
  local f, f1, ms, ma, md, mt, mn, mr = NONE, nil
  if token == '0' and kept[timer] then
    -- Kept by an earlier step of this call: leased as written there, and new, so its
    -- successors are too.
    ms, ma, md, mt, mn, mr = 'I', '1', '1', '0', ARGV[i + 7], RID
  else
    if ns == 0 then
      f1 = rcall('HGET', it, field)
    else
      if ns == 1 then
        f = rcall('HMGET', it, field, field1)
      else
        f = hmget_chunked(it, fields)
      end
      f1 = f[1]
    end
    -- The lease, read without a table: state I under this step's token (a kept one, token 0,
    -- held by this worker).
    ms, ma, md, mt, mn, mr = match(f1 or '', META)
    if ms ~= 'I' or mt ~= token or (token == '0' and rcall('HGET', it, id .. ':w') ~= holder) then
      return not_leased(run, id, f1, token, holder, s, ns), false
    end
  end
  local r = run_of(run)
  if not accepts_results[r.st] then
    rcall('HSET', it, field, state_text('X', ma, md, mt, mn, RID))
    if kept[timer] then kept[timer] = nil else rcall('ZREM', TIMERS, timer) end
    return { 'inactive', r.st or 'cancelled' }, false
  end
  local ver = num(r.ver or '0')
  if required ~= '' and num(required) ~= ver then return { 'conflict', ver }, false end
  if base ~= '' then
    if num(base) ~= ver then return { 'conflict', ver }, false end
    ver = ver + 1
    r.ver, r.set.ver, r.set.ctx = ver, ver, ARGV[i + 5]
    held[run] = ver
  elseif ARGV[i + 6] ~= '' then
    held[run] = num(ARGV[i + 6])
  end
  if r.st == 'pending' then r.st = 'running'; r.set.st = 'running' end
  r.touched = true
  -- Its first `nkeep` successors are kept for its worker, if it creates them.
  local nkeep = keep_ms ~= '' and takes_items[r.st] and num(ARGV[i + 11]) or 0
  -- A step of a quiet run (see `run_of`) is noted, its writes not made; one it cannot take
  -- quietly (never, as planned: one that does not create and keep all its successors) ends
  -- the quiet.
  local quiet = r.quiet
  if quiet and ns > 0 then
    local all = nkeep >= ns
    for n = 2, all and f ~= NONE and ns + 1 or 0 do
      if f[n] then all = false end
    end
    if not all then
      unquiet(run, r)
      quiet = false
    end
  end

  -- Successors: new ones are stored, leased straight to the worker while it has room, the
  -- others queued (parked while the run is paused or failed).
  local fresh = 0
  -- The item's payload goes (emptied in the same write as its completion).
  local hset, h
  if not quiet then
    hset = committed_writes(id, field, ma, md, mt, mn)
    h = 4   -- (counted: `#hset` is a search each time)
  end
  local parked = NONE
  local hands = ns > 0 and budget > 0 and takes_items[r.st] and rare(run, 'wf') == next_wf
  for n = 1, ns do
    if not f[1 + n] then
      local sid, snode, sbytes = ARGV[s], ARGV[s + 1], ARGV[s + 2]
      fresh = fresh + 1
      if not quiet then
        h = new_item_writes(hset, h, sid, sbytes, fields and fields[n + 1] or field1)
      end
      if n <= nkeep then
        -- Kept for this worker (see above): its timer is added at the end unless its commit
        -- follows in this call.
        local ends = now + num(keep_ms)
        kept['L' .. sid .. ':' .. run] = ends
        if not quiet then h = keep_writes(run, hset, h, sid, snode, holder, ends) end
      elseif hands and budget > 0 then
        budget = budget - 1
        -- (The lease names this request: a retry of it finds the item handed over.)
        hset[h + 1] = state_text('I', '1', '1', '1', snode, RID)
        hset[h + 2] = sid .. ':w'
        hset[h + 3] = worker
        h = h + 3
        local d = #direct
        direct[d + 1] = run
        direct[d + 2] = sid
        direct[d + 3] = snode
        direct[d + 4] = sbytes
        add_timer(until_ms, 'L' .. sid .. ':' .. run)
        -- (The routine history lines of a commit are made here, from fewer pieces.)
        if STEP_HISTORY then
          lease_line = lease_line or 'L ' .. text(now) .. ' 1 1 1 ' .. text(until_ms) .. ' '
          history_line(run, lease_line .. sid .. ' ' .. snode .. ' ' .. worker)
        end
      else
        h = h + 1
        hset[h] = state_text('P', '1', '0', '0', snode, '-')
        if takes_items[r.st] then
          local wf = rare(run, 'wf')
          local q = queued[wf]
          if not q then q = {}; queued[wf] = q end
          q[#q + 1] = entry(sid, run)
        else
          if parked == NONE then parked = {} end
          parked[#parked + 1] = sid
        end
      end
    end
    s = s + 3
  end
  if quiet then
    local lazy, l = r.lazy, r.nlazy
    if not lazy then
      lazy, l = {}, 0
      r.lazy = lazy
    end
    lazy[l + 1] = i
    lazy[l + 2] = f1 or false
    lazy[l + 3] = fresh
    r.nlazy = l + 3
  else
    -- (Written with the run's other steps, unless the run completes in this call: its items
    -- go.)
    local hsets = r.hsets
    if hsets then hsets[#hsets + 1] = hset else r.hsets = { hset } end
    commit_event(run, id, ma, mt, mn, holder)
  end
  if kept[timer] then kept[timer] = nil else done[#done + 1] = timer end
  if #parked > 0 then
    call_chunked('LPUSH', parked_key(run), parked)
    keep_expiry(parked_key(run), r.t1)
    r.pkc = tonumber(rare(run, 'pkc') or '0') + #parked
    r.set.pkc = r.pkc
  end

  -- Outputs (the first in the record, the others in a list, pushed once per run at the
  -- end), errors, counters.
  for n = o + 1, o + num(ARGV[o]) do add_output(r, ARGV[n]) end
  local ne = num(ARGV[e])
  if ne > 0 then
    call_chunked('RPUSH', errs_key(run), { unpack(ARGV, e + 1, e + ne) })
    r.nerr = tonumber(rare(run, 'nerr') or '0') + ne
    r.set.nerr = r.nerr
    keep_expiry(errs_key(run), r.t1)
  end
  -- Counters: only those that change are written. (The steps done are counted by the node
  -- timings, `nt`: their counts add up to them.)
  r.left = num(r.left or '1')
  if fresh ~= 1 then
    r.left = r.left + fresh - 1
    r.set.left = r.left
  end
  if fresh > 0 then
    r.m_items = num(r.m_items or '1') + fresh
    r.set.m_items = r.m_items
  end
  local durs = r.durs
  if not durs then durs = {}; r.durs = durs end
  local d = #durs
  durs[d + 1] = ARGV[i + 7]
  durs[d + 2] = ARGV[i + 8]
  return OK, true
end

-- The state and token of item `id`'s lease as stored (nil: no such item). (The state's head
-- alone is matched: its node and request are not needed.)
local LEASE_OF = '^(%u) %d+ %d+ (%d+) '
local function lease_of(run, id)
  return match(rcall('HGET', items_key(run), id .. ':m') or '', LEASE_OF)
end

-- Records that `n` steps from item `id` (leased by a take) completed quiet run `run`, with
-- last context `ctx` at version `ver` (none: nil), the context version the worker holds
-- after them (`after`, none: false), the last one's reply row `last`. (The caller records
-- their timings.)
local function quiet_done(run, r, id, n, ctx, ver, after, last)
  if ctx then r.ver, r.set.ver, r.set.ctx = ver, ver, ctx end
  if after then held[run] = after end
  if r.st == 'pending' then r.st = 'running'; r.set.st = 'running' end
  r.touched, r.quiet = true, false
  -- (Its items: one left, the first; each later step is a new one.)
  r.left, r.set.left = 0, 0
  if n > 1 then
    r.m_items = num(r.m_items or '1') + n - 1
    r.set.m_items = r.m_items
  end
  done[#done + 1] = 'L' .. id .. ':' .. run
  last_of[run] = last
end

-- Whether the steps at `at` (see `plan`) are a tree: each after the first is a successor of
-- one before it, and none is twice.
local OPEN = {}   -- successors not yet met (emptied again before returning)
local function is_tree(at)
  local tree = true
  for a = 2, #at, 2 do
    local s = at[a]
    if a > 2 then
      local id = ARGV[s + 1]
      if not OPEN[id] then tree = false; break end
      OPEN[id] = nil
    end
    for x = s + 13, s + 10 + 3 * num(ARGV[s + 12]), 3 do OPEN[ARGV[x]] = true end
  end
  for id in pairs(OPEN) do OPEN[id] = nil end
  return tree
end

-- Commits at once the steps of a quiet run (see `run_of`) when they are one tree that
-- starts at an item leased by a take (each later step a kept successor of one before it),
-- its lease holds and its context changes apply: the effects are those of its steps
-- applied one by one, with nothing of its items or history written (they go as the run
-- completes). Returns false, having changed nothing, when any of that does not hold: the
-- steps then go one by one.
local ONE = {}   -- the `at` of a run with one step (see `plan`), refilled for each
local function commit_quiet(run, p)
  local at = p.at
  if not at then
    at = ONE
    at[1], at[2] = p.c, p.i
  end
  local first = at[2]
  local id, token = ARGV[first + 1], ARGV[first + 2]
  if token == '0' or HISTORY_NOTE[run] or (#at > 2 and not is_tree(at)) then return false end
  local r = run_of(run)
  if not r.quiet or r.touched then return false end
  local ms, mt = lease_of(run, id)
  if ms ~= 'I' or mt ~= token then return false end
  local ver = num(r.ver or '0')
  local after, ctx = false, nil
  for a = 2, #at, 2 do
    local s = at[a]
    local required, base = ARGV[s + 3], ARGV[s + 4]
    if required ~= '' and num(required) ~= ver then return false end
    if base ~= '' then
      if num(base) ~= ver then return false end
      ver = ver + 1
      ctx, after = ARGV[s + 5], ver
    elseif ARGV[s + 6] ~= '' then
      after = num(ARGV[s + 6])
    end
  end
  local durs = {}
  for a = 2, #at, 2 do
    local s = at[a]
    local o = s + 13 + 3 * num(ARGV[s + 12])
    for n = o + 1, o + num(ARGV[o]) do add_output(r, ARGV[n]) end
    durs[a - 1] = ARGV[s + 7]
    durs[a] = ARGV[s + 8]
    replies[at[a - 1]] = OK
  end
  r.durs = durs
  quiet_done(run, r, id, #at / 2, ctx, ver, after, at[#at - 1])
  return true
end

-- Commits the whole chain at ARGV[j] (see above), answering its steps in rows `row` on;
-- returns false, having changed nothing, when it does not complete its run quietly.
local function commit_whole(j, row)
  local run, id, token = ARGV[j], ARGV[j + 1], ARGV[j + 2]
  local n, x = chain_parts(j)
  local ms, mt = lease_of(run, id)
  local r = run_of(run, first_lease(id, token, ms, mt))
  if not ms and rare(run, 'frid') == RID then
    -- This request completed the run before its reply was lost: answer as then.
    for c = row, row + n - 1 do replies[c] = { 'ok', r.st or '' } end
    return true
  end
  local base, nout = ARGV[x], num(ARGV[x + 4])
  local ver = num(r.ver or '0')
  if ms ~= 'I' or mt ~= token or token == '0' or r.touched
    or not completes_quietly(r.st, r.left, -1, r.out or nout > 0, r.hx) or HISTORY_NOTE[run]
    or (base ~= '' and num(base) ~= ver) or (r.nt or '') ~= '' then
    return false
  end
  local ctx
  if base ~= '' then
    ver = ver + num(ARGV[x + 2])
    ctx = ARGV[x + 1]
  end
  for v = x + 5, x + 4 + nout do add_output(r, ARGV[v]) end
  for c = row, row + n - 1 do replies[c] = OK end
  local after = ARGV[x + 3] ~= '' and num(ARGV[x + 3])
  r.set.nt = ARGV[j + 4]
  quiet_done(run, r, id, n, ctx, ver, after, row + n - 1)
  return true
end

-- Each touched run: its new status (finished when nothing is left), written once.
local function write_runs()
  for _, run in ipairs(order) do
    local r = runs[run]
    if r.touched then
      local set = r.set
      if r.outs then
        call_chunked('RPUSH', outs_key(run), r.outs)
        r.nout = tonumber(rare(run, 'nout') or '0') + #r.outs
        set.nout = r.nout
        keep_expiry(outs_key(run), r.t1)
      end
      if r.durs then set.nt = add_timings(r.nt, r.durs) end
      local new = after_commit(r.st, r.left, r.out)
      local finishing = new ~= r.st and is_finished[new]
      if r.lazy and not (finishing and new == 'completed' and not HISTORY_NOTE[run]) then
        unquiet(run, r)
      end
      if r.hsets and not (finishing and new ~= 'failed') then
        local hsets, all = r.hsets, r.hsets[1]
        if #hsets > 1 then
          all = {}
          for _, part in ipairs(hsets) do
            for j = 1, #part do all[#all + 1] = part[j] end
          end
        end
        call_chunked('HSET', items_key(run), all)
      end
      if finishing then
        set.frid = RID
        if new == 'failed' then set.err = 'workflow `' .. rare(run, 'wf') .. '`' .. NO_OUTPUT end
        finish_run(run, set, new, now, r)
        replies[last_of[run]] = { 'ok', new }
      elseif new ~= r.st then
        set.st = new
      end
      write_run(run, set)
      if r.t1 then keep_expiry(items_key(run), r.t1) end
    end
  end
end

-- The take after the commits (a retry's replay `replay`, see take.lua for the others): its
-- reply.
local function take_after(replay, woken, last, lease_ms, max_del)
  -- (-2: no take was made, as when a retried request's replay found nothing; see worker.rs.)
  local take = { 0, -2 }
  if next_wf ~= '' then
    -- A retry of an applied step: its successors the first attempt handed over to this worker
    -- (its lease names that request) are handed over again.
    for a = 1, #again, 3 do
      local run, s = again[a], again[a + 1]
      for _ = 1, again[a + 2] do
        local sid = ARGV[s]
        local f = rcall('HMGET', items_key(run), sid .. ':m', sid .. ':w')
        local m = parse_meta(f[1])
        if m and m.s == 'I' and m.t == 1 and m.r == RID and f[2] == worker then
          direct[#direct + 1] = run
          direct[#direct + 1] = sid
          direct[#direct + 1] = ARGV[s + 1]
          direct[#direct + 1] = ARGV[s + 2]
          budget = budget - 1
        end
        s = s + 3
      end
    end
    -- The reply, flat: the handed-over successors first, then what the take leased.
    local reply, n = { 1, 0 }, 2
    for d = 1, #direct, 4 do
      local run = direct[d]
      local r = runs[run]
      local ver = num(r.ver or '0')
      local same, bytes = 1, ''
      if held[run] ~= ver then same, bytes = 0, r.set.ctx or rcall('HGET', run_key(run), 'ctx') or '' end
      -- (One value at a time: the table grows in order.)
      reply[n + 1] = run
      reply[n + 2] = direct[d + 1]
      reply[n + 3] = 1
      reply[n + 4] = direct[d + 3]
      reply[n + 5] = direct[d + 2]
      reply[n + 6] = 1
      reply[n + 7] = 1
      reply[n + 8] = rare(run, 'dl') or ''
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
      local found, count =
        take_next(next_wf, worker, lease_ms, max_del, budget, held, woken, now, reply, n)
      remember_take(last, reply, n, count)
      n = n + 11 * count
      -- Nothing at all for the worker: when work falls due (see take.lua), for its wait.
      if n == 2 then take = found end
    end
    if n > 2 then
      reply[2] = (n - 2) / 11
      take = reply
    end
  end
  return take
end
