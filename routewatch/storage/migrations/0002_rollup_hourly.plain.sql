-- probe_rollup_hourly on plain PostgreSQL: a table that
-- maintenance.refresh_rollups fills from probe_rollup_hourly_compute().
--
-- Same columns and meaning as the TimescaleDB continuous aggregate (see
-- 0002_rollup_hourly.timescaledb.sql): per hour and series (router, model,
-- provider, region, prompt, methodology), attempts and outcomes leaving out
-- prober_overloaded rows, which are counted apart; tokens count every row.
-- A change here needs the same change there.

CREATE TABLE probe_rollup_hourly (
    bucket            timestamptz NOT NULL,
    router            text        NOT NULL,
    model             text        NOT NULL,
    provider          text,
    region            text        NOT NULL,
    prompt            text        NOT NULL,
    methodology       text        NOT NULL,
    attempts          bigint      NOT NULL,
    ok                bigint      NOT NULL,
    timeouts          bigint      NOT NULL,
    http_429          bigint      NOT NULL,
    http_5xx          bigint      NOT NULL,
    other_failures    bigint      NOT NULL,
    input_tokens      bigint      NOT NULL,
    output_tokens     bigint      NOT NULL,
    prober_overloaded bigint      NOT NULL
);

-- The key. provider is NULL where the router does not say, and a primary key
-- cannot hold NULLs; coalescing it in a unique index works on every server
-- version (NULLS NOT DISTINCT needs PostgreSQL 15).
CREATE UNIQUE INDEX probe_rollup_hourly_key ON probe_rollup_hourly
    (bucket, router, model, (coalesce(provider, '')), region, prompt, methodology);

-- Per-model history, like the raw table's index.
CREATE INDEX probe_rollup_hourly_model_bucket ON probe_rollup_hourly (model, bucket DESC);

-- The hourly rows of [from_ts, to_ts), computed from probe_results. Buckets
-- are whole UTC hours from a fixed origin, as TimescaleDB's time_bucket
-- makes them, whatever the session's TimeZone.
CREATE FUNCTION probe_rollup_hourly_compute(from_ts timestamptz, to_ts timestamptz)
RETURNS SETOF probe_rollup_hourly
LANGUAGE sql STABLE
AS $$
SELECT date_bin(INTERVAL '1 hour', started_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
       router,
       model,
       provider,
       region,
       prompt,
       methodology,
       count(*) FILTER (WHERE NOT prober_overloaded)                                   AS attempts,
       count(*) FILTER (WHERE ok AND NOT prober_overloaded)                            AS ok,
       count(*) FILTER (WHERE error_class LIKE 'timeout%' AND NOT prober_overloaded)   AS timeouts,
       count(*) FILTER (WHERE error_class = 'http_429' AND NOT prober_overloaded)      AS http_429,
       count(*) FILTER (WHERE error_class = 'http_5xx' AND NOT prober_overloaded)      AS http_5xx,
       count(*) FILTER (WHERE NOT ok AND error_class NOT LIKE 'timeout%'
                          AND error_class NOT IN ('http_429', 'http_5xx')
                          AND NOT prober_overloaded)                                   AS other_failures,
       coalesce(sum(input_tokens), 0)                                                  AS input_tokens,
       coalesce(sum(output_tokens), 0)                                                 AS output_tokens,
       count(*) FILTER (WHERE prober_overloaded)                                       AS prober_overloaded
FROM probe_results
WHERE started_at >= from_ts AND started_at < to_ts
GROUP BY 1, router, model, provider, region, prompt, methodology
$$;
