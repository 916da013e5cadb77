-- Runs whose items are deleted a slice at a time, off the hot path. A run that finishes (or
-- leaves its retention) with more items than one statement deletes is listed here, and the
-- retention sweep deletes the rest in bounded slices before it deletes the run itself: no
-- statement does work proportional to the size of a run (G9).
CREATE TABLE leftovers (
    run_id text PRIMARY KEY
);
