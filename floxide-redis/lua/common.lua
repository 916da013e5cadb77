-- Shared helpers, prepended to every script.
--
-- Key layout (see the crate documentation): every key of a partition starts with the same
-- prefix `<prefix>{p<N>}:`, whose hash tag puts them all in one Redis Cluster slot. Every
-- script receives one key of the partition in KEYS[1] (for routing), the partition's
-- never-written `guard` key in KEYS[2] (on a cluster, a call declaring a missing key is refused
-- with TRYAGAIN while the slot migrates, instead of running over a half-moved partition) and,
-- in ARGV:
--   [1] the partition prefix, [2] the retention of finished runs (ms), [3] the retention of
--   dead letters (ms), [4] the request id (retries of one request send the same id, and get
--   the first answer), then its own arguments from ARGV[5].
--
-- A work item entry is `<item id: 32 hex digits>:<run id>`. An item's state is one field of the
-- run's item hash, `<id>:m` = `<state> <attempt> <deliveries> <token> <node> <request>`: state P
-- (ready or parked), I (leased), R (waiting for its retry), C (committed), F (dead letter), X
-- (dropped); the token grows with each lease of the item (fencing); request is the id of the
-- request that committed or failed it (`-` before; for an item its parent's commit leased straight
-- to a worker, that commit's, until it is committed or failed). `<id>` holds the item's bytes
-- (emptied when it is committed), `<id>:w` its last worker. `wt:<worker>` (`wc:<worker>`) holds
-- what the worker's last take (commit) popped from the queue and leased, with that request's id and
-- the tokens, for a retry of it. `sh:<run>` is the run's step history: one line per lease
-- transition, `<kind> <ms> <token> <attempt> <delivery or -> <lease end ms or -> <item id> <node>
-- <worker>`, kind L (leased), H (renewed), E (expired), C (committed), Z (fenced out), F (failed;
-- the lease end field holds the retry's due time), R (released). The line of a run's first
-- lease, older than all the others, is kept in the run's item hash instead, written with the
-- lease, so a run that completes with a routine history never makes the list: `hl` = `<ms>
-- <token> <lease end ms> <item id>` and `hw` = `<node> <worker>` (its attempt and delivery are
-- 1). Readers put it first; it goes with the items, or to the front of the list when the run
-- finishes and keeps its history; a trim of the list drops it. (Split in two, each value stays
-- within the 64 bytes up to which Redis keeps a small hash compact.) A history is "routine"
-- while every item was leased once, on its first attempt, and renewed or committed; the first
-- other line sets the record's `hx` field. A run that completes with a routine history drops
-- it (unless `KEEP_ROUTINE`, set in the library's header): only the histories that explain
-- something outlive their run.

-- The library functions the scripts call most, bound by `setup` on the first call. A function
-- library's code finds the globals only through a metatable (a failed lookup first), and may not
-- read them at all while it loads; as upvalues they cost 1.4% fewer instructions per bulk step.
local rcall, sub, match, byte, find, format, gmatch, concat, min, max, floor

-- Per call, set by `setup` from ARGV (loaded as a function library, this code runs once and
-- its functions serve every call).
local PFX, RETENTION, LETTER_RETENTION, RID, RETRY
local TIMERS, RUNS, FINISHED, LEGACY_DONE, LETTERS, LETTER_INDEX
-- Run events, lease timers and finished runs (`FINISHED` lines) a call collects (flushed at
-- its end), and whether it finished a run.
local EVENTS, PRUNE_DONE, TIMER_ADDS, FINISHED_ADDS = {}, false, {}, {}
-- The decimal texts of the larger numbers formatted lately, and how many (see `text`).
local TEXT, TEXT_N = {}, 0
-- Step history lines a call collects per run (flushed at its end, one push per run), the runs
-- in order, the runs whose state the flush must check, those that finished in the call (their
-- history's expiry, or 'drop'), and those given a line that is not routine.
local HISTORY, HISTORY_RUNS, HISTORY_CHECK, HISTORY_ENDS, HISTORY_NOTE = {}, {}, {}, {}, {}
-- The most lines a run's history keeps: trimmed to that once it holds twice as many.
local HISTORY_KEPT = 1000

-- Empties the history collections (after their flush, or a call that stopped before it).
local function reset_history()
  if HISTORY_RUNS[1] or next(HISTORY_ENDS) then
    HISTORY, HISTORY_RUNS, HISTORY_CHECK, HISTORY_ENDS, HISTORY_NOTE = {}, {}, {}, {}, {}
  end
end

-- The names of runs' records and item hashes, kept a while across calls (made by
-- concatenation, a name is hashed anew each time; most calls name a run's keys several
-- times). `key_namer(part)` makes the function that names a run's key of kind `part` and
-- keeps its names, and the function that forgets them; KEYS_N counts the names kept.
local KEYS_N = 0

local function key_namer(part)
  local names = {}
  local function name(run)
    local k = names[run]
    if not k then
      k = PFX .. part .. run
      names[run], KEYS_N = k, KEYS_N + 1
    end
    return k
  end
  return name, function() names = {} end
end

local run_key, forget_run_keys = key_namer('r:')
local items_key, forget_items_keys = key_namer('i:')

-- The texts the retentions were read from (calls with the same ones skip the conversion).
local RETENTION_TEXT, LETTER_RETENTION_TEXT

local function setup()
  if not rcall then
    rcall, sub, match, byte, find, format, gmatch = redis.call, string.sub, string.match,
      string.byte, string.find, string.format, string.gmatch
    concat, min, max, floor = table.concat, math.min, math.max, math.floor
  end
  -- The partition's key names are made again only when the partition changes.
  if PFX ~= ARGV[1] or KEYS_N > 8192 then
    forget_run_keys()
    forget_items_keys()
    KEYS_N = 0
  end
  if PFX ~= ARGV[1] then
    PFX = ARGV[1]
    TIMERS, RUNS, FINISHED, LEGACY_DONE = PFX .. 'tm', PFX .. 'runs', PFX .. 'fin', PFX .. 'done'
    LETTERS, LETTER_INDEX = PFX .. 'dlh', PFX .. 'dlq'
  end
  if RETENTION_TEXT ~= ARGV[2] then RETENTION_TEXT, RETENTION = ARGV[2], tonumber(ARGV[2]) end
  if LETTER_RETENTION_TEXT ~= ARGV[3] then
    LETTER_RETENTION_TEXT, LETTER_RETENTION = ARGV[3], tonumber(ARGV[3])
  end
  -- A retried request carries its id with a `+`: only then is a first attempt's answer looked for.
  RID, RETRY = ARGV[4], byte(ARGV[4], -1) == 43
  if RETRY then RID = sub(RID, 1, -2) end
  PRUNE_DONE = false
  -- A call's collections are emptied by its flushes: they are made anew only when a call
  -- stopped before its end and left them filled (making them every call cost 4k instructions).
  if EVENTS[1] or TIMER_ADDS[1] or FINISHED_ADDS[1] then
    EVENTS, TIMER_ADDS, FINISHED_ADDS = {}, {}, {}
  end
  reset_history()
  if TEXT_N > 4096 then TEXT, TEXT_N = {}, 0 end
end

-- The texts of the small counts, tokens and attempts (0 to 1023), kept across calls.
local SMALL = {}

-- The decimal text of number `n`. Lua formats a number with the C library's floating-point
-- printer, which costs as much as a Redis command: a small number is formatted once for good,
-- the others are kept a while (the clock and a lease's end repeat across a batch). Redis formats
-- a number passed to a command the same way: the scripts pass texts.
local function text(n)
  local s = SMALL[n] or TEXT[n]
  if not s then
    s = tostring(n)
    if n >= 0 and n < 1024 and n % 1 == 0 then
      SMALL[n] = s
    else
      TEXT[n], TEXT_N = s, TEXT_N + 1
    end
  end
  return s
end

-- The numbers of short texts of small whole numbers (tokens, attempts, counts), kept across
-- calls: Lua reads a number with the C library's `strtod`, ~2k instructions each.
local SMALL_OF = {}

-- The number `s` (a text or a number) reads as (nil when it reads as none).
local function num(s)
  local n = SMALL_OF[s]
  if n then return n end
  n = tonumber(s)
  if n and n >= 0 and n < 1024 and n % 1 == 0 and type(s) == 'string' and #s <= 4 then
    SMALL_OF[s] = n
  end
  return n
end

-- The server's clock in ms (its text is kept: every call formats it).
local function now_ms()
  local t = rcall('TIME')
  local ms = sub('00000' .. t[2], -6, -4)
  local s = t[1] .. ms
  local n = tonumber(s)
  TEXT[n], TEXT_N = s, TEXT_N + 1
  return n
end

-- `redis.call(cmd, key, items...)` in slices of 1000 items (Lua's stack bounds unpack);
-- returns the first slice's answer.
local function call_chunked(cmd, key, items)
  if #items == 0 then return nil end
  if #items <= 1000 then return rcall(cmd, key, unpack(items)) end
  local first
  for i = 1, #items, 1000 do
    local answer = rcall(cmd, key, unpack(items, i, min(i + 999, #items)))
    if i == 1 then first = answer end
  end
  return first
end

-- HMGET of many fields, in slices of 1000.
local function hmget_chunked(key, fields)
  if #fields == 0 then return {} end
  if #fields <= 1000 then return rcall('HMGET', key, unpack(fields)) end
  local out = {}
  for i = 1, #fields, 1000 do
    local part = rcall('HMGET', key, unpack(fields, i, min(i + 999, #fields)))
    for k = 1, #part do out[i + k - 1] = part[k] end
  end
  return out
end

local function entry(id, run) return id .. ':' .. run end
local function split(e) return sub(e, 1, 32), sub(e, 34) end

local function parked_key(run) return PFX .. 'pk:' .. run end
local function letters_of_key(run) return PFX .. 'rdl:' .. run end
local function outs_key(run) return PFX .. 'outs:' .. run end
local function errs_key(run) return PFX .. 'errs:' .. run end
local function history_key(run) return PFX .. 'sh:' .. run end
local function queue_key(wf) return PFX .. 'q:' .. wf end
local function wake_key(wf) return PFX .. 'wake:' .. wf end

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

local function is_finished(st) return st == 'completed' or st == 'failed' or st == 'cancelled' end
local function is_active(st) return st == 'pending' or st == 'running' end
local function finished_status(has_output) if has_output then return 'completed' end return 'failed' end
-- A leased item's commit or failure report is refused once the run is cancelled or completed.
local function accepts_results(st) return st ~= nil and st ~= false and st ~= 'cancelled' and st ~= 'completed' end
local function takes_items(st) return is_active(st) end
-- The status after a step committed, `left` counting the run's outstanding items after it.
local function after_commit(st, left, has_output)
  if st == 'pending' then st = 'running' end
  if is_active(st) and left <= 0 then return finished_status(has_output) end
  return st
end
-- What a failed step's report does: 'inactive', 'retry', or 'dead' with the run's new status.
local function after_failure(st, retry)
  if not accepts_results(st) then return 'inactive' end
  if retry then return 'retry' end
  if is_finished(st) then return 'dead', st end
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
  if takes_items(r.st) then
    enqueue_one(r.wf, entry(id, run), front)
  elseif accepts_results(r.st) then
    rcall('LPUSH', parked_key(run), id)
    r.pkc = (r.pkc or 0) + 1
  else
    return false
  end
  return true
end

-- Run records ---------------------------------------------------------------------------------

-- Writes the fields in `set` to the run's record (one command).
local function write_run(run, set)
  local args, n = {}, 0
  for k, v in pairs(set) do
    args[n + 1] = k
    args[n + 2] = type(v) == 'number' and text(v) or v
    n = n + 2
  end
  if n > 0 then rcall('HSET', run_key(run), unpack(args)) end
end

-- Reads fields of a run's record into a table (false for missing ones).
local function read_run(run, fields)
  local v = rcall('HMGET', run_key(run), unpack(fields))
  local r = {}
  for i, f in ipairs(fields) do r[f] = v[i] end
  return r
end

-- Step history -----------------------------------------------------------------------------

-- Adds `line` to the step history of `run` (the caller marks the run for the flush's checks).
local function history_line(run, line)
  local lines = HISTORY[run]
  if not lines then
    lines = {}
    HISTORY[run] = lines
    HISTORY_RUNS[#HISTORY_RUNS + 1] = run
  end
  lines[#lines + 1] = line
end

-- A step history line (see the key layout).
local function event_line(kind, id, node, worker, token, attempt, now, delivery, until_ms)
  return kind .. ' ' .. text(now) .. ' ' .. text(token) .. ' ' .. text(attempt) .. ' ' ..
    (delivery and text(delivery) or '-') .. ' ' .. (until_ms and text(until_ms) or '-') .. ' ' .. id ..
    ' ' .. node .. ' ' .. (worker or '')
end

-- The history line of a run's first lease from the two fields its item hash keeps it in (see
-- the key layout); nil when they do not read as such.
local function first_lease_line(hl, hw)
  local at, t, ends, id = match(hl or '', '^(%d+) (%d+) (%d+) (%S+)$')
  local node, worker = match(hw or '', '^(%S+) (.*)$')
  if not (at and node) then return nil end
  return 'L ' .. at .. ' ' .. t .. ' 1 1 ' .. ends .. ' ' .. id .. ' ' .. node .. ' ' .. worker
end

-- Adds a line to `run`'s step history (see the key layout); `active` when the caller knows
-- the run is active (else the flush checks whether the run still exists and has finished).
local function step_event(run, kind, id, node, worker, token, attempt, now, delivery, until_ms, active)
  if not STEP_HISTORY then return end
  history_line(run, event_line(kind, id, node, worker, token, attempt, now, delivery, until_ms))
  if not active then HISTORY_CHECK[run] = true end
  if kind ~= 'C' and kind ~= 'H' and (kind ~= 'L' or delivery ~= 1 or attempt ~= 1) then
    HISTORY_NOTE[run] = true
  end
end

-- Pushes the collected lines, one push per run, and marks the runs given a line that is not
-- routine. A history that did not exist before (its run finished long ago, or is gone) gets its
-- run's expiry, or is dropped with its run; one dropped when its run completed takes no more.
local function flush_history()
  for _, run in ipairs(HISTORY_RUNS) do
    local key, lines, ends = history_key(run), HISTORY[run], HISTORY_ENDS[run]
    if ends ~= 'drop' then
      local n = call_chunked('RPUSH', key, lines)
      local exists = not HISTORY_CHECK[run]
      if ends then
        rcall('PEXPIREAT', key, ends)
      elseif HISTORY_CHECK[run] and (n == #lines or HISTORY_NOTE[run]) then
        local r = read_run(run, { 'st', 't1' })
        exists = r.st
        if not r.st then
          rcall('DEL', key)
        elseif r.t1 and n == #lines then
          rcall('PEXPIREAT', key, text(tonumber(r.t1) + RETENTION))
        end
      end
      if HISTORY_NOTE[run] and exists then rcall('HSET', run_key(run), 'hx', '1') end
      if n > 2 * HISTORY_KEPT then
        rcall('LTRIM', key, -HISTORY_KEPT, -1)
        -- (The first lease's line, with the items, is older than every line kept.)
        rcall('HDEL', items_key(run), 'hl', 'hw')
      end
    end
  end
  reset_history()
end

-- Retention --------------------------------------------------------------------------------

-- Keeps a key of a run that finished at `t1` (ms; nil while it runs) expiring with the run's
-- record, a retention after its finish (a write may have cleared the key's expiry).
local function keep_expiry(key, t1)
  if t1 then rcall('PEXPIREAT', key, text(tonumber(t1) + RETENTION)) end
end

-- Runs whose record changed in a way waiters care about (finished, paused, resumed): one
-- message for all of them, sent by `flush_events` at the end of the script, a line per run:
-- its id, or for a run that completed with a short output, `<id>\t<output>` (its waiters
-- need not read it). An id holding a tab or a line break, or starting with ESC, goes as ESC
-- and its bytes in hex (the line stays whole). An output rides only when it holds no line
-- break.
local OUTPUT_HEARD = 1024

local function hex(c) return format('%02x', byte(c)) end

local function run_event(run, output)
  local id = run
  if find(run, '[\t\n]') or byte(run, 1) == 27 then
    id = '\27' .. (string.gsub(run, '.', hex))
  end
  if output and #output <= OUTPUT_HEARD and not find(output, '\n', 1, true) then
    EVENTS[#EVENTS + 1] = id .. '\t' .. output
  else
    EVENTS[#EVENTS + 1] = id
  end
end

-- A run reached a final status: record when, let its keys expire after the retention (the
-- items of a completed or cancelled run go now; a failed run keeps them for a resume), index
-- it for the pruning of the run index, and tell waiters. `set` holds the fields the caller
-- writes to the run's record afterwards (the new ones win over the stored ones); `r`, when
-- given, holds the record's `nout`, `nerr`, `idem`, `hx` and `out` as read by the caller. A
-- completed run's routine step history goes with its items (see the key layout).
local function finish_run(run, set, st, now, r)
  local exp = text(now + RETENTION)
  local output = st == 'completed' and (set.out or (r and r.out)) or nil
  set.st, set.t1 = st, now
  if not r or r.idem == nil then
    local v = rcall('HMGET', run_key(run), 'nout', 'nerr', 'idem', 'hx')
    r = { nout = v[1], nerr = v[2], idem = v[3], hx = v[4] }
  end
  local nout, nerr = set.nout or r.nout, set.nerr or r.nerr
  FINISHED_ADDS[#FINISHED_ADDS + 1] = text(now) .. ' ' .. run
  rcall('PEXPIREAT', run_key(run), exp)
  local routine = st == 'completed' and not KEEP_ROUTINE and not r.hx and not HISTORY_NOTE[run]
  if routine then
    HISTORY_ENDS[run] = 'drop'
  else
    -- The first lease's line goes to the front of the history the run keeps (before its
    -- expiry is set: the push may make the list), unless its items stay (a failed run).
    if STEP_HISTORY and st ~= 'failed' then
      local f = rcall('HMGET', items_key(run), 'hl', 'hw')
      local lead = f[1] and first_lease_line(f[1], f[2])
      if lead then rcall('LPUSH', history_key(run), lead) end
    end
    rcall('PEXPIREAT', history_key(run), exp)
    HISTORY_ENDS[run] = exp
  end
  if nout and tonumber(nout) > 0 then rcall('PEXPIREAT', outs_key(run), exp) end
  if nerr and tonumber(nerr) > 0 then rcall('PEXPIREAT', errs_key(run), exp) end
  if r.idem then rcall('PEXPIREAT', PFX .. 'idem:' .. r.idem, exp) end
  if st == 'failed' then
    rcall('PEXPIREAT', items_key(run), exp)
    rcall('PEXPIREAT', parked_key(run), exp)
    rcall('PEXPIREAT', letters_of_key(run), exp)
  elseif routine then
    rcall('UNLINK', items_key(run), parked_key(run), history_key(run))
  else
    rcall('UNLINK', items_key(run), parked_key(run))
  end
  PRUNE_DONE = true
  run_event(run, output)
end

-- Sends the script's run events (one message) and drops the index entries of runs whose
-- retention is over, a few at a time. Every script that changes a run's status calls it last.
local function flush_events(now)
  flush_history()
  if PRUNE_DONE then
    PRUNE_DONE = false
    call_chunked('RPUSH', FINISHED, FINISHED_ADDS)
    FINISHED_ADDS = {}
    -- The finished runs, oldest first: those whose retention is over leave the run index,
    -- unless a resume revived them (their record is still there; a second finish pushed
    -- them again).
    -- Most calls find the oldest still within its retention: one element is read for that.
    local first = rcall('LINDEX', FINISHED, '0')
    local t0 = first and match(first, '^(%d+) ')
    local head = (first and not (t0 and tonumber(t0) >= now - RETENTION))
      and rcall('LRANGE', FINISHED, '0', '15') or {}
    local over, old = 0, {}
    for _, line in ipairs(head) do
      local t, run = match(line, '^(%d+) (.+)$')
      if t and tonumber(t) >= now - RETENTION then break end
      over = over + 1
      if run and rcall('EXISTS', run_key(run)) == 0 then old[#old + 1] = run end
    end
    if over > 0 then rcall('LPOP', FINISHED, over) end
    -- Runs finished by a version that indexed them in a sorted set (`done`) leave too.
    if now % 64 == 0 then
      local legacy = rcall('ZRANGEBYSCORE', LEGACY_DONE, '-inf', text(now - RETENTION), 'LIMIT', '0', '16')
      if #legacy > 0 then
        rcall('ZREM', LEGACY_DONE, unpack(legacy))
        for _, run in ipairs(legacy) do old[#old + 1] = run end
      end
    end
    if #old > 0 then rcall('ZREM', RUNS, unpack(old)) end
  end
  if #EVENTS > 0 then
    publish('ev', concat(EVENTS, '\n'))
    EVENTS = {}
  end
end

-- A finished (failed) run runs again: its keys no longer expire.
local function revive_run(run, r)
  for _, k in ipairs({ run_key(run), items_key(run), parked_key(run), letters_of_key(run),
                       outs_key(run), errs_key(run), history_key(run) }) do
    rcall('PERSIST', k)
  end
  if r.idem then rcall('PERSIST', PFX .. 'idem:' .. r.idem) end
end

-- Dead letters -----------------------------------------------------------------------------

-- Drops the dead letters whose retention is over, a few at a time.
local function prune_letters(now)
  local old = rcall('ZRANGEBYSCORE', LETTER_INDEX, '-inf', text(now - LETTER_RETENTION), 'LIMIT', '0', '16')
  if #old > 0 then
    rcall('ZREM', LETTER_INDEX, unpack(old))
    local fields = {}
    for _, e in ipairs(old) do
      fields[#fields + 1] = e
      fields[#fields + 1] = e .. ':p'
    end
    rcall('HDEL', LETTERS, unpack(fields))
  end
end

-- Moves item `id` (state `m`, bytes `payload`) of `run` to the dead letters with `err`: the
-- letter (JSON) under its entry, the item's bytes under `<entry>:p`. The caller updates the
-- run (outstanding count, status).
local function dead_letter(run, id, m, payload, err, now)
  local e = entry(id, run)
  rcall('HSET', items_key(run), id .. ':m', with_state(m, 'F'))
  rcall('HDEL', items_key(run), id)
  rcall('HSET', LETTERS, e, cjson.encode({
    run_id = run, item_id = id, node = m.n, error = err, deliveries = m.d, attempt = m.a,
    at = now,
  }), e .. ':p', payload or '')
  rcall('ZADD', LETTER_INDEX, text(now), e)
  rcall('SADD', letters_of_key(run), id)
  prune_letters(now)
  -- The letters are pruned as new ones come; with none coming, the whole set expires with
  -- its newest letter, so no letter outlives its retention by more than the gap between it
  -- and the newest (and the listing hides those past it).
  local until_ms = text(now + LETTER_RETENTION)
  rcall('PEXPIREAT', LETTERS, until_ms)
  rcall('PEXPIREAT', LETTER_INDEX, until_ms)
end

-- Records a failure of item `id` of `run` in the run's error list (a `WorkflowError`).
local function record_error(run, id, node, err, attempt, now)
  rcall('RPUSH', errs_key(run), cjson.encode({
    work_item = id, node = node, error = err, attempt = attempt, handled = false,
    timestamp = { secs_since_epoch = floor(now / 1000), nanos_since_epoch = (now % 1000) * 1000000 },
  }))
end

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
  if not takes_items(r.st) then return end
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
        if accepts_results(r.st) then
          local f = rcall('HMGET', items_key(run), id .. ':m', id)
          -- (The state is read into locals: a table per item costs as much as a command.)
          local ms, ma, md, mt, mn, mr = match(f[1] or '', META)
          if ms == 'P' then
            if takes_items(r.st) then
              local d = num(md) + 1
              if d > max_deliveries then
                local m = parse_meta(f[1])
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
  -- A take fused into a commit does not look again, nor say when work falls due: the
  -- worker's idle take does both before it blocks.
  if fused and count == 0 then
    flush_timers()
    flush_events(now)
    return reply or { 0, -1 }, 0
  end
  if not reply and count == 0 and not scanned then
    due_work(now)
    count, full, more = pop_ready(wf, worker, lease_ms, max_deliveries, max_n, held, now, out, base)
    if count == 0 and more then reply = { 2 } end
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
  local d = rcall('ZRANGE', TIMERS, '0', '0', 'WITHSCORES')
  if d[2] then next_due = max(0, tonumber(d[2]) - now) end
  return { 0, next_due }, 0
end

-- Replays ---------------------------------------------------------------------------------

-- A take reply for the `<entry> <token>` lines whose item is still leased to `worker` under
-- that token (a retried request gets the items its first attempt leased, never an item
-- leased again since).
local function leased_rows(lines, worker)
  local reply = { 1, 0 }
  for _, line in ipairs(lines) do
    local e, token = match(line, '^(%S+) (%d+)$')
    if e then
      local id, run = split(e)
      local f = rcall('HMGET', items_key(run), id .. ':m', id, id .. ':w')
      local m = parse_meta(f[1])
      if m and m.s == 'I' and m.t == tonumber(token) and f[3] == worker then
        local r = read_run(run, { 'dl', 'ver', 'ctx' })
        for _, v in ipairs({ run, id, m.t, f[2] or '', m.n, m.a, m.d, r.dl or '', 0, r.ctx or '', r.ver or '0' }) do
          reply[#reply + 1] = v
        end
        reply[2] = reply[2] + 1
      end
    end
  end
  if reply[2] == 0 then return { 0, 0 } end
  return reply
end

local function lines_of(text)
  local out = {}
  for l in gmatch(text or '', '[^\n]+') do out[#out + 1] = l end
  return out
end

-- What a request leased, kept for two minutes under `key` with the request id. A worker has
-- at most one take and one commit in flight: they use different keys (`wt:` and `wc:`).
-- The record: the request id, then a line `<entry> <token>` per item the reply (`count` items
-- from index `base` + 1) leased, joined in one piece (no string per line).
local function remember_take(key, reply, base, count)
  if count > 0 then
    local parts, n = { RID }, 1
    for k = 0, count - 1 do
      local b = base + k * 11
      parts[n + 1], parts[n + 2], parts[n + 3] = '\n', reply[b + 2], ':'
      parts[n + 4], parts[n + 5], parts[n + 6] = reply[b + 1], ' ', text(reply[b + 3])
      n = n + 6
    end
    rcall('SET', key, concat(parts), 'PX', '120000')
  end
end

-- The reply a retried request (same request id) gets, or nil for a new request.
local function replay_take(key, worker)
  if not RETRY then return nil end
  local prev = rcall('GET', key)
  if not prev or sub(prev, 1, #RID + 1) ~= RID .. '\n' then return nil end
  return leased_rows(lines_of(sub(prev, #RID + 2)), worker)
end

-- Node timings: one field of the run's record, `<node> <count> <total µs> <max µs>;...`.
-- Adds `c` steps of `node` taking `t` µs in all and `x` µs at most to `nt`: the node's segment
-- is rewritten in place (the others are kept as they are); a segment that does not read as
-- numbers starts again from these steps.
local function add_timing(nt, node, c, t, x)
  local head = node .. ' '
  local at
  if sub(nt, 1, #head) == head then
    at = 1
  else
    at = find(nt, ';' .. head, 1, true)
    if at then at = at + 1 end
  end
  if not at then
    local seg = head .. text(c) .. ' ' .. text(t) .. ' ' .. text(x)
    return nt == '' and seg or nt .. ';' .. seg
  end
  -- (The numbers are read where they stand, and the segment's end found from their lengths.)
  local from = at + #head
  local c0, t0, x0 = match(nt, '^(%d+) (%d+) (%d+)', from)
  local stop = c0 and from + #c0 + #t0 + #x0 + 2
  if c0 and (stop > #nt or byte(nt, stop) == 59) then
    c, t = num(c0) + c, tonumber(t0) + t
    x = max(tonumber(x0), x)
  else
    stop = find(nt, ';', at, true) or #nt + 1
  end
  return sub(nt, 1, at - 1) .. head .. text(c) .. ' ' .. text(t) .. ' ' .. text(x) ..
    sub(nt, stop)
end

-- `durs` holds a script's steps of the run, `node, µs, node, µs, ...` (the µs as texts): each
-- node's segment is rewritten once for all its steps.
local function add_timings(nt, durs)
  nt = nt or ''
  if nt == '' then
    -- A run's first timings, each node once (a chain's, as a rule): the segments are made
    -- from the texts as sent, with no number read or written.
    local segs, seen, distinct = {}, {}, true
    for i = 1, #durs, 2 do
      local node, dur = durs[i], durs[i + 1]
      if seen[node] then
        distinct = false
        break
      end
      seen[node] = true
      segs[#segs + 1] = node .. ' 1 ' .. dur .. ' ' .. dur
    end
    if distinct then return concat(segs, ';') end
  end
  if #durs == 2 then
    local dur = tonumber(durs[2]) or 0
    return add_timing(nt, durs[1], 1, dur, dur)
  end
  local agg, order = {}, {}
  for i = 1, #durs, 2 do
    local node, dur = durs[i], tonumber(durs[i + 1]) or 0
    local a = agg[node]
    if a then
      a[1], a[2] = a[1] + 1, a[2] + dur
      if dur > a[3] then a[3] = dur end
    else
      agg[node] = { 1, dur, dur }
      order[#order + 1] = node
    end
  end
  for _, node in ipairs(order) do
    local a = agg[node]
    nt = add_timing(nt, node, a[1], a[2], a[3])
  end
  return nt
end
