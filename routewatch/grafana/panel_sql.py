"""The SQL of the dashboards' history panels, with Grafana's macros and variables left in.

Every query reads tables a migration created: the hourly rollup as SQL sees
it (``probe_percentiles_hourly``, one row per hour, (router, model) and
scope), the published figures (``stats_history``), model status and
incidents. Raw probes (``probe_results``) are read only over the last
:data:`RAW_HOURS` hours of the range, for what no rollup keeps: the model a
router served and the detail of each failure. Variables use Grafana's
``${var:sqlstring}`` format (each value quoted, quotes doubled), so single,
multi-value and "All" selections all make valid SQL.
"""

from __future__ import annotations

from routewatch.aggregator.hour_percentiles import TTFT_HEATMAP_BOUNDS_MS
from routewatch.results.probe_result import NOT_ROUTER_FAULTS
from routewatch.storage.tables import INCIDENTS, MODEL_STATUS, PROBE_PERCENTILES_HOURLY, PROBE_RESULTS, STATS_HISTORY

P = PROBE_PERCENTILES_HOURLY
RAW_HOURS = 6

ROUTERS = "router IN (${router:sqlstring})"
MODELS = "model IN (${model:sqlstring})"
ONE_MODEL = "model = ${model:sqlstring}"
PROVIDERS = "provider IN (${provider:sqlstring})"
REGIONS = "region IN (${region:sqlstring})"
# The last N complete hours and the current one, as routewatch's published windows count them.
_HOURS_BEFORE_END = "bucket >= date_trunc('hour', $__timeTo()::timestamptz) - INTERVAL '{hours} hours'"
# Raw rows: never further back than RAW_HOURS before the range's end.
_RAW_RANGE = (
    f"started_at >= greatest($__timeFrom()::timestamptz, $__timeTo()::timestamptz - INTERVAL '{RAW_HOURS} hours')"
    " AND started_at <= $__timeTo()"
)


def hourly(value: str, scope: str, where: str, metric: str = "router || ' ' || model") -> str:
    """One value of the hourly rows of ``scope`` as a time series, a series per ``metric``."""
    return f"""
SELECT $__time(bucket), {metric} AS metric, {value} AS value
FROM {P}
WHERE scope = '{scope}' AND $__timeFilter(bucket) AND {where}
ORDER BY 1, 2
"""


def ratio(numerator: str, scope: str, where: str, metric: str = "router || ' ' || model") -> str:
    """sum(numerator) / sum(attempts) over Grafana's interval (at least an hour), a series per ``metric``."""
    return f"""
SELECT $__timeGroupAlias(bucket, $__interval), {metric} AS metric,
       sum({numerator})::float8 / nullif(sum(attempts), 0) AS value
FROM {P}
WHERE scope = '{scope}' AND $__timeFilter(bucket) AND {where}
GROUP BY 1, 2
ORDER BY 1, 2
"""


def probes_per_hour(scope: str, where: str, metric: str) -> str:
    """Probes made (overloaded ones too) per hour over Grafana's interval, a series per ``metric``."""
    return f"""
SELECT $__timeGroupAlias(bucket, $__interval), {metric} AS metric,
       sum(attempts + overloaded)::float8 * 3600 / greatest($__interval_ms / 1000.0, 3600) AS value
FROM {P}
WHERE scope = '{scope}' AND $__timeFilter(bucket) AND {where}
GROUP BY 1, 2
ORDER BY 1, 2
"""


# -- fleet --------------------------------------------------------------------------------------------------------

# The catalog as last published at or before the range's end: one snapshot holds every model.
FLEET_TABLE = f"""
WITH latest AS (
    SELECT max(taken_at) AS taken_at FROM {STATS_HISTORY}
    WHERE taken_at BETWEEN $__timeTo()::timestamptz - INTERVAL '1 day' AND $__timeTo()
)
SELECT s.router, s.model, coalesce(m.state, 'unknown') AS state, m.since AS state_since,
       s.ttft_p50_ms, s.ttft_p95_ms, s.tps_p50, s.error_rate, s.attempts, s.taken_at AS as_of
FROM {STATS_HISTORY} AS s
JOIN latest ON s.taken_at = latest.taken_at
LEFT JOIN {MODEL_STATUS} AS m ON m.model = s.model
WHERE s."window" = ${{window:sqlstring}} AND s.{ROUTERS} AND s.{MODELS}
ORDER BY s.error_rate DESC NULLS LAST, s.router, s.model
"""

OPEN_INCIDENTS = f"""
SELECT id, start, worst_state, array_to_string(models, ', ') AS models, suppressed,
       extract(epoch FROM now() - start) AS open_for
FROM {INCIDENTS}
WHERE "end" IS NULL AND models && ARRAY[${{model:sqlstring}}]::text[]
ORDER BY start
"""

STATE_COUNTS = f"""
SELECT state, count(*) AS models
FROM {MODEL_STATUS}
WHERE {MODELS}
GROUP BY state
ORDER BY state
"""

# -- drill-down ---------------------------------------------------------------------------------------------------


def _model_lines(values: str) -> str:
    """The model's hourly rows as several named lines per router: ``values`` lists ('name', column) pairs."""
    return f"""
SELECT p.bucket AS "time", p.router || ' ' || q.name AS metric, q.value
FROM {P} AS p
CROSS JOIN LATERAL (VALUES {values}) AS q(name, value)
WHERE p.scope = 'model' AND $__timeFilter(p.bucket) AND p.{ONE_MODEL} AND p.{ROUTERS}
ORDER BY 1, 2
"""


TTFT_PERCENTILES = _model_lines("('p50', p.ttft_p50_ms), ('p95', p.ttft_p95_ms), ('p99', p.ttft_p99_ms)")
# A reasoning model's first answer token comes after its reasoning: the gap between the two lines.
FIRST_TOKENS = _model_lines("('TTFT p50', p.ttft_p50_ms), ('TTFAT p50', p.ttfat_p50_ms)")

_BOUNDS = ", ".join(str(int(b)) for b in TTFT_HEATMAP_BOUNDS_MS)
TTFT_HEATMAP = f"""
SELECT $__timeGroupAlias(p.bucket, $__interval), coalesce(c.le::text, '+Inf') AS metric, sum(c.n) AS value
FROM {P} AS p
CROSS JOIN LATERAL unnest(p.ttft_counts, ARRAY[{_BOUNDS}]) AS c(n, le)
WHERE p.scope = 'model' AND $__timeFilter(p.bucket) AND p.{ONE_MODEL} AND p.{ROUTERS}
GROUP BY 1, 2
ORDER BY 1, 2
"""

# The rollup's errors also count the classes that are not attempts (an output budget spent reasoning):
# as a share of attempts they would be a share of something they are not part of.
_NOT_ATTEMPTS = ", ".join(f"'{cls}'" for cls in NOT_ROUTER_FAULTS)
ERRORS_BY_CLASS = f"""
WITH hours AS (
    SELECT bucket, attempts, errors FROM {P}
    WHERE scope = 'series' AND $__timeFilter(bucket) AND {ONE_MODEL} AND {ROUTERS} AND {PROVIDERS} AND {REGIONS}
), totals AS (
    SELECT $__timeGroup(bucket, $__interval) AS t, sum(attempts) AS attempts FROM hours GROUP BY 1
)
SELECT totals.t AS "time", e.key AS metric, sum(e.value::int)::float8 / nullif(max(totals.attempts), 0) AS value
FROM hours
CROSS JOIN LATERAL jsonb_each_text(hours.errors) AS e(key, value)
JOIN totals ON totals.t = $__timeGroup(hours.bucket, $__interval)
WHERE e.key NOT IN ({_NOT_ATTEMPTS})
GROUP BY 1, 2
ORDER BY 1, 2
"""

# Those probes, counted: a reasoning model whose output budget is too small for its reasoning.
BUDGET_EXHAUSTED = f"""
SELECT $__timeGroupAlias(bucket, $__interval), router || ' ' || region AS metric,
       sum(coalesce((errors ->> 'budget_exhausted')::int, 0)) AS value
FROM {P}
WHERE scope = 'series' AND $__timeFilter(bucket) AND {ONE_MODEL} AND {ROUTERS} AND {PROVIDERS} AND {REGIONS}
GROUP BY 1, 2
ORDER BY 1, 2
"""

SERVED_MODEL = f"""
SELECT coalesce(model_served, '(not reported)') AS served_model, coalesce(provider, 'unknown') AS provider,
       count(*) AS probes, max(started_at) AS last_seen
FROM {PROBE_RESULTS}
WHERE {ONE_MODEL} AND {ROUTERS} AND {_RAW_RANGE}
GROUP BY 1, 2
ORDER BY probes DESC, 1, 2
"""

RECENT_FAILURES = f"""
SELECT started_at, router, coalesce(provider, 'unknown') AS provider, region, error_class, http_status, error_detail
FROM {PROBE_RESULTS}
WHERE NOT ok AND {ONE_MODEL} AND {ROUTERS} AND {_RAW_RANGE}
  AND coalesce(provider, 'unknown') IN (${{provider:sqlstring}}) AND {REGIONS}
ORDER BY started_at DESC
LIMIT 100
"""

INCIDENT_ANNOTATIONS = f"""
SELECT start AS "time", coalesce("end", now()) AS timeend,
       'incident ' || id || ': ' || worst_state || CASE WHEN suppressed THEN ' (in maintenance)' ELSE '' END AS text,
       worst_state AS tags
FROM {INCIDENTS}
WHERE ${{model:sqlstring}} = ANY(models) AND start <= $__timeTo() AND coalesce("end", now()) >= $__timeFrom()
ORDER BY start
"""

# -- SLO ----------------------------------------------------------------------------------------------------------

_SLO = "${slo_error_rate:sqlstring}::float8"
_PERIOD = "bucket > $__timeTo()::timestamptz - ${slo_period:sqlstring}::interval AND bucket <= $__timeTo()"

BUDGET_REMAINING = f"""
SELECT router || ' ' || model AS model,
       1 - (sum(failures)::float8 / nullif(sum(attempts), 0)) / {_SLO} AS budget_remaining
FROM {P}
WHERE scope = 'model' AND {ROUTERS} AND {MODELS} AND {_PERIOD}
GROUP BY router, model
ORDER BY budget_remaining, model
"""


def _burn(hours: int) -> str:
    window = _HOURS_BEFORE_END.format(hours=hours)
    return (
        f"(sum(failures) FILTER (WHERE {window}))::float8"
        f" / nullif(sum(attempts) FILTER (WHERE {window}), 0) / {_SLO} AS burn_{hours}h"
    )


BURN_RATES = f"""
SELECT router, model, {_burn(1)}, {_burn(6)}, {_burn(24)}, {_burn(72)}
FROM {P}
WHERE scope = 'model' AND {ROUTERS} AND {MODELS}
  AND {_HOURS_BEFORE_END.format(hours=72)} AND bucket <= $__timeTo()
GROUP BY router, model
ORDER BY burn_1h DESC NULLS LAST, router, model
"""

# The running sums start at the period's start even when the range starts later.
BUDGET_OVER_TIME = f"""
SELECT "time", metric, value FROM (
    SELECT bucket AS "time", router || ' ' || model AS metric,
           1 - (sum(failures) OVER w)::float8 / nullif(sum(attempts) OVER w, 0) / {_SLO} AS value
    FROM {P}
    WHERE scope = 'model' AND {ROUTERS} AND {MODELS} AND {_PERIOD}
    WINDOW w AS (PARTITION BY router, model ORDER BY bucket)
) AS running
WHERE $__timeFilter("time")
ORDER BY 1, 2
"""

# -- health -------------------------------------------------------------------------------------------------------

STORED_BY_REGION = probes_per_hour("region", f"{REGIONS}", "region")
