-- Cancels, pauses or resumes a run. Resuming a failed run re-enqueues only what failed
-- (its dead-lettered items) and what was held.
-- KEYS[1]: the partition's run index (`<pfx>runs`).
-- ARGV: pfx, retention, run id, action ('cancel' | 'pause' | 'resume')
-- Returns {'ok', new status} | {'unknown'} | {'invalid', status}
local run, action = ARGV[3], ARGV[4]
local rk, it = run_key(run), items_key(run)
local st = redis.call('HGET', rk, 'st')
if not st then return { 'unknown' } end
local now = now_ms()
if action == 'cancel' then
  if is_finished(st) then return { 'invalid', st } end
  redis.call('HSET', rk, 'st', 'cancelled', 't1', now)
  local fields = redis.call('HGETALL', it)
  local dropped = 0
  for i = 1, #fields, 2 do
    local f, v = fields[i], fields[i + 1]
    if string.sub(f, -2) == ':s' and (v == 'P' or v == 'R' or v == 'H') then
      redis.call('HSET', it, f, 'X')
      redis.call('ZREM', PFX .. 'delayed', entry(string.sub(f, 1, 32), run))
      dropped = dropped + 1
    end
  end
  if dropped > 0 then redis.call('HINCRBY', rk, 'left', 0 - dropped) end
  finish_run(run, now)
  return { 'ok', 'cancelled' }
elseif action == 'pause' then
  if not is_active(st) then return { 'invalid', st } end
  redis.call('HSET', rk, 'st', 'paused')
  publish(run)
  return { 'ok', 'paused' }
elseif action == 'resume' then
  local r = redis.call('HMGET', rk, 'wf', 'left')
  local wf, left = r[1], tonumber(r[2] or '0')
  local revivable = {}
  if st == 'failed' then
    local fields = redis.call('HGETALL', it)
    for i = 1, #fields, 2 do
      local f, v = fields[i], fields[i + 1]
      if string.sub(f, -2) == ':s' and v == 'F' then revivable[#revivable + 1] = string.sub(f, 1, 32) end
    end
  end
  local new, refused = resume_status(st, left + #revivable, redis.call('HEXISTS', rk, 'out') == 1)
  if not new then return { 'invalid', st, refused } end
  for _, id in ipairs(revivable) do
    redis.call('HSET', it, id .. ':s', 'H', id .. ':d', 0)
    redis.call('HDEL', PFX .. 'dlq', entry(id, run))
  end
  if #revivable > 0 then redis.call('HINCRBY', rk, 'left', #revivable) end
  if is_finished(new) then
    redis.call('HSET', rk, 'st', new, 't1', now)
    if new == 'failed' then redis.call('HSET', rk, 'err', 'workflow `' .. wf .. '`' .. NO_OUTPUT) end
    finish_run(run, now)
    return { 'ok', new }
  end
  redis.call('HSET', rk, 'st', 'running')
  if st == 'failed' then
    redis.call('HDEL', rk, 't1', 'err')
    revive_run(run)
  end
  release_held(run, wf)
  publish(run)
  return { 'ok', 'running' }
end
return redis.error_reply('unknown action ' .. action)
