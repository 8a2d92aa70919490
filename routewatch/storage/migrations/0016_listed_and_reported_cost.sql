-- Prices from the routers' model lists, and the routers' own reported cost
-- beside routewatch's computed one (docs/cost.md).
--
-- The cached-input price a list publishes (OpenRouter's input_cache_read), in
-- USD per 1M tokens like the other two; NULL where none was published.
ALTER TABLE model_catalog ADD COLUMN cached_input_usd_per_mtok double precision
    CHECK (cached_input_usd_per_mtok >= 0);

-- Per UTC day and series, what the router reported (reported_cost_usd) beside
-- what routewatch computed (cost_usd), added to by the writer with the rest:
--   reported_probes        probes whose router reported a cost;
--   reported_cost_usd      the sum of those reports;
--   compared_probes        probes with both a reported and a computed cost;
--   compared_reported_usd  ... the router's figure summed over them;
--   compared_computed_usd  ... routewatch's figure summed over them.
-- The compared sums are over the same probes, so their ratio says how far the
-- configured or listed price is from what the router bills. Rows from before
-- this migration have zeros: their reports were not summed then.
ALTER TABLE probe_cost_daily ADD COLUMN reported_probes bigint NOT NULL DEFAULT 0;
ALTER TABLE probe_cost_daily ADD COLUMN reported_cost_usd double precision NOT NULL DEFAULT 0;
ALTER TABLE probe_cost_daily ADD COLUMN compared_probes bigint NOT NULL DEFAULT 0;
ALTER TABLE probe_cost_daily ADD COLUMN compared_reported_usd double precision NOT NULL DEFAULT 0;
ALTER TABLE probe_cost_daily ADD COLUMN compared_computed_usd double precision NOT NULL DEFAULT 0;
