-- Re-enqueues or drops a dead letter. Re-enqueueing revives its run if it had failed; a
-- letter whose run has passed its retention, or is cancelled or completed, is kept.
-- KEYS[1]: the partition's dead-letter index (`<pfx>dlq`).
-- ARGV[5..]: run id, item id, action ('requeue' | 'drop')
-- Returns {'ok'} | {'unknown'} | {'expired'} | {'invalid', run status}
-- A retry of the request that requeued the letter (same request id) gets {'ok'}.
local run, id, action = ARGV[5], ARGV[6], ARGV[7]
local e = entry(id, run)
local it = items_key(run)
local stored = rcall('HMGET', LETTERS, e, e .. ':p')
local letter = stored[1]
if not letter then
  local m = parse_meta(rcall('HGET', it, id .. ':m'))
  if m and m.r == RID then return { 'ok' } end
  return { 'unknown' }
end
if action == 'drop' then
  rcall('HDEL', LETTERS, e, e .. ':p')
  rcall('ZREM', LETTER_INDEX, e)
  rcall('SREM', letters_of_key(run), id)
  return { 'ok' }
end
local r = read_run(run, { 'st', 'wf', 'left', 'pkc', 'idem' })
if not r.st then return { 'expired' } end
if not accepts_results[r.st] then return { 'invalid', r.st } end
local l = cjson.decode(letter)
local m = parse_meta(rcall('HGET', it, id .. ':m'))
rcall('HSET', it, id, stored[2] or '', id .. ':m', meta('P', l.attempt, 0, m and m.t or 0, l.node, RID))
rcall('HDEL', LETTERS, e, e .. ':p')
rcall('ZREM', LETTER_INDEX, e)
rcall('SREM', letters_of_key(run), id)
local set = { left = tonumber(r.left or '1') + 1 }
if r.st == 'failed' then
  rcall('HDEL', run_key(run), 't1', 'err', 'exp', 'frid', 'fx')
  revive_run(run, r)
  r.st = 'running'
  set.st = 'running'
  -- Items parked while the run had failed go back to the queue too.
  if tonumber(r.pkc or '0') > 0 then enqueue(r.wf, { '@' .. run }, true) end
  publish('ev', run)
end
if make_ready(run, id, r, false) and r.pkc then set.pkc = r.pkc end
write_run(run, set)
return { 'ok' }
