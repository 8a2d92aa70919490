-- probe_rollup_hourly on TimescaleDB: a continuous aggregate over probe_results.
--
-- Per hour and series (router, model, provider, region, prompt, methodology):
-- counts of attempts and outcomes, tokens, and overloaded probes. The
-- methodology is part of the key because numbers measured under different
-- methods must never be silently pooled (routewatch/results/probe_result.py:METHODOLOGY_VERSION).
--
-- Like the published stats (aggregator/exact_reference.py), attempts and outcome
-- counts leave out rows measured while the prober was overloaded; those are
-- counted apart in prober_overloaded. Tokens count every row: they were
-- spent either way.
--
-- The failure classes: timeouts = every timeout_* class; http_429; http_5xx;
-- other_failures = every other failure. attempts = ok + timeouts + http_429
-- + http_5xx + other_failures.
--
-- materialized_only: readers see exactly what routewatch refreshed, never a
-- real-time union that rescans raw rows. WITH NO DATA and no refresh policy:
-- routewatch refreshes it itself (maintenance.refresh_rollups), clamped to
-- the retention horizon; background jobs are not relied on (on PostgreSQL
-- 15.20 they fail with "cannot drop portal").
--
-- The plain variant of this migration defines the same columns as a table;
-- a change here needs the same change there.

CREATE MATERIALIZED VIEW probe_rollup_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = true) AS
SELECT time_bucket(INTERVAL '1 hour', started_at) AS bucket,
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
GROUP BY bucket, router, model, provider, region, prompt, methodology
WITH NO DATA;
