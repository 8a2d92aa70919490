-- stats_history: what routewatch published, per model and window, at each
-- snapshot (aggregator/history.py). Answers "what did the catalog show at
-- time T" and feeds trend charts. One row per (router, model, window) every
-- aggregator.snapshot_every (default 5 min): 1,000 models x 3 windows is
-- ~0.9M rows a day of ~150 bytes. The same plain table in both modes;
-- maintenance applies the raw-data retention to it.

CREATE TABLE stats_history (
    taken_at             timestamptz      NOT NULL,
    router               text             NOT NULL,
    model                text             NOT NULL,
    "window"             text             NOT NULL,
    attempts             integer          NOT NULL,
    ok                   integer          NOT NULL,
    rate_limited         integer          NOT NULL,
    error_rate           double precision,
    error_rate_excl_429  double precision,
    ttft_p50_ms          double precision,
    ttft_p95_ms          double precision,
    ttfat_p50_ms         double precision,
    ttfat_p95_ms         double precision,
    tps_p50              double precision,
    input_tokens         bigint           NOT NULL,
    output_tokens        bigint           NOT NULL,
    PRIMARY KEY (router, model, "window", taken_at)
);

CREATE INDEX stats_history_taken_at ON stats_history (taken_at);
