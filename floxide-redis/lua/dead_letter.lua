-- Re-enqueues or drops a dead letter. Re-enqueueing revives its run if it had failed.
-- KEYS[1]: the partition's dead-letter hash (`<pfx>dlq`).
-- ARGV: pfx, retention, run id, item id, action ('requeue' | 'drop')
-- Returns {'ok'} | {'unknown'}
local run, id, action = ARGV[3], ARGV[4], ARGV[5]
local e = entry(id, run)
if redis.call('HDEL', PFX .. 'dlq', e) == 0 then return { 'unknown' } end
if action == 'drop' then return { 'ok' } end
local it, rk = items_key(run), run_key(run)
local wf = redis.call('HGET', rk, 'wf')
if not wf then return { 'ok' } end
if redis.call('HGET', it, id .. ':s') == 'F' then
  redis.call('HSET', it, id .. ':s', 'P', id .. ':d', 0)
  redis.call('HINCRBY', rk, 'left', 1)
  push_ready(wf, e, false)
end
if redis.call('HGET', rk, 'st') == 'failed' then
  redis.call('HSET', rk, 'st', 'running')
  redis.call('HDEL', rk, 't1', 'err')
  revive_run(run)
  release_held(run, wf)
  publish(run)
end
return { 'ok' }
