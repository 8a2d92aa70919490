-- probe_percentiles_hourly: the hourly rollup in a form SQL can read, for
-- Grafana and ad-hoc queries. probe_hist_hourly keeps its latency
-- distributions as binary histograms that only routewatch can decode; this
-- table holds, per UTC hour and (router, model), the counts and the
-- percentiles those histograms give, at four scopes:
--
--   scope      provider                 region
--   series     one provider             one region
--   provider   one provider             '*' (every region)
--   region     '*' (every provider)     one region
--   model      '*'                      '*'
--
-- Percentiles cannot be merged in SQL, so each scope a dashboard shows is
-- stored whole: the model's line is the percentile of all its probes, not an
-- average of its providers'. Prompts and methodologies are merged, as in the
-- published stats. provider is the published label: 'unknown' where the
-- router named none, 'other' past the per-model cap.
--
-- Written by the rollup refresh (aggregator/rollup.py) in the transaction
-- that writes the probe_hist_hourly rows it derives from, so the two never
-- disagree; a catch-up recomputes both. Percentiles are NULL where the hour
-- has no successful probe. ttft_counts holds how many successful probes had
-- a TTFT at or below each bound of hour_percentiles.TTFT_HEATMAP_BOUNDS_MS
-- (25 ms doubling to 51,200 ms) and, last, above the largest: a coarse
-- distribution for a heatmap. Retention deletes it with probe_hist_hourly.
-- A plain table in both storage modes, like probe_hist_hourly.

CREATE TABLE probe_percentiles_hourly (
    bucket        timestamptz      NOT NULL,
    router        text             NOT NULL,
    model         text             NOT NULL,
    scope         text             NOT NULL CHECK (scope IN ('series', 'provider', 'region', 'model')),
    provider      text             NOT NULL,
    region        text             NOT NULL,
    attempts      integer          NOT NULL,
    ok            integer          NOT NULL,
    failures      integer          NOT NULL,
    rate_limited  integer          NOT NULL,
    overloaded    integer          NOT NULL,
    errors        jsonb            NOT NULL DEFAULT '{}'::jsonb,
    input_tokens  bigint           NOT NULL,
    output_tokens bigint           NOT NULL,
    ttft_p50_ms   double precision,
    ttft_p95_ms   double precision,
    ttft_p99_ms   double precision,
    ttfat_p50_ms  double precision,
    ttfat_p95_ms  double precision,
    tps_p50       double precision,
    ttft_counts   integer[]        NOT NULL,
    PRIMARY KEY (bucket, router, model, scope, provider, region)
);

-- The dashboards ask for a scope over a time range, often of one model; a
-- range over every model (and retention) uses the primary key, bucket first.
CREATE INDEX probe_percentiles_hourly_model ON probe_percentiles_hourly (scope, model, bucket);

-- The hours the rollup held before this table existed are filled by the
-- refresh, newest first, a day per refresh: this key names the newest hour
-- still to fill, and goes once none is left.
INSERT INTO routewatch_meta (key, value)
SELECT 'percentiles_backfill', max(bucket)::text FROM probe_hist_hourly HAVING count(*) > 0;

-- probe_rollup_hourly (migration 0002, a continuous aggregate here) is
-- retired: the table above carries its counts, from the same rows and
-- provider cap as the published figures, and a second rollup read from the
-- raw rows every hour could disagree with them (docs/storage.md, "Why
-- probe_rollup_hourly went").
DROP MATERIALIZED VIEW probe_rollup_hourly;
