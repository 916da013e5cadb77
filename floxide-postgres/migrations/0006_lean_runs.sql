-- A run's row is written twice or more per run (its first take marks it running, each commit
-- batch updates it), and each write of a full page makes a new row version with an entry in
-- every index of the table. Leaving a third of each page free and indexing no column those
-- writes change lets PostgreSQL update the row in place (a HOT update) when its page has room:
-- measured on the 30,000-run backlog workload, 15-20% less statement time per step.
--
-- The status index goes: listing runs by status now walks the newest-first index and filters
-- (a list of every run of one status read every such row anyway; a dashboard page of a rare
-- status reads further back to fill itself).
DROP INDEX IF EXISTS runs_by_status;
ALTER TABLE runs SET (fillfactor = 70);

-- Outputs and errors no longer check their run through a foreign key (as items and step
-- history since version 4): each is written by a commit or failure that holds its run's row;
-- the retention sweep deletes them with their run.
ALTER TABLE outputs DROP CONSTRAINT IF EXISTS outputs_run_id_fkey;
ALTER TABLE errors DROP CONSTRAINT IF EXISTS errors_run_id_fkey;
