-- Starts runs: each one's record (with its context) and first item, queued, at once. A batch
-- of starts (one partition) shares one call: one clock read, one index write, one queue push
-- per workflow.
-- KEYS[1]: the partition's run index (`<pfx>runs`), for routing.
-- ARGV[5..]: groups of runs that share their workflow, context and first item's id and node:
--            count k, workflow, context bytes, first item id, first node, extras ('', 'i',
--            'd' or 'id': each run of the group has an idempotency key, a deadline, both),
--            then k × (run id, first item bytes, [idempotency key], [deadline in ms since
--            the epoch])
-- Returns {count of runs, then for each run not started now: its place in the call (from 1),
--          'exists', '' | 'dup', the existing run's id}. Each run's start is its own request
--          (`<request id>/<place>`): a retry of the call finds the runs it started and
--          answers them as started.
-- The entries to queue for the first group's workflow (a batch's runs share one, as a rule;
-- another's go one by one).
local out, index, entries, first_wf = { 0 }, {}, {}, nil
local now
local place, a = 0, 5
while ARGV[a] do
  local k, wf, ctx, id, node, extras = num(ARGV[a]), ARGV[a + 1], ARGV[a + 2], ARGV[a + 3],
    ARGV[a + 4], ARGV[a + 5]
  local has_idem, has_deadline = find(extras, 'i', 1, true), find(extras, 'd', 1, true)
  local width = 2 + (has_idem and 1 or 0) + (has_deadline and 1 or 0)
  local state = meta('P', 1, 0, 0, node)
  local state_field = id .. ':m'
  a = a + 6
  for _ = 1, k do
    place = place + 1
    local run, payload = ARGV[a], ARGV[a + 1]
    local idem = has_idem and ARGV[a + 2] or ''
    local deadline = has_deadline and ARGV[a + width - 1] or ''
    a = a + width
    local rid = RID .. '/' .. text(place)
    local answer, existing = nil, ''
    if idem ~= '' then
      existing = rcall('GET', PFX .. 'idem:' .. idem)
      if existing then
        answer = rcall('HGET', run_key(existing), 'rid') == rid and 'ok' or 'dup'
      else
        existing = ''
      end
    end
    if not answer then
      local started_by = rcall('HGET', run_key(run), 'rid')
      if started_by then answer = started_by == rid and 'ok' or 'exists' end
    end
    if not answer then
      answer = 'ok'
      now = now or now_ms()
      -- The record keeps the run's input (`inp`: its first item's bytes) for tools to show and
      -- search. Its counters at their starting values are left out (see the key layout: every
      -- reader takes an absent `left` as 1, `ver` as 0 and `m_items` as 1): each field of a
      -- new hash costs the write a scan and two appends. (A run without extras passes its
      -- fields to the command directly: a table of them per run cost more. With extras they
      -- go as a table, still one write: the same fields, in the same order.)
      if idem == '' and deadline == '' then
        rcall('HSET', run_key(run), 'wf', wf, 'st', 'pending', 't0', text(now), 'rid', rid,
          'ctx', ctx, 'inp', payload)
      else
        local fields = { 'wf', wf, 'st', 'pending', 't0', text(now), 'rid', rid, 'ctx', ctx,
                         'inp', payload }
        if idem ~= '' then
          fields[#fields + 1] = 'idem'
          fields[#fields + 1] = idem
          rcall('SET', PFX .. 'idem:' .. idem, run)
        end
        if deadline ~= '' then
          fields[#fields + 1] = 'dl'
          fields[#fields + 1] = deadline
        end
        rcall('HSET', run_key(run), unpack(fields))
      end
      rcall('HSET', items_key(run), id, payload, state_field, state)
      index[#index + 1] = text(now)
      index[#index + 1] = run
      first_wf = first_wf or wf
      if wf == first_wf then entries[#entries + 1] = entry(id, run) else enqueue_one(wf, entry(id, run)) end
    end
    if answer ~= 'ok' then
      out[#out + 1] = place
      out[#out + 1] = answer
      out[#out + 1] = existing
    end
  end
end
out[1] = place
if #index > 0 then call_chunked('ZADD', RUNS, index) end
if first_wf then enqueue(first_wf, entries, false) end
return out
