-- Shared helpers: replays of retried requests.
-- A part of every script's prelude, after the parts `scripts.rs` lists before it (the key
-- layout and the call set-up are in `base.lua`).

-- Replays ---------------------------------------------------------------------------------

-- A take reply for the `<entry> <token>` lines whose item is still leased to `worker` under
-- that token (a retried request gets the items its first attempt leased, never an item
-- leased again since).
local function leased_rows(lines, worker)
  local reply = { 1, 0 }
  for _, line in ipairs(lines) do
    local e, token = match(line, '^(%S+) (%d+)$')
    if e then
      local id, run = split(e)
      local f = rcall('HMGET', items_key(run), id .. ':m', id, id .. ':w')
      local m = parse_meta(f[1])
      if m and m.s == 'I' and m.t == tonumber(token) and f[3] == worker then
        local r = read_run(run, { 'dl', 'ver', 'ctx' })
        for _, v in ipairs({ run, id, m.t, f[2] or '', m.n, m.a, m.d, r.dl or '', 0, r.ctx or '', r.ver or '0' }) do
          reply[#reply + 1] = v
        end
        reply[2] = reply[2] + 1
      end
    end
  end
  if reply[2] == 0 then return { 0, 0 } end
  return reply
end

local function lines_of(text)
  local out = {}
  for l in gmatch(text or '', '[^\n]+') do out[#out + 1] = l end
  return out
end

-- What a request leased, kept for two minutes under `key` with the request id. A worker has
-- at most one take and one commit in flight: they use different keys (`wt:` and `wc:`).
-- The record: the request id, then a line `<entry> <token>` per item the reply (`count` items
-- from index `base` + 1) leased, joined in one piece (no string per line).
local function remember_take(key, reply, base, count)
  if count > 0 then
    local parts, n = { RID }, 1
    for k = 0, count - 1 do
      local b = base + k * 11
      parts[n + 1], parts[n + 2], parts[n + 3] = '\n', reply[b + 2], ':'
      parts[n + 4], parts[n + 5], parts[n + 6] = reply[b + 1], ' ', text(reply[b + 3])
      n = n + 6
    end
    rcall('SET', key, concat(parts), 'PX', '120000')
  end
end

-- The reply a retried request (same request id) gets, or nil for a new request.
local function replay_take(key, worker)
  if not RETRY then return nil end
  local prev = rcall('GET', key)
  if not prev or sub(prev, 1, #RID + 1) ~= RID .. '\n' then return nil end
  return leased_rows(lines_of(sub(prev, #RID + 2)), worker)
end
