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

-- The same facts in the hourly rollup (aggregator/rollup.py), per series-hour,
-- over the rows the other counts cover (prober_overloaded left out):
--   reported_ok   successful probes whose router reported its attempts;
--   retried       ... of them, those that took more than one upstream call;
--   calls         upstream calls reported, over every probe that reported them;
--   calls_failed  ... of them, those that failed (all but the answering one of a
--                 success; all of a failure);
--   ttft_first    TTFT histogram of the successes answered at the first call;
--   ttft_retried  TTFT histogram of the successes answered after a retry.
-- Two histograms rather than a series dimension (which would double the rows
-- of every router that retries) or one histogram to subtract (which the
-- window arrays cannot lay out); see docs/router-dialects.md. Rows from before
-- this migration have zeros and NULL histograms (read as empty): their
-- routers' attempts were not read then.
ALTER TABLE probe_hist_hourly ADD COLUMN reported_ok integer NOT NULL DEFAULT 0;
ALTER TABLE probe_hist_hourly ADD COLUMN retried integer NOT NULL DEFAULT 0;
ALTER TABLE probe_hist_hourly ADD COLUMN calls bigint NOT NULL DEFAULT 0;
ALTER TABLE probe_hist_hourly ADD COLUMN calls_failed bigint NOT NULL DEFAULT 0;
ALTER TABLE probe_hist_hourly ADD COLUMN ttft_first bytea;
ALTER TABLE probe_hist_hourly ADD COLUMN ttft_retried bytea;
