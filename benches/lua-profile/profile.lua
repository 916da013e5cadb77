-- lua5.1 profile.lua LIBRARY CALLS REPS: replays the captured calls against mock.lua REPS times,
-- each time from an empty keyspace, sampling the library's executing line every 50 Lua
-- instructions and charging it the CPU time since the previous sample. Prints how the replay's
-- commits went (their rows should all be applied, as in the workload), then the lines that took
-- the most time, as shares of the library's time.
local mock = dofile('mock.lua')
local source = io.open(arg[1]):read('*a'):gsub('^#![^\n]*\n', '')
assert(loadstring(source, '=library'))()
local calls = dofile(arg[2])
local reps = tonumber(arg[3] or '5')

local rows = {}
for _, c in ipairs(calls) do
  local reply = mock.fns[c[1]](c[2], c[3])
  if c[1]:match('_commit$') then
    -- (Two values a step: its answer's kind and detail.)
    for r = 1, #reply[1], 2 do rows[reply[1][r]] = (rows[reply[1][r]] or 0) + 1 end
  end
end
local seen = {}
for kind, n in pairs(rows) do seen[#seen + 1] = kind .. ' ' .. n end
print(#calls .. ' calls replayed; commit rows: ' .. table.concat(seen, ', '))

local spent, elsewhere, last = {}, 0, os.clock()
local getinfo, clock = debug.getinfo, os.clock
local function sample()
  local info = getinfo(2, 'Sl')
  local now = clock()
  if info and info.source == '=library' then
    spent[info.currentline] = (spent[info.currentline] or 0) + (now - last)
  else
    elsewhere = elsewhere + (now - last)
  end
  last = clock()
end
for _ = 1, reps do
  for k in pairs(mock.db) do mock.db[k] = nil end
  debug.sethook(sample, '', 50)
  for _, c in ipairs(calls) do mock.fns[c[1]](c[2], c[3]) end
  debug.sethook()
end

local lines, total = {}, 0
for l in (source .. '\n'):gmatch('([^\n]*)\n') do lines[#lines + 1] = l end
local order = {}
for l, t in pairs(spent) do total = total + t; order[#order + 1] = l end
table.sort(order, function(a, b) return spent[a] > spent[b] end)
print(string.format('library %.2f s, stand-in %.2f s', total, elsewhere))
for i = 1, math.min(#order, tonumber(os.getenv('TOP') or '40')) do
  local l = order[i]
  print(string.format('%5.2f%% %5d  %s', 100 * spent[l] / total, l, (lines[l] or ''):sub(1, 100)))
end
