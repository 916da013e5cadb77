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
--            duration in µs, the lease's holder, the kept successors' lease in ms ('' for
--            none: see below), how many successors it keeps (from the first), successor
--            count s, s × (id, node, bytes), output count o,
--            o outputs (JSON), error count e, e errors (JSON)), then whole chains: count w,
--            w × (run id, its first item's id, its token, step count n, the run's node
--            timings after it (see `add_timings`: the run has none before it), context base
--            version ('' when the context is unchanged), the
--            last context bytes, how many steps changed it, the context version the worker
--            holds after the chain ('' for none), output count o, o outputs (JSON)), then for
--            the take: workflow ('' for none), worker id, lease in ms, max deliveries, n,
--            woken flag
-- Returns {rows, take reply (see take.lua: one that leased nothing says when work falls due,
--          so that the worker can block at once) or {0, -2} (no take made)}: the rows flat,
--          two values per step,
--          k × ('ok', final status or '' | 'conflict', version | 'lost', '' |
--          'inactive', status) then one per step of each whole chain (the same, or
--          'again', '': see below)
-- A whole chain is all the steps of a run in the call, sent in short: from the run's first
-- item (leased by a take) each later step is a successor kept by one before it, each
-- successor is kept and a later step, and none records errors or requires a version (a
-- chain, or a tree such as a fan and its leaves). It is applied at once when it
-- completes its run quietly (see `run_of`); otherwise nothing of it is, its rows are
-- 'again', and the worker sends its steps again, one by one.
-- A retry of the request (same request id) answers its applied steps with 'ok' again and
-- gets the items its take leased.
-- A kept successor (one of the first successors of a step that asks for it, when the step
-- creates it and the run takes items) is leased to the step's worker with token 0 and not
-- returned: the worker executed it already (a chained step). Its commit, when it follows in
-- the same call, needs no read; in a later call its lease is checked with its holder (no take
-- grants token 0).
-- Its parts are in commit_steps.lua, which scripts.rs puts before this file.

-- Each call:
local k = num(ARGV[5])
-- The whole chains' arguments start past the k steps, and the take's past those (each step's
-- own fields are read where it is applied, below, without a table per step).
-- The walk also plans, per run, what its steps would do if all were applied: `delta`, the
-- change of its outstanding count (each new successor one more, each step one less), `outs`,
-- the outputs, and `chain`, whether they may be one chain or tree this call finishes as a
-- whole (each step after the first a kept successor, each keeping all its successors, no
-- errors; `commit_quiet` checks that each later step is a successor of one before it). A
-- run whose plan finishes it (see `run_of`) is "quiet".
-- `c` and `i` are the place of the run's first step in the batch and where its arguments
-- start; `at` lists those of all its steps while they may be a chain (made at the second).
-- `starts`, `outs_at` and `errs_at` keep, per step, where its arguments, its output count and
-- its error count are.
plan = {}
starts, outs_at, errs_at = {}, {}, {}
local i = 6
for c = 1, k do
  local ns, _, o, e, next_i = step_parts(i)
  local run = ARGV[i]
  local p = plan[run]
  starts[c], outs_at[c], errs_at[c] = i, o, e
  if not p then
    p = { delta = 0, outs = 0, chain = true, c = c, i = i }
    plan[run] = p
  else
    if ARGV[i + 2] ~= '0' then p.chain = false end
    if p.chain then
      local at = p.at
      if not at then
        at = { p.c, p.i }
        p.at = at
      end
      at[#at + 1] = c
      at[#at + 1] = i
    end
  end
  p.delta = p.delta + ns - 1
  p.outs = p.outs + num(ARGV[o])
  if (ns > 0 and (ARGV[i + 10] == '' or num(ARGV[i + 11]) < ns)) or num(ARGV[e]) > 0 then
    p.chain = false
  end
  i = next_i
end
local whole = num(ARGV[i] or '0')
local chains_at = i + 1
i = chains_at
for _ = 1, whole do
  local _, _, next_j = chain_parts(i)
  i = next_j
end
next_wf = ARGV[i] or ''
local lease_ms, max_del
worker, lease_ms, max_del = ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
budget = next_wf ~= '' and num(ARGV[i + 4]) or 0
local woken = ARGV[i + 5] == '1'
local last = PFX .. 'wc:' .. (worker or '')
now = now_ms()
-- A direct hand-off's lease end, and the fixed starts of the history lines of commits and
-- hand-offs (see the key layout; the latter made at the first hand-off).
until_ms = now + (lease_ms or 0)
commit_line = 'C ' .. text(now) .. ' '
lease_line = nil
runs, order = {}, {}
held = {}      -- run -> context version this worker holds after its applied steps
direct = {}    -- successors leased straight to the worker: run, id, node, bytes (flat)
queued = {}    -- workflow -> entries to queue
done = {}      -- the committed items' lease timers, removed in one command
again = {}     -- steps a retry of this request finds applied: run, successors' index, count
broken = {}    -- runs whose context change the batch refused
kept = {}      -- kept successors' lease timers -> their end (added unless committed here)
replies = {}
last_of = {}

-- A retried request whose take was applied gets the same items back: those its first
-- attempt popped from the queue (remembered), and those it handed over (below).
local replay = next_wf ~= '' and replay_take(last, worker) or nil
-- Once a context change of a run is refused, its later ones in the batch are refused too:
-- the worker may have joined them onto the refused one, whose version another commit can reach.
for c = 1, k do
  i = starts[c]
  local run = ARGV[i]
  local p = plan[run]
  if p.fast == nil then p.fast = p.chain and commit_quiet(run, p) end
  if not p.fast then
    local row, applied = commit_one(c)
    if ARGV[i + 4] ~= '' and row[1] ~= 'ok' then broken[run] = true end
    replies[c] = row
    if applied then last_of[run] = c end
  end
end

do
  local row, j = k + 1, chains_at
  for _ = 1, whole do
    local n, _, next_j = chain_parts(j)
    if not commit_whole(j, row) then
      for c = row, row + n - 1 do replies[c] = AGAIN end
    end
    row, j = row + n, next_j
  end
end

write_runs()
if #done > 0 then call_chunked('ZREM', TIMERS, done) end
for timer, ends in pairs(kept) do add_timer(ends, timer) end

-- Queue what was not handed over; the take pops from it before anyone is woken.
local woke = {}
for wf, entries in pairs(queued) do
  if enqueue_quietly(wf, entries) then woke[wf] = #entries end
end

local take = take_after(replay, woken, last, lease_ms, max_del)
for wf, n in pairs(woke) do
  local left = wf == next_wf and budget > 0 and rcall('LLEN', queue_key(wf)) or n
  if left > 0 then wake(wf, left) end
end
flush_timers()
flush_events(now)
-- The rows go flat, two values each: Redis turns each table of a script's reply into a reply
-- of its own, at several lookups a table.
local flat = {}
for c = 1, #replies do
  local row = replies[c]
  flat[2 * c - 1] = row[1]
  flat[2 * c] = row[2] or ''
end
return { flat, take }
