-- The workflows' registered graphs (AdminBackend::register_graph): one row per workflow and
-- graph hash, written when a worker or an orchestrator starts, read by tools. The 20 most
-- recently registered versions of each workflow are kept.
CREATE TABLE graphs (
    workflow   text NOT NULL,
    hash       text NOT NULL,
    graph      jsonb NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow, hash)
);
