-- Prompt input-length tiers (config/tiers.py): the tier of the prompt each probe
-- was sent with ("100", "1k", "10k"), and the tier as a series dimension of the
-- hourly rollup, so that the published figures can be split per tier and the
-- headline computed from one tier alone (aggregator.headline_tier).
--
-- Rows from before this migration take '100': every prompt routewatch shipped
-- was short, and a hand-written prompt is stored in the standard tier nearest
-- its size. A constant default is stored once in the catalogue, not written
-- into each row: plain PostgreSQL adds the column to every partition without a
-- rewrite, and TimescaleDB adds it to a hypertable with compressed chunks the
-- same way. One file for both storage modes.
ALTER TABLE probe_results ADD COLUMN tier text NOT NULL DEFAULT '100';

-- The rollup's series key gains the tier. Hourly rows already stored are all
-- of tier '100' (the default), so the new key is unique at once.
ALTER TABLE probe_hist_hourly ADD COLUMN tier text NOT NULL DEFAULT '100';
ALTER TABLE probe_hist_hourly DROP CONSTRAINT probe_hist_hourly_pkey;
ALTER TABLE probe_hist_hourly ADD PRIMARY KEY (bucket, router, model, provider, region, prompt, methodology, tier);
