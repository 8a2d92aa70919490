-- probe_ingest_log.hist_done: whether refresh_hist has taken the batch into
-- probe_hist_hourly. It replaces the id watermark + snapshot xmin pair
-- (routewatch_meta hist_ingest_id / hist_ingest_xmin), which could only say
-- "maybe new" and so made every refresh recompute whole hours. With an exact
-- flag, a refresh adds a batch's rows of the current hour to the hour's
-- histograms (a delta) instead of re-reading the whole hour, so its cost
-- follows the rows that arrived, not the probe rate times the minutes past
-- the hour. Set in the same transaction that updates the rollup.

ALTER TABLE probe_ingest_log ADD COLUMN hist_done boolean NOT NULL DEFAULT false;

-- Batches the previous scheme had certainly processed: id at or below the
-- watermark and committed before the snapshot it last read under.
UPDATE probe_ingest_log SET hist_done = true
WHERE id <= coalesce((SELECT value::bigint FROM routewatch_meta WHERE key = 'hist_ingest_id'), 0)
  AND xid < coalesce((SELECT value::xid8 FROM routewatch_meta WHERE key = 'hist_ingest_xmin'), '0'::xid8);

DELETE FROM routewatch_meta WHERE key IN ('hist_ingest_id', 'hist_ingest_xmin');

CREATE INDEX probe_ingest_log_pending ON probe_ingest_log (id) WHERE NOT hist_done;
