-- What the router said about serving each probe, read by its dialect
-- (probe/dialects/): which dialect read it, how many upstream calls the router
-- made (the answering one included) and how many of those were fallbacks, the
-- router's own request id where it differs from request_id, and the cost it
-- reported. NULL wherever the router said nothing (most routers say nothing of
-- attempts), never 0 or 1 by default: "not said" and "one attempt" differ.
--
-- Nullable columns without a default: on plain PostgreSQL the partitions take
-- them at once without a rewrite; TimescaleDB adds them to a hypertable with
-- compressed chunks the same way (one column per statement, which is what
-- it accepts there). No CHECK constraints: TimescaleDB refuses to add one to a
-- hypertable with compression enabled, and router_values bounds every value
-- before it is written. One file for both storage modes.
ALTER TABLE probe_results ADD COLUMN dialect text;
ALTER TABLE probe_results ADD COLUMN attempts integer;
ALTER TABLE probe_results ADD COLUMN fallbacks integer;
ALTER TABLE probe_results ADD COLUMN router_request_id text;
ALTER TABLE probe_results ADD COLUMN reported_cost_usd double precision;
