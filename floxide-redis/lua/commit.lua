-- Commits a step's effects, fenced by its lease: the context (replaced only if still at the
-- version the step's merge was based on; a held step also requires the version it read),
-- successor items (known ids are ignored), the item's completion, outputs, errors, metrics
-- and the run's completion when no item is left.
-- KEYS[1]: the partition's lease index (`<pfx>leases`).
-- ARGV: pfx, retention, run id, item id, token, required version ('' for none),
--       context base version ('' when the context is unchanged), context bytes, node,
--       duration in µs, successor count n, then n × (id, node, bytes), output count m, then
--       m outputs (JSON), error count k, then k errors (JSON), then optionally the next take:
--       workflow, worker id, lease in ms, max deliveries
-- Returns {'ok', final status or '', take reply (see take.lua) when asked}
--       | {'conflict', version} | {'lost'} | {'inactive', status}
local run, id, token = ARGV[3], ARGV[4], ARGV[5]
local required, base, ctx, node = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local dur = tonumber(ARGV[10])
local it, rk = items_key(run), run_key(run)
local e = entry(id, run)
local f = redis.call('HMGET', it, id .. ':s', id .. ':l')
if f[1] ~= 'I' or f[2] ~= token then return { 'lost' } end
local r = redis.call('HMGET', rk, 'st', 'ver', 'wf')
local st, ver, wf = r[1], tonumber(r[2] or '0'), r[3]
if not accepts_results(st) then
  redis.call('HSET', it, id .. ':s', 'X')
  redis.call('HDEL', it, id .. ':l', id .. ':w')
  redis.call('HINCRBY', rk, 'left', -1)
  redis.call('ZREM', PFX .. 'leases', e)
  return { 'inactive', st or 'cancelled' }
end
if required ~= '' and tonumber(required) ~= ver then return { 'conflict', ver } end
if base ~= '' then
  if tonumber(base) ~= ver then return { 'conflict', ver } end
  redis.call('SET', PFX .. 'ctx:' .. run, ctx)
  redis.call('HINCRBY', rk, 'ver', 1)
end

local held = not is_active(st)
local i = 11
local n = tonumber(ARGV[i]); i = i + 1
local added = 0
local fresh = {}
for _ = 1, n do
  local sid, snode, spayload = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  if redis.call('HEXISTS', it, sid) == 0 then
    local s = held and 'H' or 'P'
    redis.call('HSET', it, sid, spayload, sid .. ':n', snode, sid .. ':s', s, sid .. ':a', 1, sid .. ':d', 0)
    added = added + 1
    if not held then fresh[#fresh + 1] = entry(sid, run) end
  end
end
push_ready_many(wf, fresh)
redis.call('HSET', it, id .. ':s', 'C')
redis.call('HDEL', it, id .. ':l', id .. ':w')
redis.call('ZREM', PFX .. 'leases', e)
local left = redis.call('HINCRBY', rk, 'left', added - 1)  -- added >= 0, so never -0
if added > 0 then redis.call('HINCRBY', rk, 'm_items', added) end

local m = tonumber(ARGV[i]); i = i + 1
for _ = 1, m do
  redis.call('RPUSH', PFX .. 'outs:' .. run, ARGV[i])
  redis.call('HSETNX', rk, 'out', ARGV[i])
  i = i + 1
end
local k = tonumber(ARGV[i]); i = i + 1
for _ = 1, k do
  redis.call('RPUSH', PFX .. 'errs:' .. run, ARGV[i])
  i = i + 1
end

redis.call('HINCRBY', rk, 'm_done', 1)
-- Node timing in one field: '<count> <total µs> <max µs>'.
local timing = redis.call('HGET', rk, 'n:' .. node)
local c, t, x = 0, 0, 0
if timing then
  local a, b, m = string.match(timing, '^(%d+) (%d+) (%d+)$')
  c, t, x = tonumber(a) or 0, tonumber(b) or 0, tonumber(m) or 0
end
redis.call('HSET', rk, 'n:' .. node, (c + 1) .. ' ' .. (t + dur) .. ' ' .. math.max(x, dur))

local new = after_commit(st, left, redis.call('HEXISTS', rk, 'out') == 1)
local fin = ''
if new ~= st then
  if is_finished(new) then
    fin = new
    local now = now_ms()
    redis.call('HSET', rk, 'st', new, 't1', now)
    if new == 'failed' then redis.call('HSET', rk, 'err', 'workflow `' .. wf .. '`' .. NO_OUTPUT) end
    finish_run(run, now)
  else
    redis.call('HSET', rk, 'st', new)
  end
end
if ARGV[i] and ARGV[i] ~= '' then
  -- The worker's next item, in the same round trip.
  return { 'ok', fin, take_next(ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])) }
end
return { 'ok', fin }
