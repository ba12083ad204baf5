-- Vantage scheduler schema (PostgreSQL). Timestamps are unix ms, booleans 0/1 integers
-- (BIGINT everywhere so that sqlx's Any driver decodes every integer as i64).
-- Keep in step with ../sqlite/0001_init.sql: one query code path serves both.

CREATE TABLE nodes (
    id              TEXT             PRIMARY KEY,
    region          TEXT             NOT NULL,
    lat             DOUBLE PRECISION NOT NULL,
    lon             DOUBLE PRECISION NOT NULL,
    capacity_mbps   DOUBLE PRECISION NOT NULL,
    public_url      TEXT             NOT NULL,
    probe_addr      TEXT             NOT NULL,
    credential_hash TEXT,
    enrolled_at_ms  BIGINT           NOT NULL,
    last_seen_ms    BIGINT           NOT NULL,
    drained         BIGINT           NOT NULL DEFAULT 0
);

-- Versioned scoring weights; every row is an audit entry (who, when, why).
CREATE TABLE weight_sets (
    version       BIGINT           PRIMARY KEY,
    w_latency     DOUBLE PRECISION NOT NULL,
    w_loss        DOUBLE PRECISION NOT NULL,
    w_buffer      DOUBLE PRECISION NOT NULL,
    w_load        DOUBLE PRECISION NOT NULL,
    w_distance    DOUBLE PRECISION NOT NULL,
    created_at_ms BIGINT           NOT NULL,
    actor         TEXT             NOT NULL,
    comment       TEXT             NOT NULL
);

-- One row per route table version pushed to a node.
CREATE TABLE route_versions (
    node_id       TEXT   NOT NULL,
    version       BIGINT NOT NULL,
    hash          TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL,
    acked_at_ms   BIGINT,
    nacked_at_ms  BIGINT,
    nack_detail   TEXT,
    PRIMARY KEY (node_id, version)
);

-- Append-only log: up/down/drain/failover/nack...
CREATE TABLE events (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ms   BIGINT NOT NULL,
    node_id TEXT   NOT NULL,
    kind    TEXT   NOT NULL,
    detail  TEXT   NOT NULL
);
CREATE INDEX events_node_at ON events (node_id, at_ms);
CREATE INDEX events_at ON events (at_ms);

-- Per-node, per-minute telemetry summaries.
CREATE TABLE telemetry_rollups (
    node_id         TEXT             NOT NULL,
    minute_ms       BIGINT           NOT NULL,
    reports         BIGINT           NOT NULL,
    cpu_avg         DOUBLE PRECISION NOT NULL,
    utilisation_avg DOUBLE PRECISION NOT NULL,
    egress_mbps_avg DOUBLE PRECISION NOT NULL,
    viewers_max     BIGINT           NOT NULL,
    PRIMARY KEY (node_id, minute_ms)
);
CREATE INDEX telemetry_rollups_minute ON telemetry_rollups (minute_ms);
