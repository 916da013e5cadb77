-- Leases the next ready item of a workflow: first hands expired leases back to the queue
-- and makes due retries ready, then pops ready entries (skipping stale ones, holding items
-- of paused or failed runs, dead-lettering poison items) until one can be leased.
-- KEYS[1]: the workflow's ready list (`<pfx>ready:<wf>`), for routing.
-- ARGV: pfx, retention, workflow, worker id, lease in ms, max deliveries
-- Returns {1, run, item id, token, item bytes, node, attempt, deliveries, deadline ms or '',
--          context bytes, context version}
--       | {0, ms until the next retry or lease expiry (-1 for none)}
local wf, worker = ARGV[3], ARGV[4]
local lease_ms, max_deliveries = tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_ms()

local expired = redis.call('ZRANGEBYSCORE', PFX .. 'leases', '-inf', now, 'LIMIT', 0, 64)
for _, e in ipairs(expired) do
  redis.call('ZREM', PFX .. 'leases', e)
  local id, run = split(e)
  local it = items_key(run)
  if redis.call('HGET', it, id .. ':s') == 'I' then
    redis.call('HSET', it, id .. ':s', 'P')
    redis.call('HDEL', it, id .. ':l', id .. ':w')
    redis.call('HINCRBY', run_key(run), 'm_reclaimed', 1)
    local owner = redis.call('HGET', run_key(run), 'wf')
    if owner then push_ready(owner, e, true) end
  end
end

local due = redis.call('ZRANGEBYSCORE', PFX .. 'delayed', '-inf', now, 'LIMIT', 0, 64)
for _, e in ipairs(due) do
  redis.call('ZREM', PFX .. 'delayed', e)
  local id, run = split(e)
  if redis.call('HGET', items_key(run), id .. ':s') == 'R' then
    redis.call('HSET', items_key(run), id .. ':s', 'P')
    local owner = redis.call('HGET', run_key(run), 'wf')
    if owner then push_ready(owner, e, false) end
  end
end

while true do
  local e = redis.call('RPOP', PFX .. 'ready:' .. wf)
  if not e then break end
  local id, run = split(e)
  local it, rk = items_key(run), run_key(run)
  if redis.call('HGET', it, id .. ':s') == 'P' then
    local st = redis.call('HGET', rk, 'st')
    if st == 'pending' or st == 'running' then
      local d = redis.call('HINCRBY', it, id .. ':d', 1)
      if d > max_deliveries then
        dead_letter(run, id, 'poison item: delivered ' .. (d - 1) ..
          ' times without a commit (limit ' .. max_deliveries .. ')', now)
      else
        local token = redis.call('INCR', PFX .. 'token')
        redis.call('HSET', it, id .. ':s', 'I', id .. ':l', token, id .. ':w', worker)
        redis.call('ZADD', PFX .. 'leases', now + lease_ms, e)
        if st == 'pending' then redis.call('HSET', rk, 'st', 'running') end
        local f = redis.call('HMGET', it, id, id .. ':n', id .. ':a')
        local r = redis.call('HMGET', rk, 'dl', 'ver')
        local ctx = redis.call('GET', PFX .. 'ctx:' .. run) or ''
        return { 1, run, id, token, f[1], f[2], f[3], d, r[1] or '', ctx, r[2] or '0' }
      end
    elseif st == 'paused' or st == 'failed' then
      redis.call('HSET', it, id .. ':s', 'H')
    else
      redis.call('HSET', it, id .. ':s', 'X')
      redis.call('HINCRBY', rk, 'left', -1)
    end
  end
end

local next_due = -1
local d = redis.call('ZRANGE', PFX .. 'delayed', 0, 0, 'WITHSCORES')
if d[2] then next_due = tonumber(d[2]) end
local l = redis.call('ZRANGE', PFX .. 'leases', 0, 0, 'WITHSCORES')
if l[2] and (next_due < 0 or tonumber(l[2]) < next_due) then next_due = tonumber(l[2]) end
if next_due >= 0 then next_due = math.max(0, next_due - now) end
return { 0, next_due }
