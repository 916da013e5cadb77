-- Each run's step history (AdminBackend::step_history): one row per transition of a step's
-- lease, appended in the transaction of the transition (takes, commits, failures, heartbeats,
-- releases), never updated, removed with its run. kind: L leased, H renewed, E expired,
-- C committed, Z fenced out, F failed (`until`: the retry's due time), R released.
CREATE TABLE step_events (
    run_id   text NOT NULL REFERENCES runs ON DELETE CASCADE,
    seq      bigserial,
    at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    item_id  uuid NOT NULL,
    node     text NOT NULL,
    kind     "char" NOT NULL,
    worker   text,
    token    bigint NOT NULL,
    attempt  integer NOT NULL,
    delivery integer,
    until    timestamptz,
    PRIMARY KEY (run_id, seq)
);

-- A run's input (its first item's payload), kept with its record for tools to show and search
-- (the item's own payload goes when its step commits).
ALTER TABLE runs ADD COLUMN input bytea;
