-- Shared helpers, prepended to every script: this part, then the others of `common/` in the
-- order `scripts.rs` lists them (each may use what the parts before it define).
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
local tonumber, tostring, type, pairs, ipairs, unpack, next

-- Per call, set by `setup` from ARGV (loaded as a function library, this code runs once and
-- its functions serve every call).
local PFX, RETENTION, LETTER_RETENTION, RID, RETRY
local TIMERS, RUNS, FINISHED, LEGACY_DONE, LETTERS, LETTER_INDEX
-- Run events, lease timers and finished runs (`FINISHED` lines) a call collects (flushed at
-- its end), and whether it finished a run.
local EVENTS, PRUNE_DONE, TIMER_ADDS, FINISHED_ADDS = {}, false, {}, {}
-- A list of finished runs (`FINISHED`) and the time of its first line as last read, kept
-- across calls: lines are added at its end in time order, so its first line is never older,
-- and while it is within the retention nothing is due for pruning (see `flush_events`).
local HEAD_OF, HEAD_AT
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
  -- (Lines, checks and notes are only ever added together, by `step_event`; a finishing run
  -- gets an end without any. Only the collections used are made anew.)
  if HISTORY_RUNS[1] then
    HISTORY, HISTORY_RUNS, HISTORY_CHECK, HISTORY_NOTE = {}, {}, {}, {}
  end
  if next(HISTORY_ENDS) then HISTORY_ENDS = {} end
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
    tonumber, tostring, type, pairs, ipairs, unpack, next =
      _G.tonumber, _G.tostring, _G.type, _G.pairs, _G.ipairs, _G.unpack, _G.next
  end
  -- The partition's key names are made again only when the partition changes. The caches
  -- stay small (1024 names, 512 number texts): Redis steps the library's garbage collector
  -- every 50 calls, and that step costs more the larger the heap (with 8192 names and 4096
  -- texts, 306k instructions a step against 152k; a lone run's steps 5.6% more in all). A
  -- take and the commit of what it took are rarely more than 1024 names apart.
  if PFX ~= ARGV[1] or KEYS_N > 1024 then
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
  if TEXT_N > 512 then TEXT, TEXT_N = {}, 0 end
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
