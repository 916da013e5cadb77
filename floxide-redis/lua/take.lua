-- Leases the next ready item of a workflow: first hands expired leases back to the queue
-- and makes due retries ready, then pops ready entries (skipping stale ones, holding items
-- of paused or failed runs, dead-lettering poison items) until one can be leased.
-- KEYS[1]: the workflow's ready list (`<pfx>ready:<wf>`), for routing.
-- ARGV: pfx, retention, workflow, worker id, lease in ms, max deliveries
-- Returns {1, run, item id, token, item bytes, node, attempt, deliveries, deadline ms or '',
--          context bytes, context version}
--       | {0, ms until the next retry or lease expiry (-1 for none)}
return take_next(ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]))
