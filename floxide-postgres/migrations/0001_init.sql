-- Floxide on PostgreSQL, schema version 1. Applied by `floxide_postgres::migrate` inside the
-- deployment's schema (search_path), in one transaction, under an advisory lock.

-- A run: its record, context and counters. Finished runs stay for the retention period.
CREATE TABLE runs (
    run_id          text PRIMARY KEY,
    workflow        text NOT NULL,
    status          text NOT NULL,
    context         bytea NOT NULL,
    version         bigint NOT NULL DEFAULT 0,
    -- Items not yet committed, and those parked while the run is paused or failed.
    outstanding     integer NOT NULL,
    parked          integer NOT NULL DEFAULT 0,
    output          jsonb,
    error           text,
    idempotency_key text UNIQUE,
    -- The request that started, controlled or finished the run (retried writes).
    start_request   text NOT NULL,
    deadline        timestamptz,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    steps_done      bigint NOT NULL DEFAULT 0,
    items_created   bigint NOT NULL DEFAULT 1,
    node_timings    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX runs_newest ON runs (started_at DESC);
CREATE INDEX runs_by_status ON runs (status, started_at DESC);
CREATE INDEX runs_finished ON runs (finished_at) WHERE finished_at IS NOT NULL;

-- The hot table: items that are ready, leased, waiting for a retry or parked. A committed
-- item leaves it in its commit's transaction, so it stays small.
CREATE TABLE items (
    run_id      text NOT NULL REFERENCES runs ON DELETE CASCADE,
    item_id     uuid NOT NULL,
    workflow    text NOT NULL,
    node        text NOT NULL,
    payload     bytea NOT NULL,
    -- 'P' ready, 'K' parked, 'I' leased, 'R' waiting for its retry.
    state       "char" NOT NULL,
    -- Grows with each lease (the fencing token).
    token       bigint NOT NULL DEFAULT 0,
    attempt     integer NOT NULL DEFAULT 1,
    deliveries  integer NOT NULL DEFAULT 0,
    -- Ready since, lease expiry or retry due, by state.
    due_at      timestamptz NOT NULL DEFAULT now(),
    worker      text,
    seq         bigserial,
    PRIMARY KEY (run_id, item_id)
);
CREATE INDEX items_due ON items (workflow, due_at, seq) WHERE state IN ('P', 'I', 'R');

-- Ids of committed items of running runs (a successor already created is not created twice).
CREATE TABLE done_items (
    run_id  text NOT NULL REFERENCES runs ON DELETE CASCADE,
    item_id uuid NOT NULL,
    request text NOT NULL,
    PRIMARY KEY (run_id, item_id)
);

CREATE TABLE outputs (
    run_id text NOT NULL REFERENCES runs ON DELETE CASCADE,
    seq    bigserial,
    value  jsonb NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE errors (
    run_id text NOT NULL REFERENCES runs ON DELETE CASCADE,
    seq    bigserial,
    error  jsonb NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE dead_letters (
    run_id     text NOT NULL REFERENCES runs ON DELETE CASCADE,
    item_id    uuid NOT NULL,
    node       text NOT NULL,
    payload    bytea NOT NULL,
    error      text NOT NULL,
    attempt    integer NOT NULL,
    failed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, item_id)
);
CREATE INDEX dead_letters_newest ON dead_letters (failed_at DESC);

CREATE TABLE workers (
    worker_id text PRIMARY KEY,
    health    jsonb NOT NULL,
    seen_at   timestamptz NOT NULL DEFAULT now()
);
