-- routewatch schema. One logical layout for TimescaleDB and plain PostgreSQL;
-- schema.py turns probe_results into a hypertable where the extension exists.
-- Every column of probe_results is one field of probe/result.py:ProbeResult.

CREATE TABLE IF NOT EXISTS probe_results (
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
    -- The time column is part of the key because hypertables require it;
    -- the UUID alone already makes a replayed write a no-op.
    PRIMARY KEY (id, started_at),
    CHECK (ok = (error_class IS NULL))
);

CREATE INDEX IF NOT EXISTS probe_results_model_time
    ON probe_results (model, started_at DESC);
