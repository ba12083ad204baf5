-- Cluster-wide settings shared by every scheduler replica, e.g. the probe
-- authentication key distributed to agents in route tables.
CREATE TABLE cluster_settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
