-- A take no longer writes a step history row for each lease. The lease's start is kept in its
-- item (`leased_at`, NULL once the event is written), and whatever ends or renews the lease
-- (its commit, failure, release, renewal, expiry, a fenced commit, a cancel) writes the lease
-- event first, with the time it started; the history reader shows the unwritten ones of the
-- steps in flight. A run that completes with a routine history drops it: its leases, committed
-- in the completing batch, are never written at all (measured on the 30,000-run backlog
-- workload: a row and an index entry fewer per run, and nothing for the completion to delete).
ALTER TABLE items ADD COLUMN leased_at timestamptz;
