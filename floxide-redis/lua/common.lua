-- Shared helpers, prepended to every script.
--
-- Key layout: every key of a partition starts with the same prefix, `<prefix>{p<N>}:`, whose
-- hash tag `{p<N>}` puts them all in one Redis Cluster slot. Scripts receive one key of the
-- partition in KEYS[1] (for routing) and the partition prefix in ARGV[1]; the keys of a run
-- they derive from it all carry the same tag. ARGV[2] is the retention of finished runs in
-- seconds.
--
-- Work item entries are `<item id: 32 hex digits>:<run id>`.

local PFX = ARGV[1]
local RETENTION = tonumber(ARGV[2])

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function entry(id, run) return id .. ':' .. run end
local function split(e) return string.sub(e, 1, 32), string.sub(e, 34) end
local function run_key(run) return PFX .. 'run:' .. run end
local function items_key(run) return PFX .. 'it:' .. run end

-- Makes an item ready for its workflow's workers and wakes one blocked worker.
local function push_ready(wf, e, front)
  if front then
    redis.call('RPUSH', PFX .. 'ready:' .. wf, e)
  else
    redis.call('LPUSH', PFX .. 'ready:' .. wf, e)
  end
  if redis.call('LPUSH', PFX .. 'wake:' .. wf, '1') > 64 then
    redis.call('LTRIM', PFX .. 'wake:' .. wf, 0, 63)
  end
end

-- Makes several items ready at once (in order) and wakes as many blocked workers: two calls
-- per chunk instead of two per item.
local function push_ready_many(wf, entries)
  local i = 1
  while i <= #entries do
    local chunk = {}
    for j = i, math.min(i + 999, #entries) do chunk[#chunk + 1] = entries[j] end
    redis.call('LPUSH', PFX .. 'ready:' .. wf, unpack(chunk))
    local tokens = {}
    for _ = 1, math.min(#chunk, 64) do tokens[#tokens + 1] = '1' end
    if redis.call('LPUSH', PFX .. 'wake:' .. wf, unpack(tokens)) > 64 then
      redis.call('LTRIM', PFX .. 'wake:' .. wf, 0, 63)
    end
    i = i + 1000
  end
end

local function is_finished(st) return st == 'completed' or st == 'failed' or st == 'cancelled' end
local function is_active(st) return st == 'pending' or st == 'running' end

-- The run state machine, mirroring floxide-core's `distributed::machine` (same names).
local function finished_status(has_output) if has_output then return 'completed' end return 'failed' end
-- A leased item's commit or failure report is refused once the run is cancelled or completed.
local function accepts_results(st) return st ~= 'cancelled' and st ~= 'completed' and st ~= nil end
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
-- Resuming: the run's new status, or nil when refused (with the action's name).
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

local function publish(run) redis.call('PUBLISH', PFX .. 'events', run) end

local RUN_KEYS = { 'run:', 'ctx:', 'it:', 'outs:', 'errs:' }

-- A run reached a final state: index it for retention, let its keys expire, drop the
-- index entries of runs whose retention is over, and tell waiters.
local function finish_run(run, now)
  redis.call('ZADD', PFX .. 'done', now, run)
  for _, k in ipairs(RUN_KEYS) do redis.call('EXPIRE', PFX .. k .. run, RETENTION) end
  local idem = redis.call('HGET', run_key(run), 'idem')
  if idem then redis.call('EXPIRE', PFX .. 'idem:' .. idem, RETENTION) end
  local old = redis.call('ZRANGEBYSCORE', PFX .. 'done', '-inf', now - RETENTION * 1000, 'LIMIT', 0, 32)
  for _, r in ipairs(old) do
    redis.call('ZREM', PFX .. 'done', r)
    redis.call('ZREM', PFX .. 'runs', r)
  end
  publish(run)
end

-- A finished run comes back to life (resume): its keys no longer expire.
local function revive_run(run)
  redis.call('ZREM', PFX .. 'done', run)
  for _, k in ipairs(RUN_KEYS) do redis.call('PERSIST', PFX .. k .. run) end
  local idem = redis.call('HGET', run_key(run), 'idem')
  if idem then redis.call('PERSIST', PFX .. 'idem:' .. idem) end
end

local function fail_run(run, err, now)
  local rk = run_key(run)
  local st = redis.call('HGET', rk, 'st')
  if st and not is_finished(st) then
    redis.call('HSET', rk, 'st', 'failed', 'err', err, 't1', now)
    finish_run(run, now)
    return true
  end
  return false
end

-- Moves an item to the dead letters and fails its run. Returns whether the run failed now.
local function dead_letter(run, id, err, now)
  local it = items_key(run)
  local rk = run_key(run)
  redis.call('HSET', it, id .. ':s', 'F')
  redis.call('HDEL', it, id .. ':l', id .. ':w')
  redis.call('HINCRBY', rk, 'left', -1)
  local e = entry(id, run)
  redis.call('ZREM', PFX .. 'leases', e)
  local letter = cjson.encode({
    run_id = run,
    item_id = id,
    node = redis.call('HGET', it, id .. ':n') or '',
    error = err,
    deliveries = tonumber(redis.call('HGET', it, id .. ':d') or '0'),
    attempt = tonumber(redis.call('HGET', it, id .. ':a') or '1'),
    at = now,
  })
  redis.call('HSET', PFX .. 'dlq', e, letter)
  return fail_run(run, err, now)
end

-- Puts every held item of a run back in the queue. Returns how many.
local function release_held(run, wf)
  local it = items_key(run)
  local fields = redis.call('HGETALL', it)
  local n = 0
  for i = 1, #fields, 2 do
    local f = fields[i]
    if string.sub(f, -2) == ':s' and fields[i + 1] == 'H' then
      local id = string.sub(f, 1, 32)
      redis.call('HSET', it, f, 'P')
      push_ready(wf, entry(id, run), false)
      n = n + 1
    end
  end
  return n
end

-- Hands expired leases back to the queue and makes due retries ready.
local function due_work(now)
  local expired = redis.call('ZRANGEBYSCORE', PFX .. 'leases', '-inf', now, 'LIMIT', 0, 64)
  for _, e in ipairs(expired) do
    redis.call('ZREM', PFX .. 'leases', e)
    local id, run = split(e)
    local it = items_key(run)
    if redis.call('HGET', it, id .. ':s') == 'I' then
      redis.call('HSET', it, id .. ':s', 'P')
      redis.call('HDEL', it, id .. ':l', id .. ':w')
      redis.call('HINCRBY', run_key(run), 'm_reclaimed', 1)
      redis.call('INCR', PFX .. 'reclaimed')
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
end

-- Pops ready entries of `wf` (skipping stale ones, holding items of paused or failed runs,
-- dead-lettering poison items) until one is leased; returns the take reply, or nil.
local function pop_ready(wf, worker, lease_ms, max_deliveries, now)
  while true do
    local e = redis.call('RPOP', PFX .. 'ready:' .. wf)
    if not e then return nil end
    local id, run = split(e)
    local it, rk = items_key(run), run_key(run)
    local f = redis.call('HMGET', it, id .. ':s', id, id .. ':n', id .. ':a')
    if f[1] == 'P' then
      local r = redis.call('HMGET', rk, 'st', 'dl', 'ver')
      local st = r[1]
      if takes_items(st) then
        local d = redis.call('HINCRBY', it, id .. ':d', 1)
        if d > max_deliveries then
          dead_letter(run, id, 'poison item: delivered ' .. (d - 1) ..
            ' times without a commit (limit ' .. max_deliveries .. ')', now)
        else
          local token = redis.call('INCR', PFX .. 'token')
          redis.call('HSET', it, id .. ':s', 'I', id .. ':l', token, id .. ':w', worker)
          redis.call('ZADD', PFX .. 'leases', now + lease_ms, e)
          if st == 'pending' then redis.call('HSET', rk, 'st', 'running') end
          local ctx = redis.call('GET', PFX .. 'ctx:' .. run) or ''
          return { 1, run, id, token, f[2], f[3], f[4], d, r[2] or '', ctx, r[3] or '0' }
        end
      elseif accepts_results(st) then
        redis.call('HSET', it, id .. ':s', 'H')
      else
        redis.call('HSET', it, id .. ':s', 'X')
        redis.call('HINCRBY', rk, 'left', -1)
      end
    end
  end
end

-- Leases the next ready item of `wf` for `worker` (see take.lua for the reply). Expired
-- leases and due retries are rare, so under load they are looked for on about one take in
-- four (by the server's clock), and always before answering that nothing is ready.
local function take_next(wf, worker, lease_ms, max_deliveries)
  local now = now_ms()
  local scanned = now % 4 == 0
  if scanned then due_work(now) end
  local got = pop_ready(wf, worker, lease_ms, max_deliveries, now)
  if got then return got end
  if not scanned then
    due_work(now)
    got = pop_ready(wf, worker, lease_ms, max_deliveries, now)
    if got then return got end
  end

  local next_due = -1
  local d = redis.call('ZRANGE', PFX .. 'delayed', 0, 0, 'WITHSCORES')
  if d[2] then next_due = tonumber(d[2]) end
  local l = redis.call('ZRANGE', PFX .. 'leases', 0, 0, 'WITHSCORES')
  if l[2] and (next_due < 0 or tonumber(l[2]) < next_due) then next_due = tonumber(l[2]) end
  if next_due >= 0 then next_due = math.max(0, next_due - now) end
  return { 0, next_due }
end
