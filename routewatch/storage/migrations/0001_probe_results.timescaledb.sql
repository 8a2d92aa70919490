-- probe_results on TimescaleDB: a hypertable with one chunk per day.
-- Every column is one field of routewatch/results/probe_result.py:ProbeResult.
--
-- Why 1-day chunks: a 7-day stats window touches 7-8 chunks; retention
-- drops whole days; and a day of 1,000 series probed once a minute is about
-- 1.4M rows (~0.5 GB raw with indexes), well under TimescaleDB's guidance
-- that the active chunk and its indexes fit in about a quarter of memory.
-- routewatch/storage/housekeeping.py:CHUNK_INTERVAL states the same interval.

CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE probe_results (
    id                uuid             NOT NULL,
    started_at        timestamptz      NOT NULL,
    region            text             NOT NULL,
    router            text             NOT NULL,
    model             text             NOT NULL,
    prompt            text             NOT NULL,
    methodology       text             NOT NULL,
    ok                boolean          NOT NULL,
    error_class       text,
    error_detail      text,
    http_status       integer,
    model_served      text,
    provider          text,
    request_id        text,
    connect_ms        double precision,
    ttfb_ms           double precision,
    ttft_ms           double precision,
    ttfat_ms          double precision,
    e2e_ms            double precision,
    output_tps        double precision,
    input_tokens      integer,
    output_tokens     integer,
    tokens_estimated  boolean          NOT NULL DEFAULT false,
    chunks            integer          NOT NULL DEFAULT 0,
    chunk_gap_max_ms  double precision,
    chunk_gap_p95_ms  double precision,
    retry_after_s     double precision,
    loop_lag_ms       double precision,
    prober_overloaded boolean          NOT NULL DEFAULT false,
    -- A hypertable's unique keys must contain the time column; the UUID
    -- alone already makes a replayed write a no-op.
    PRIMARY KEY (id, started_at),
    CHECK (ok = (error_class IS NULL))
);

-- Also creates the default (started_at DESC) index, which the plain variant
-- declares by hand.
SELECT create_hypertable('probe_results', by_range('started_at', INTERVAL '1 day'));

-- Per-model history (the API's stats for one model).
CREATE INDEX probe_results_model_time ON probe_results (model, started_at DESC);

-- Compression settings only: no compression (or any other) policy, because
-- routewatch runs compression itself (maintenance.compress_old) and its
-- correctness must not depend on TimescaleDB background jobs.
-- Segment by model: queries select one model, and each model's rows then
-- compress together. `id` follows started_at in the order so that the
-- primary key is covered by segmenting/ordering columns: TimescaleDB warns
-- otherwise, and the ON CONFLICT check of a late (replayed) write into a
-- compressed chunk can use the batches' min/max metadata. Ties on
-- started_at are rare, so the extra ordering costs no compression.
ALTER TABLE probe_results SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'model',
    timescaledb.compress_orderby = 'started_at DESC, id'
);
