-- Cancels, pauses or resumes a run, in bounded work: a cancel drops the run's items (their
-- queue entries and timers are skipped when met), a pause stops its items being taken (they
-- are parked when met), a resume queues a marker that moves the parked items back, a few
-- hundred per take. Resuming a failed run also revives its dead letters (up to 1000 per
-- resume; the rest stay dead letters).
-- KEYS[1]: the partition's run index (`<pfx>runs`), for routing.
-- ARGV[5..]: run id, action ('cancel' | 'pause' | 'resume')
-- Returns {'ok', new status} | {'unknown'} | {'invalid', status, refused action}
-- A retry of the request (same request id) gets its first answer.
local run, action = ARGV[5], ARGV[6]
local r = read_run(run, { 'st', 'wf', 'left', 'out', 'pkc', 'crid', 'cst', 'idem' })
if not r.st then return { 'unknown' } end
if r.crid == RID then return { 'ok', r.cst } end
local now = now_ms()
local set = { crid = RID }
local new
if action == 'cancel' then
  if is_finished[r.st] then return { 'invalid', r.st, 'cancel' } end
  new = 'cancelled'
  finish_run(run, set, new, now)
elseif action == 'pause' then
  if not is_active[r.st] then return { 'invalid', r.st, 'pause' } end
  new = 'paused'
  set.st = new
  run_event(run)
elseif action == 'resume' then
  local letters = 0
  if r.st == 'failed' then letters = min(rcall('SCARD', letters_of_key(run)), 1000) end
  local refused
  new, refused = resume_status(r.st, tonumber(r.left or '1') + letters, r.out)
  if not new then return { 'invalid', r.st, refused } end
  local pkc = tonumber(r.pkc or '0')
  if letters > 0 then
    local it = items_key(run)
    for _, id in ipairs(rcall('SPOP', letters_of_key(run), letters)) do
      local e = entry(id, run)
      local letter = rcall('HMGET', LETTERS, e, e .. ':p')
      if letter[1] then
        local l = cjson.decode(letter[1])
        local m = parse_meta(rcall('HGET', it, id .. ':m'))
        rcall('HSET', it, id, letter[2] or '', id .. ':m',
          meta('P', l.attempt, 0, m and m.t or 0, l.node, RID))
        rcall('HDEL', LETTERS, e, e .. ':p')
        rcall('ZREM', LETTER_INDEX, e)
        rcall('LPUSH', parked_key(run), id)
        pkc = pkc + 1
        set.left = tonumber(set.left or r.left or '1') + 1
      end
    end
  end
  if r.st == 'failed' and not is_finished[new] then
    rcall('HDEL', run_key(run), 't1', 'err', 'exp', 'frid', 'fx')
    revive_run(run, r)
  end
  if is_finished[new] then
    if new == 'failed' then set.err = 'workflow `' .. r.wf .. '`' .. NO_OUTPUT end
    finish_run(run, set, new, now)
  else
    set.st = new
    set.pkc = pkc
    -- The parked items go back to the queue through a marker at its front.
    if pkc > 0 then enqueue(r.wf, { '@' .. run }, true) end
    run_event(run)
  end
else
  return redis.error_reply('unknown action ' .. action)
end
set.cst = new
write_run(run, set)
flush_events(now)
return { 'ok', new }
