-- Shared helpers: finishing runs (retention, run events, revival).
-- A part of every script's prelude, after the parts `scripts.rs` lists before it (the key
-- layout and the call set-up are in `base.lua`).

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
  if find(run, '\t', 1, true) or find(run, '\n', 1, true) or byte(run, 1) == 27 then
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
    local head = {}
    if not (HEAD_OF == FINISHED and HEAD_AT >= now - RETENTION) then
      local first = rcall('LINDEX', FINISHED, '0')
      local t0 = first and match(first, '^(%d+) ')
      HEAD_OF, HEAD_AT = t0 and FINISHED, t0 and tonumber(t0)
      if first and not (t0 and tonumber(t0) >= now - RETENTION) then
        head = rcall('LRANGE', FINISHED, '0', '15')
      end
    end
    local over, old = 0, {}
    for _, line in ipairs(head) do
      local t, run = match(line, '^(%d+) (.+)$')
      if t and tonumber(t) >= now - RETENTION then break end
      over = over + 1
      if run and rcall('EXISTS', run_key(run)) == 0 then old[#old + 1] = run end
    end
    if over > 0 then
      rcall('LPOP', FINISHED, over)
      HEAD_OF = nil
    end
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
