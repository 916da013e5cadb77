-- An in-memory stand-in for the Redis commands our scripts use, enough to replay a captured
-- workload: `redis.call`, `redis.register_function` and `redis.error_reply`, with Redis's reply
-- conventions (a missing value is false, counts are numbers). Expiries are ignored; the clock
-- (TIME) advances 37 µs per read. Returns the registered functions and the keyspace.
local db, fns = {}, {}
local clock_us = 1796401886627000
local C = {}

local function get(key, kind)
  local v = db[key]
  if v and v.kind ~= kind then error('WRONGTYPE ' .. key) end
  return v
end
local function make(key, kind)
  local v = db[key]
  if not v then v = { kind = kind, d = {} }; db[key] = v end
  return v
end
local function text(x) if type(x) == 'number' then return tostring(x) end return x end

function C.TIME()
  clock_us = clock_us + 37
  return { tostring(math.floor(clock_us / 1e6)), tostring(clock_us % 1e6) }
end
function C.PEXPIREAT() return 1 end
function C.PERSIST() return 1 end
function C.PUBLISH() return 0 end
C.SPUBLISH = C.PUBLISH
function C.EXISTS(...)
  local n = 0
  for _, k in ipairs({ ... }) do if db[k] then n = n + 1 end end
  return n
end
function C.DEL(...)
  local n = 0
  for _, k in ipairs({ ... }) do if db[k] then n = n + 1; db[k] = nil end end
  return n
end
C.UNLINK = C.DEL

-- Strings.
function C.GET(k) local s = get(k, 's'); return s and s.d or false end
function C.SET(k, v) db[k] = { kind = 's', d = text(v) }; return { ok = 'OK' } end
function C.INCR(k)
  local s = get(k, 's')
  local v = (s and tonumber(s.d) or 0) + 1
  db[k] = { kind = 's', d = tostring(v) }
  return v
end

-- Hashes.
function C.HGET(k, f) local h = get(k, 'h'); return h and h.d[f] or false end
function C.HMGET(k, ...)
  local h, r = get(k, 'h'), {}
  for i, f in ipairs({ ... }) do r[i] = h and h.d[f] or false end
  return r
end
function C.HSET(k, ...)
  local a, h, new = { ... }, make(k, 'h'), 0
  for i = 1, #a, 2 do
    if h.d[a[i]] == nil then new = new + 1 end
    h.d[a[i]] = text(a[i + 1])
  end
  return new
end
function C.HSETNX(k, f, v)
  local h = make(k, 'h')
  if h.d[f] then return 0 end
  h.d[f] = text(v)
  return 1
end
function C.HDEL(k, ...)
  local h, n = get(k, 'h'), 0
  if h then for _, f in ipairs({ ... }) do if h.d[f] then n = n + 1; h.d[f] = nil end end end
  return n
end
function C.HINCRBY(k, f, by)
  local h = make(k, 'h')
  local v = tonumber(h.d[f] or '0') + tonumber(by)
  h.d[f] = tostring(v)
  return v
end
function C.HGETALL(k)
  local h, r = get(k, 'h'), {}
  if h then for f, v in pairs(h.d) do r[#r + 1] = f; r[#r + 1] = v end end
  return r
end

-- Lists (index 1 is the head, the left end).
function C.LPUSH(k, ...)
  local l = make(k, 'l')
  for _, v in ipairs({ ... }) do table.insert(l.d, 1, text(v)) end
  return #l.d
end
function C.RPUSH(k, ...)
  local l = make(k, 'l')
  for _, v in ipairs({ ... }) do l.d[#l.d + 1] = text(v) end
  return #l.d
end
local function pop(k, count, right)
  local l = get(k, 'l')
  if not l or #l.d == 0 then return false end
  local out = {}
  for _ = 1, count and tonumber(count) or 1 do
    if #l.d == 0 then break end
    out[#out + 1] = right and table.remove(l.d) or table.remove(l.d, 1)
  end
  if #l.d == 0 then db[k] = nil end
  if count then return out end
  return out[1]
end
function C.RPOP(k, count) return pop(k, count, true) end
function C.LPOP(k, count) return pop(k, count, false) end
function C.LLEN(k) local l = get(k, 'l'); return l and #l.d or 0 end
local function at(l, i)
  i = tonumber(i)
  if i < 0 then return #l.d + i + 1 end
  return i + 1
end
function C.LINDEX(k, i) local l = get(k, 'l'); return l and l.d[at(l, i)] or false end
function C.LRANGE(k, a, b)
  local l, r = get(k, 'l'), {}
  if l then for i = math.max(1, at(l, a)), math.min(#l.d, at(l, b)) do r[#r + 1] = l.d[i] end end
  return r
end
function C.LTRIM(k, a, b)
  local l = get(k, 'l')
  if l then l.d = C.LRANGE(k, a, b) end
  return { ok = 'OK' }
end

-- Sorted sets (member -> score; sorted when read).
function C.ZADD(k, ...)
  local a, z, new = { ... }, make(k, 'z'), 0
  for i = 1, #a, 2 do
    if not z.d[a[i + 1]] then new = new + 1 end
    z.d[a[i + 1]] = tonumber(a[i])
  end
  return new
end
-- Removes members from a sorted set or a set (both map member -> something); returns how many.
local function remove(kind, k, ...)
  local v, n = get(k, kind), 0
  if v then for _, m in ipairs({ ... }) do if v.d[m] then n = n + 1; v.d[m] = nil end end end
  return n
end
function C.ZREM(k, ...) return remove('z', k, ...) end
local function sorted(z)
  local r = {}
  for m, s in pairs(z.d) do r[#r + 1] = { m, s } end
  table.sort(r, function(x, y) if x[2] ~= y[2] then return x[2] < y[2] end return x[1] < y[1] end)
  return r
end
function C.ZRANGEBYSCORE(k, _, hi, _, _, count)
  local z, r, limit = get(k, 'z'), {}, tonumber(count or '-1')
  if z then
    for _, e in ipairs(sorted(z)) do
      if e[2] > tonumber(hi) or (limit >= 0 and #r >= limit) then break end
      r[#r + 1] = e[1]
    end
  end
  return r
end
function C.ZRANGE(k, first, _, withscores)
  local z, r = get(k, 'z'), {}
  local e = z and sorted(z)[tonumber(first) + 1]
  if e then r[1] = e[1]; if withscores then r[2] = tostring(e[2]) end end
  return r
end

-- Sets.
function C.SADD(k, ...)
  local s, n = make(k, 'S'), 0
  for _, m in ipairs({ ... }) do if not s.d[m] then n = n + 1; s.d[m] = true end end
  return n
end
function C.SREM(k, ...) return remove('S', k, ...) end
function C.SCARD(k)
  local s, n = get(k, 'S'), 0
  if s then for _ in pairs(s.d) do n = n + 1 end end
  return n
end
function C.SPOP(k)
  local s = get(k, 'S')
  if s then for m in pairs(s.d) do s.d[m] = nil; return m end end
  return false
end

redis = {
  call = function(cmd, ...)
    local f = C[string.upper(cmd)]
    if not f then error('mock.lua has no ' .. cmd) end
    return f(...)
  end,
  register_function = function(name, fn) fns[name] = fn end,
  error_reply = function(e) return { err = e } end,
}
cjson = { encode = function() return '{}' end, decode = function() return {} end }
return { fns = fns, db = db }
