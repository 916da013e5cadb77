-- Shared helpers: item states, the run state machine, queues and run records.
-- A part of every script's prelude, after the parts `scripts.rs` lists before it (the key
-- layout and the call set-up are in `base.lua`).

-- Item state ----------------------------------------------------------------------------------

-- An item's state from the texts of its fields (see the key layout).
local function state_text(s, a, d, t, node, rid)
  return s .. ' ' .. a .. ' ' .. d .. ' ' .. t .. ' ' .. node .. ' ' .. rid
end

local function meta(s, a, d, t, node, rid)
  return state_text(s, text(a), text(d), text(t), node, rid or '-')
end

-- The pattern of an item's state (see the key layout).
local META = '^(%u) (%d+) (%d+) (%d+) (%S+) (%S+)$'

local function parse_meta(m)
  if not m then return nil end
  local s, a, d, t, n, r = match(m, META)
  if not s then return nil end
  return { s = s, a = num(a), d = num(d), t = num(t), n = n, r = r }
end

local function with_state(m, s, rid) return meta(s, m.a, m.d, m.t, m.n, rid or m.r) end

-- Whether state `m` (its item's worker `w`) is leased under `token` to `holder`: a kept lease
-- (token 0, see commit.lua) is its holder's only.
local function holds(m, token, w, holder)
  return m ~= nil and m.s == 'I' and m.t == token and (token ~= 0 or w == holder)
end

-- The run state machine, mirroring floxide-core's `distributed::machine` (same names) -------

-- (The predicates on a status are tables indexed by it, `takes_items[st]`: a Lua call costs
-- more than the lookup, and they are asked for every item.)
local is_finished = { completed = true, failed = true, cancelled = true }
local is_active = { pending = true, running = true }
local function finished_status(has_output) if has_output then return 'completed' end return 'failed' end
-- A leased item's commit or failure report is refused once the run is cancelled or completed
-- (or gone: no status).
local accepts_results = { pending = true, running = true, paused = true, failed = true }
local takes_items = is_active
-- The status after a step committed, `left` counting the run's outstanding items after it.
local function after_commit(st, left, has_output)
  if st == 'pending' then st = 'running' end
  if is_active[st] and left <= 0 then return finished_status(has_output) end
  return st
end
-- What a failed step's report does: 'inactive', 'retry', or 'dead' with the run's new status.
local function after_failure(st, retry)
  if not accepts_results[st] then return 'inactive' end
  if retry then return 'retry' end
  if is_finished[st] then return 'dead', st end
  return 'dead', 'failed'
end
-- Resuming: the run's new status, or nil and the refused action.
local function resume_status(st, outstanding, has_output)
  if st == 'paused' then
    if outstanding <= 0 then return finished_status(has_output) end
    return 'running'
  elseif st == 'failed' then
    if outstanding > 0 then return 'running' end
    return nil, 'resume: nothing is left to run'
  end
  return nil, 'resume'
end

local NO_OUTPUT = ' finished without output: no terminal node produced a value'

-- Queues -----------------------------------------------------------------------------------

-- Publishes `message` on the partition's `channel` (`ev`, `wk`): on a cluster (`SHARDED`,
-- set in the library's header) to the partition's master only.
local function publish(channel, message)
  rcall(SHARDED and 'SPUBLISH' or 'PUBLISH', PFX .. channel, message)
end

-- Wakes up to `n` blocked workers of `wf` (the wake list is kept to 64 tokens). On a cluster,
-- idle workers wait for a message on the partition's wake channel instead (a blocking pop
-- cannot span the partitions' slots).
local function wake(wf, n)
  if SHARDED then
    publish('wk', wf)
    return
  end
  local tokens = {}
  for _ = 1, min(n, 64) do tokens[#tokens + 1] = '1' end
  if rcall('LPUSH', wake_key(wf), unpack(tokens)) > 64 then
    rcall('LTRIM', wake_key(wf), '0', '63')
  end
end

-- Queues entries for `wf`'s workers, at the back (or the front), waking blocked workers when
-- the queue was empty (busy workers take from a non-empty queue before they block).
local function enqueue(wf, entries, front)
  if #entries == 0 then return end
  local len = call_chunked(front and 'RPUSH' or 'LPUSH', queue_key(wf), entries)
  if len == min(#entries, 1000) then wake(wf, #entries) end
end

-- Queues one entry (see `enqueue`), without making a list of it.
local function enqueue_one(wf, e, front)
  if rcall(front and 'RPUSH' or 'LPUSH', queue_key(wf), e) == 1 then wake(wf, 1) end
end

-- Queues entries at the back without waking anyone; returns whether the queue was empty
-- (the caller wakes workers for what is left once its own take has popped what it wants).
local function enqueue_quietly(wf, entries)
  if #entries == 0 then return false end
  return call_chunked('LPUSH', queue_key(wf), entries) == min(#entries, 1000)
end

-- Makes item `id` of `run` ready: queued when the run takes items, parked while it is paused
-- or failed (a resume queues it), dropped once the run is over. `r` holds the run's status
-- (`st`) and workflow (`wf`); parked items are counted in `r.pkc` (written by the caller).
-- Returns whether the item is still outstanding.
local function make_ready(run, id, r, front)
  if takes_items[r.st] then
    enqueue_one(r.wf, entry(id, run), front)
  elseif accepts_results[r.st] then
    rcall('LPUSH', parked_key(run), id)
    r.pkc = (r.pkc or 0) + 1
  else
    return false
  end
  return true
end

-- Run records ---------------------------------------------------------------------------------

-- The arguments of `write_run`'s command, kept across calls (grown once, not per call; only
-- the first `n` are sent).
local WRITE_ARGS = {}

-- Writes the fields in `set` to the run's record (one command).
local function write_run(run, set)
  local args, n = WRITE_ARGS, 0
  for k, v in pairs(set) do
    args[n + 1] = k
    args[n + 2] = type(v) == 'number' and text(v) or v
    n = n + 2
  end
  if n > 0 then
    rcall('HSET', run_key(run), unpack(args, 1, n))
    -- (The values are let go: a context may be large.)
    for i = 2, n, 2 do args[i] = false end
  end
end

-- Reads fields of a run's record into a table (false for missing ones).
local function read_run(run, fields)
  local v = rcall('HMGET', run_key(run), unpack(fields))
  local r = {}
  for i, f in ipairs(fields) do r[f] = v[i] end
  return r
end
