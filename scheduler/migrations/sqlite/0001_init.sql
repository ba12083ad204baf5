-- Vantage scheduler schema (SQLite). Timestamps are unix ms, booleans 0/1 integers.
-- Keep in step with ../postgres/0001_init.sql: one query code path serves both.

CREATE TABLE nodes (
    id              TEXT    PRIMARY KEY NOT NULL,
    region          TEXT    NOT NULL,
    lat             REAL    NOT NULL,
    lon             REAL    NOT NULL,
    capacity_mbps   REAL    NOT NULL,
    public_url      TEXT    NOT NULL,
    probe_addr      TEXT    NOT NULL,
    credential_hash TEXT,
    enrolled_at_ms  INTEGER NOT NULL,
    last_seen_ms    INTEGER NOT NULL,
    drained         INTEGER NOT NULL DEFAULT 0
);

-- Versioned scoring weights; every row is an audit entry (who, when, why).
CREATE TABLE weight_sets (
    version       INTEGER PRIMARY KEY NOT NULL,
    w_latency     REAL    NOT NULL,
    w_loss        REAL    NOT NULL,
    w_buffer      REAL    NOT NULL,
    w_load        REAL    NOT NULL,
    w_distance    REAL    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    actor         TEXT    NOT NULL,
    comment       TEXT    NOT NULL
);

-- One row per route table version pushed to a node.
CREATE TABLE route_versions (
    node_id       TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    hash          TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    acked_at_ms   INTEGER,
    nacked_at_ms  INTEGER,
    nack_detail   TEXT,
    PRIMARY KEY (node_id, version)
);

-- Append-only log: up/down/drain/failover/nack...
CREATE TABLE events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms   INTEGER NOT NULL,
    node_id TEXT    NOT NULL,
    kind    TEXT    NOT NULL,
    detail  TEXT    NOT NULL
);
CREATE INDEX events_node_at ON events (node_id, at_ms);
CREATE INDEX events_at ON events (at_ms);

-- Per-node, per-minute telemetry summaries.
CREATE TABLE telemetry_rollups (
    node_id         TEXT    NOT NULL,
    minute_ms       INTEGER NOT NULL,
    reports         INTEGER NOT NULL,
    cpu_avg         REAL    NOT NULL,
    utilisation_avg REAL    NOT NULL,
    egress_mbps_avg REAL    NOT NULL,
    viewers_max     INTEGER NOT NULL,
    PRIMARY KEY (node_id, minute_ms)
);
CREATE INDEX telemetry_rollups_minute ON telemetry_rollups (minute_ms);
