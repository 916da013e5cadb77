-- A resumed run's parked items are made ready a slice at a time (G9: resuming a run with
-- 100,000 parked items is no single statement over all of them). The resume readies the first
-- slice in its own transaction and lists the run here when more are left; the resuming call
-- readies the rest, one short transaction per slice, and the retention sweep finishes the
-- work of a caller that stopped midway. The index finds a run's parked items without a scan
-- of its others.
CREATE TABLE reopening (
    run_id text PRIMARY KEY
);
CREATE INDEX items_parked ON items (run_id) WHERE state = 'K';
