-- probe_hist_hourly and probe_ingest_log, the same in both storage modes.
--
-- probe_hist_hourly: per UTC hour and series (router, model, provider,
-- region, prompt, methodology) the counts and the mergeable log-bucket
-- histograms (aggregator/sketch.py Histogram.to_bytes) of TTFT, TTFAT and
-- output tokens/s, filled by aggregator/rollup.py:refresh_hist. Like the
-- published stats, attempts, ok, rate_limited, errors and the histograms
-- leave out prober_overloaded rows (counted apart in `overloaded`); the
-- histograms hold ok rows only; tokens count every row (they were spent).
-- errors is {error_class: count} over the failed, not overloaded rows.
--
-- A plain table in timescaledb mode too, on purpose: it holds one small row
-- per series-hour (1,000 series = 24k rows a day, a few hundred bytes each),
-- refresh_hist rewrites whole hours with DELETE + INSERT, which a hypertable
-- would only make slower once its chunks are compressed, and a continuous
-- aggregate cannot build these histograms (they are built in numpy). One
-- definition for both modes keeps their query plans and behaviour alike.
--
-- provider is '' where the router does not say (a key column cannot be NULL).

CREATE TABLE probe_hist_hourly (
    bucket        timestamptz NOT NULL,
    router        text        NOT NULL,
    model         text        NOT NULL,
    provider      text        NOT NULL,
    region        text        NOT NULL,
    prompt        text        NOT NULL,
    methodology   text        NOT NULL,
    attempts      integer     NOT NULL,
    ok            integer     NOT NULL,
    rate_limited  integer     NOT NULL,
    overloaded    integer     NOT NULL,
    errors        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    input_tokens  bigint      NOT NULL,
    output_tokens bigint      NOT NULL,
    -- min/max started_at over every row of the series-hour (overloaded too),
    -- for the published first_probe/last_probe.
    first_started timestamptz,
    last_started  timestamptz,
    ttft          bytea       NOT NULL,
    ttfat         bytea       NOT NULL,
    tps           bytea       NOT NULL,
    PRIMARY KEY (bucket, router, model, provider, region, prompt, methodology)
);

-- probe_ingest_log: one row per write_batch transaction that stored rows,
-- with the started_at range of the batch, so that a refresh finds the hours
-- new (or late) data landed in without scanning probe_results. `xid` is the
-- writing transaction's id: refresh_hist uses it to catch a batch that
-- committed after a later-numbered one (bigserial ids are handed out at
-- insert time, not at commit).
CREATE TABLE probe_ingest_log (
    id            bigserial   PRIMARY KEY,
    stored_at     timestamptz NOT NULL DEFAULT now(),
    first_started timestamptz NOT NULL,
    last_started  timestamptz NOT NULL,
    rows          integer     NOT NULL,
    xid           xid8        NOT NULL DEFAULT pg_current_xact_id()
);
