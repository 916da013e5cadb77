-- A run's first output is kept in its record (`runs.output`) only: `outputs` holds the others.
-- Every run that produced an output wrote it twice, a row and an index entry more per run.
-- The rows that repeat their run's record go.
DELETE FROM outputs o
USING (SELECT run_id, min(seq) AS seq FROM outputs GROUP BY run_id) f
WHERE o.run_id = f.run_id AND o.seq = f.seq;
