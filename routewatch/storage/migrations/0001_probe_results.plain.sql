-- probe_results on plain PostgreSQL: a table partitioned by day on started_at.
-- Every column is one field of routewatch/results/probe_result.py:ProbeResult. Partitions
-- (probe_results_pYYYYMMDD, one UTC day each) are created by
-- routewatch/storage/housekeeping.py ahead of time and for the days of each batch;
-- there is deliberately no DEFAULT partition: a default partition has to be
-- scanned (and must not hold rows of the range) whenever a new day is added,
-- so a row for a missing day fails loudly instead of piling up there.
-- Retention drops whole partitions, which is cheap and leaves no bloat.

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
    -- A partitioned table's key must contain the partition column; the UUID
    -- alone already makes a replayed write a no-op.
    PRIMARY KEY (id, started_at),
    CHECK (ok = (error_class IS NULL))
) PARTITION BY RANGE (started_at);

-- Per-model history (the API's stats for one model).
CREATE INDEX probe_results_model_time ON probe_results (model, started_at DESC);

-- Time-only ranges (short windows across all models, min/max for status).
-- TimescaleDB creates the same index on every hypertable; declaring it here
-- keeps the two modes' query plans alike.
CREATE INDEX probe_results_started_at ON probe_results (started_at DESC);
