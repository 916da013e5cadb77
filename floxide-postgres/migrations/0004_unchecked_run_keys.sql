-- Items and step history rows no longer check their run through a foreign key. The checks ran
-- once per inserted row, three times per step of a linear run (its successor, its lease and
-- its commit events), about an eighth of the server's time under a large backlog. Every such
-- row is written while its run exists, by a statement that reads or locks the run; the
-- retention sweep deletes them with their run (it used to be the keys' ON DELETE CASCADE).
ALTER TABLE items DROP CONSTRAINT IF EXISTS items_run_id_fkey;
ALTER TABLE step_events DROP CONSTRAINT IF EXISTS step_events_run_id_fkey;
