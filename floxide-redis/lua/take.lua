-- Leases up to n ready items of a workflow: first hands expired leases back to the queue and
-- makes due retries ready (on about one take in four, and always before answering that
-- nothing is ready), then pops ready entries (skipping stale ones, parking items of paused or
-- failed runs, dropping those of finished runs, dead-lettering poison items).
-- KEYS[1]: the workflow's queue (`<pfx>q:<wf>`), for routing.
-- ARGV[5..]: workflow, worker id, lease in ms, max deliveries, n, whether the worker was
--            woken from a wait
-- Returns {1, count, then count × (run, item id, token, item bytes, node, attempt,
--          deliveries, deadline ms or '', 1 when the context is left out (the worker holds
--          that version) else 0, context bytes, context version)}
--       | {0, ms until the next retry or lease expiry (-1 for none)}
--       | {2}: nothing leased yet, but queued entries were left unexamined (call again)
-- A retry of the request (same request id) gets the items the first attempt leased again.
local wf, worker = ARGV[5], ARGV[6]
local lease_ms, max_del, n = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local woken = ARGV[10] == '1'
local last = PFX .. 'wt:' .. worker
local replay = replay_take(last, worker)
if replay then return replay end
local reply, count = take_next(wf, worker, lease_ms, max_del, n, {}, woken)
remember_take(last, reply, 2, count)
return reply
