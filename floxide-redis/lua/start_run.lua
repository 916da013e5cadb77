-- Starts runs: each one's record (with its context) and first item, queued, at once. A batch
-- of starts (one partition) shares one call: one clock read, one index write, one queue push
-- per workflow.
-- KEYS[1]: the partition's run index (`<pfx>runs`), for routing.
-- ARGV[5..]: per run: run id, workflow, context bytes, first item id, first node, first item
--            bytes, idempotency key ('' for none), deadline in ms since the epoch ('' for none)
-- Returns, per run, two values: 'ok', '' | 'exists', '' | 'dup', the existing run's id. Each
-- run's start is its own request (`<request id>/<n>`): a retry of the call gets 'ok' for the
-- runs it started.
-- The entries to queue for the first run's workflow (a batch's runs share one, as a rule;
-- another's go one by one).
local out, index, entries, first_wf = {}, {}, {}, nil
local now
for n = 1, (#ARGV - 4) / 8 do
  local a = 5 + (n - 1) * 8
  local run, wf, ctx = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local id, node, payload = ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
  local idem, deadline = ARGV[a + 6], ARGV[a + 7]
  local rid = RID .. '/' .. text(n)
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
    -- reader takes an absent `left` as 1, `ver` as 0 and `m_items` as 1): each field of a new
    -- hash costs the write a scan and two appends. (Its fields go as one list: a table of
    -- fields walked with `pairs` cost a fifth of the script.)
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
    rcall('HSET', items_key(run), id, payload, id .. ':m', meta('P', 1, 0, 0, node))
    index[#index + 1] = text(now)
    index[#index + 1] = run
    first_wf = first_wf or wf
    if wf == first_wf then entries[#entries + 1] = entry(id, run) else enqueue_one(wf, entry(id, run)) end
  end
  out[#out + 1] = answer
  out[#out + 1] = existing
end
if #index > 0 then call_chunked('ZADD', RUNS, index) end
if first_wf then enqueue(first_wf, entries, false) end
return out
