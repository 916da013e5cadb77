-- Floxide on PostgreSQL, schema version 1. Applied by `floxide_postgres::migrate` inside the
-- deployment's schema (search_path), in one transaction, under an advisory lock.

-- A run: its record, context and counters. Finished runs stay for the retention period.
CREATE TABLE runs (
    run_id          text PRIMARY KEY,
    seq             bigserial,
    workflow        text NOT NULL,
    status          text NOT NULL,
    context         bytea NOT NULL,
    version         bigint NOT NULL DEFAULT 0,
    -- Items not yet committed, dead-lettered or dropped.
    outstanding     integer NOT NULL,
    output          jsonb,
    error           text,
    idempotency_key text UNIQUE,
    -- The requests that started the run and that finished it (retried writes).
    start_request   text NOT NULL,
    finish_request  text,
    deadline        timestamptz,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    -- Counters (RunMetrics) and per-node timings: {"node": {"count", "total_us", "max_us"}}.
    items_created   bigint NOT NULL DEFAULT 1,
    steps_done      bigint NOT NULL DEFAULT 0,
    failures        bigint NOT NULL DEFAULT 0,
    retries         bigint NOT NULL DEFAULT 0,
    node_timings    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX runs_newest ON runs (seq DESC);
CREATE INDEX runs_by_status ON runs (status, seq DESC);
CREATE INDEX runs_finished ON runs (finished_at) WHERE finished_at IS NOT NULL;

-- A run's items. The takes only look at the ones whose time can come (ready, leased,
-- waiting for a retry: the partial index); committed ones keep a line without payload until
-- their run ends (a completed or cancelled run's items go at once).
CREATE TABLE items (
    run_id      text NOT NULL REFERENCES runs ON DELETE CASCADE,
    item_id     uuid NOT NULL,
    workflow    text NOT NULL,
    node        text NOT NULL,
    payload     bytea NOT NULL,
    -- 'P' ready, 'I' leased, 'R' waiting for its retry, 'K' parked (run paused or failed),
    -- 'C' committed, 'F' dead-lettered, 'X' dropped.
    state       "char" NOT NULL,
    -- Grows with each lease (the fencing token).
    token       bigint NOT NULL DEFAULT 0,
    attempt     integer NOT NULL DEFAULT 1,
    deliveries  integer NOT NULL DEFAULT 0,
    -- Ready since, lease expiry or retry due, by state.
    due_at      timestamptz NOT NULL DEFAULT now(),
    -- The length of its current lease (renewed by that much while its commit waits).
    lease_ms    double precision NOT NULL DEFAULT 0,
    worker      text,
    -- The request that committed it (a retried commit answers as the first).
    request     text,
    seq         bigserial,
    PRIMARY KEY (run_id, item_id)
);
CREATE INDEX items_due ON items (workflow, due_at, seq) WHERE state IN ('P', 'I', 'R');

-- Leases that expired and were taken again, one line each (appended by takes, which never
-- wait for a run's row).
CREATE TABLE reclaims (
    run_id text NOT NULL REFERENCES runs ON DELETE CASCADE,
    at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reclaims_by_run ON reclaims (run_id);

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

-- Dead letters keep their own retention: they outlive their run's record if need be.
CREATE TABLE dead_letters (
    run_id     text NOT NULL,
    item_id    uuid NOT NULL,
    workflow   text NOT NULL,
    node       text NOT NULL,
    payload    bytea NOT NULL,
    error      text NOT NULL,
    attempt    integer NOT NULL,
    deliveries integer NOT NULL,
    failed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, item_id)
);
CREATE INDEX dead_letters_oldest ON dead_letters (failed_at);

CREATE TABLE workers (
    worker_id text PRIMARY KEY,
    health    jsonb NOT NULL,
    seen_at   timestamptz NOT NULL DEFAULT now()
);
