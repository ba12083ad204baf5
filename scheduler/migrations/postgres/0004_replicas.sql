-- Several scheduler replicas on one database (docs/operations.md, "Replicas"):
-- the leader lease, the route tables the leader committed (followers serve
-- them), the directory subscriptions every replica's route streams receive,
-- and the replicas' heartbeats. PostgreSQL only: SQLite runs one replica.
--
-- Times written by the database itself use vantage_now_ms() (the database
-- clock), so replicas whose clocks disagree still agree on the lease.

CREATE FUNCTION vantage_now_ms() RETURNS BIGINT
    LANGUAGE sql VOLATILE
    AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT $$;

-- The one lease row. A replica leads while expires_at_ms (database clock) is
-- in the future; taking a lapsed lease increments term. term_floor is the
-- highest term an agent reported holding: after a restore from a backup the
-- next term moves past it.
CREATE TABLE scheduler_lease (
    id             SMALLINT PRIMARY KEY CHECK (id = 1),
    holder         TEXT   NOT NULL,
    replica_id     TEXT   NOT NULL,
    term           BIGINT NOT NULL,
    expires_at_ms  BIGINT NOT NULL,
    acquired_at_ms BIGINT NOT NULL,
    term_floor     BIGINT NOT NULL DEFAULT 0
);
INSERT INTO scheduler_lease (id, holder, replica_id, term, expires_at_ms, acquired_at_ms)
VALUES (1, '', '', 0, 0, 0);

-- Every node's whole route table as the leader committed it (the latest
-- version only; route_versions keeps the history). seq orders the commits
-- for followers that read what is new.
CREATE SEQUENCE route_tables_seq;
CREATE TABLE route_tables (
    node_id         TEXT   PRIMARY KEY,
    term            BIGINT NOT NULL,
    version         BIGINT NOT NULL,
    hash            TEXT   NOT NULL,
    body            BYTEA  NOT NULL,
    seq             BIGINT NOT NULL,
    committed_at_ms BIGINT NOT NULL
);
CREATE INDEX route_tables_by_seq ON route_tables (seq);

-- Directory subscriptions (RouteRequest.subscribe / unsubscribe) received by
-- whichever replica holds a node's route stream; the leader plans with them.
-- A withdrawn key stays as wanted = false until pruned, so readers of what is
-- new (seq) see the removal.
CREATE SEQUENCE route_interest_seq;
CREATE TABLE route_interest (
    node_id TEXT    NOT NULL,
    stream  TEXT    NOT NULL,
    wanted  BOOLEAN NOT NULL,
    seq     BIGINT  NOT NULL,
    -- Lease holder id of the replica that wrote the row.
    writer  TEXT    NOT NULL,
    PRIMARY KEY (node_id, stream)
);
CREATE INDEX route_interest_by_seq ON route_interest (seq);

-- One row per replica, refreshed every second: the dashboard's replica list.
CREATE TABLE scheduler_replicas (
    id               TEXT   PRIMARY KEY,
    holder           TEXT   NOT NULL,
    http_url         TEXT   NOT NULL,
    started_at_ms    BIGINT NOT NULL,
    seen_at_ms       BIGINT NOT NULL,
    role             TEXT   NOT NULL,
    term             BIGINT NOT NULL,
    nodes            BIGINT NOT NULL,
    nodes_up         BIGINT NOT NULL,
    agents_connected BIGINT NOT NULL,
    route_streams    BIGINT NOT NULL,
    agent_version    TEXT   NOT NULL
);
