-- Shared helpers: node timings.
-- A part of every script's prelude, after the parts `scripts.rs` lists before it (the key
-- layout and the call set-up are in `base.lua`).

-- Node timings: one field of the run's record, `<node> <count> <total µs> <max µs>;...`.
-- Adds `c` steps of `node` taking `t` µs in all and `x` µs at most to `nt`: the node's segment
-- is rewritten in place (the others are kept as they are); a segment that does not read as
-- numbers starts again from these steps.
local function add_timing(nt, node, c, t, x)
  local head = node .. ' '
  local at
  if sub(nt, 1, #head) == head then
    at = 1
  else
    at = find(nt, ';' .. head, 1, true)
    if at then at = at + 1 end
  end
  if not at then
    local seg = head .. text(c) .. ' ' .. text(t) .. ' ' .. text(x)
    return nt == '' and seg or nt .. ';' .. seg
  end
  -- (The numbers are read where they stand, and the segment's end found from their lengths.)
  local from = at + #head
  local c0, t0, x0 = match(nt, '^(%d+) (%d+) (%d+)', from)
  local stop = c0 and from + #c0 + #t0 + #x0 + 2
  if c0 and (stop > #nt or byte(nt, stop) == 59) then
    c, t = num(c0) + c, tonumber(t0) + t
    x = max(tonumber(x0), x)
  else
    stop = find(nt, ';', at, true) or #nt + 1
  end
  return sub(nt, 1, at - 1) .. head .. text(c) .. ' ' .. text(t) .. ' ' .. text(x) ..
    sub(nt, stop)
end

-- `durs` holds a script's steps of the run, `node, µs, node, µs, ...` (the µs as texts): each
-- node's segment is rewritten once for all its steps.
local function add_timings(nt, durs)
  nt = nt or ''
  if nt == '' then
    -- A run's first timings, each node once (a chain's, as a rule): the segments are made
    -- from the texts as sent, with no number read or written.
    local segs, seen, distinct = {}, {}, true
    for i = 1, #durs, 2 do
      local node, dur = durs[i], durs[i + 1]
      if seen[node] then
        distinct = false
        break
      end
      seen[node] = true
      segs[#segs + 1] = node .. ' 1 ' .. dur .. ' ' .. dur
    end
    if distinct then return concat(segs, ';') end
  end
  if #durs == 2 then
    local dur = tonumber(durs[2]) or 0
    return add_timing(nt, durs[1], 1, dur, dur)
  end
  local agg, order = {}, {}
  for i = 1, #durs, 2 do
    local node, dur = durs[i], tonumber(durs[i + 1]) or 0
    local a = agg[node]
    if a then
      a[1], a[2] = a[1] + 1, a[2] + dur
      if dur > a[3] then a[3] = dur end
    else
      agg[node] = { 1, dur, dur }
      order[#order + 1] = node
    end
  end
  for _, node in ipairs(order) do
    local a = agg[node]
    nt = add_timing(nt, node, a[1], a[2], a[3])
  end
  return nt
end
