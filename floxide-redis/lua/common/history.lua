-- Shared helpers: the step history.
-- A part of every script's prelude, after the parts `scripts.rs` lists before it (the key
-- layout and the call set-up are in `base.lua`).

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
