-- Records a failed step, fenced by its lease: schedules its retry (a timer), or dead-letters
-- the item (with its bytes) and fails the run; nothing but the item's drop once the run is
-- cancelled or completed.
-- KEYS[1]: the partition's timer set (`<pfx>tm`), for routing.
-- ARGV[5..]: run id, item id, token, error record (JSON), error text, retry delay in ms
--            ('' to dead-letter), the lease's holder
-- Returns {'ok', 'failed' when the run failed now, else ''} | {'lost'} | {'inactive', status}
-- A retry of the request that recorded the failure (same request id) gets {'ok', ''}.
local run, id, token = ARGV[5], ARGV[6], tonumber(ARGV[7])
local record, text, retry, holder = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local it = items_key(run)
local e = entry(id, run)
local f = rcall('HMGET', it, id .. ':m', id, id .. ':w')
local m = parse_meta(f[1])
if not holds(m, token, f[3], holder) then
  if m and m.r == RID and (m.s == 'R' or m.s == 'F' or m.s == 'X') then return { 'ok', '' } end
  -- A cancelled or completed run's items are gone: its in-flight steps learn it is over.
  local st = not m and rcall('HGET', run_key(run), 'st')
  if st and not accepts_results[st] then return { 'inactive', st } end
  if m then
    step_event(run, 'Z', id, m.n, holder, token, m.a, now_ms())
    flush_history()
  end
  return { 'lost' }
end
local r = read_run(run, { 'st', 'left', 'nerr', 't1', 'm_failed', 'm_retries', 'wf' })
local effect, new = after_failure(r.st, retry ~= '')
rcall('ZREM', TIMERS, 'L' .. e)
if effect == 'inactive' then
  rcall('HSET', it, id .. ':m', with_state(m, 'X', RID))
  return { 'inactive', r.st or 'cancelled' }
end
local now = now_ms()
-- The record's attempt is the item's, which only the server knows.
local rec = cjson.decode(record)
rec.attempt = m.a
rcall('RPUSH', errs_key(run), cjson.encode(rec))
local set = { nerr = tonumber(r.nerr or '0') + 1, m_failed = tonumber(r.m_failed or '0') + 1 }
keep_expiry(errs_key(run), r.t1)
local fin = ''
local retry_at = effect == 'retry' and now + tonumber(retry) or nil
step_event(run, 'F', id, m.n, holder, m.t, m.a, now, nil, retry_at)
if effect == 'retry' then
  rcall('HSET', it, id .. ':m', meta('R', m.a + 1, 0, m.t, m.n, RID))
  rcall('ZADD', TIMERS, now + tonumber(retry), 'R' .. e)
  -- On a cluster, idle workers learn of the new due time by taking once more.
  if SHARDED then publish('wk', r.wf) end
  set.m_retries = tonumber(r.m_retries or '0') + 1
else
  m.r = RID
  dead_letter(run, id, m, f[2], 'node `' .. m.n .. '` failed: ' .. text, now)
  set.left = tonumber(r.left or '1') - 1
  if new ~= r.st then
    fin = new
    set.err = 'node `' .. m.n .. '` failed: ' .. text
    finish_run(run, set, new, now)
  end
end
write_run(run, set)
if r.t1 then keep_expiry(it, r.t1) end
flush_events(now)
return { 'ok', fin }
