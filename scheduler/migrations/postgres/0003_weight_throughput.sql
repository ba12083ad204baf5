-- The QoE formula's deliverable-throughput term (issue 16). Weight sets
-- stored before it existed get the default weight.
ALTER TABLE weight_sets ADD COLUMN w_throughput DOUBLE PRECISION NOT NULL DEFAULT 0.25;
