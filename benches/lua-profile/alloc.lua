-- lua5.1 alloc.lua LIBRARY CALLS: the garbage the library makes. Replays the captured calls
-- once against mock.lua (to fill the library's caches as the workload did), then again from an
-- empty keyspace with the collector stopped, and prints the kilobytes each kind of call
-- allocated on average, the stand-in's own allocations left out. With LINES=1 it charges each
-- line of the library what was allocated while it ran instead (a line hook: slow), and prints
-- the lines that allocated the most (TOP, default 30).
local mock = dofile('mock.lua')
local count = collectgarbage
-- The stand-in's allocations, counted around each command it serves.
local mock_kb = 0
local serve = redis.call
redis.call = function(...)
  local before = count('count')
  local reply = serve(...)
  mock_kb = mock_kb + (count('count') - before)
  return reply
end
local source = io.open(arg[1]):read('*a'):gsub('^#![^\n]*\n', '')
assert(loadstring(source, '=library'))()
local calls = dofile(arg[2])
for _, c in ipairs(calls) do mock.fns[c[1]](c[2], c[3]) end
for k in pairs(mock.db) do mock.db[k] = nil end

local by_line = {}
local line, at, mock_at
local getinfo = debug.getinfo
local function hook(_, current)
  local now = count('count')   -- (first: what the hook allocates is not charged)
  if line then by_line[line] = (by_line[line] or 0) + (now - at) - (mock_kb - mock_at) end
  line = getinfo(2, 'S').source == '=library' and current or nil
  at, mock_at = count('count'), mock_kb
end

local kb, n = {}, {}
count('collect')
count('stop')
for i, c in ipairs(calls) do
  local before, mock_before = count('count'), mock_kb
  if os.getenv('LINES') then debug.sethook(hook, 'l') end
  mock.fns[c[1]](c[2], c[3])
  debug.sethook()
  line = nil
  local kind = c[1]:match('_([%w]+)$') or c[1]
  kb[kind] = (kb[kind] or 0) + (count('count') - before) - (mock_kb - mock_before)
  n[kind] = (n[kind] or 0) + 1
  -- (Collected now and then, the collector still stopped between: memory stays bounded.)
  if i % 200 == 0 then count('collect'); count('stop') end
end
if not os.getenv('LINES') then
  for kind, total in pairs(kb) do
    print(string.format('%-12s %6d calls  %8.2f KB per call', kind, n[kind], total / n[kind]))
  end
else
  -- (The hook's own garbage is in the calls' totals: they are left out.)
  local lines, order, total = {}, {}, 0
  for l in (source .. '\n'):gmatch('([^\n]*)\n') do lines[#lines + 1] = l end
  for l, v in pairs(by_line) do order[#order + 1] = l; total = total + v end
  table.sort(order, function(a, b) return by_line[a] > by_line[b] end)
  for i = 1, math.min(#order, tonumber(os.getenv('TOP') or '30')) do
    local l = order[i]
    print(string.format('%5.1f%% %8.1f KB %5d  %s', 100 * by_line[l] / total, by_line[l], l,
      (lines[l] or ''):sub(1, 90)))
  end
end
