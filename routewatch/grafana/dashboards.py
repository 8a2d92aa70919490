"""routewatch's four Grafana dashboards, as code.

* Fleet overview (``routewatch-fleet``): every model at a glance.
* Model drill-down (``routewatch-model``): one model over time; alerts and
  incident annotations link here with ``?var-model=<id>``.
* SLO (``routewatch-slo``): error budget and burn rates per model.
* Prober and aggregator health (``routewatch-health``): routewatch itself.

History panels are SQL over the hourly rollups (``panel_sql``); live panels
are PromQL over the families ``GET /metrics`` exposes. Every panel says in its
description what question it answers. ``python -m routewatch.grafana``
writes them to ``dashboards/*.json``.
"""

from __future__ import annotations

from routewatch.grafana import panel_sql as q
from routewatch.grafana.model import Annotation, Dashboard, Link, Panel, PromQL, Sql, Variable, datasource_variables

FLEET_UID = "routewatch-fleet"
MODEL_UID = "routewatch-model"
SLO_UID = "routewatch-slo"
HEALTH_UID = "routewatch-health"

# Where the fleet table and the SLO table send a click on a model.
MODEL_LINK = (
    f"/d/{MODEL_UID}?var-model=${{__data.fields.model}}&var-router=${{__data.fields.router}}&${{__url_time_range}}"
)

# PromQL label matchers of the variables (Prometheus formats multi-value selections as a regex).
ROUTER_MODEL = 'router=~"$router", model=~"$model"'


def _scope_var(name: str, label: str, scope: str, description: str, where: str = "", multi: bool = True) -> Variable:
    """A variable whose options are the values of column ``name`` in the hourly rows of ``scope`` over the range."""
    query = (
        f"SELECT DISTINCT {name} FROM probe_percentiles_hourly WHERE scope = '{scope}' AND $__timeFilter(bucket)"
        f"{where} ORDER BY 1"
    )
    return Variable(name, label, "query", query, description, multi=multi, include_all=multi)


def _router_var() -> Variable:
    return _scope_var("router", "Router", "model", "Routers probed in the time range")


def _model_var(multi: bool = True) -> Variable:
    return _scope_var(
        "model",
        "Model",
        "model",
        "Models of the chosen routers probed in the time range",
        " AND router IN (${router:sqlstring})",
        multi,
    )


def _provider_var() -> Variable:
    return _scope_var(
        "provider",
        "Provider",
        "provider",
        "Upstream providers the routers reported for the chosen models ('unknown': none named)",
        " AND router IN (${router:sqlstring}) AND model IN (${model:sqlstring})",
    )


def _region_var() -> Variable:
    return _scope_var("region", "Region", "region", "Regions of the probers that measured")


def fleet() -> Dashboard:
    """Fleet overview: every model with its state and figures, their trends, states and open incidents."""
    window = Variable(
        "window",
        "Catalog window",
        "query",
        'SELECT DISTINCT "window" FROM stats_history WHERE $__timeFilter(taken_at) ORDER BY 1',
        "Which published window the table shows (aggregator.windows)",
    )
    ps = "router || ' ' || model || ' via ' || provider"
    return Dashboard(
        FLEET_UID,
        "routewatch: fleet overview",
        "Every monitored model: its state, latency, throughput, errors and traffic, and what is wrong now.",
        (*datasource_variables(), _router_var(), _model_var(), _provider_var(), _region_var(), window),
        (
            Panel(
                "Models",
                "Which models are healthy right now? State and the catalog's published figures over the chosen "
                "window, worst error rate first; click a model for its drill-down.",
                "table",
                "none",
                (Sql(q.FLEET_TABLE, "table"),),
                width=24,
                height=10,
                links=(Link("model", "Model drill-down", MODEL_LINK),),
                column_units=(
                    ("ttft_p50_ms", "ms"),
                    ("ttft_p95_ms", "ms"),
                    ("tps_p50", "suffix: tok/s"),
                    ("error_rate", "percentunit"),
                    ("attempts", "short"),
                ),
            ),
            Panel(
                "Models by state",
                "How many models are operational, degraded, down or unknown, as the status engine last decided.",
                "stat",
                "short",
                (Sql(q.STATE_COUNTS, "table"),),
                width=8,
                height=6,
            ),
            Panel(
                "Models by state (live)",
                "The same counts from Prometheus: what /metrics reports at each scrape.",
                "stat",
                "short",
                (PromQL('sum by (state) (routewatch_model_state{model=~"$model"})', "{{state}}", instant=True),),
                width=8,
                height=6,
            ),
            Panel(
                "Open incidents",
                "What is broken now, since when, and which models it covers (suppressed: inside planned maintenance).",
                "table",
                "none",
                (Sql(q.OPEN_INCIDENTS, "table"),),
                width=8,
                height=6,
                column_units=(("open_for", "s"),),
            ),
            Panel(
                "TTFT p95 per model",
                "Is any model getting slower? Hourly p95 time to first token, from the hourly percentile table.",
                "timeseries",
                "ms",
                (Sql(q.hourly("ttft_p95_ms", "model", f"{q.ROUTERS} AND {q.MODELS}")),),
            ),
            Panel(
                "TTFT p50 per model",
                "The typical wait for the first token: hourly median TTFT per model.",
                "timeseries",
                "ms",
                (Sql(q.hourly("ttft_p50_ms", "model", f"{q.ROUTERS} AND {q.MODELS}")),),
            ),
            Panel(
                "Output tokens/s p50 per model",
                "Is generation speed holding up? Hourly median output tokens per second.",
                "timeseries",
                "suffix: tok/s",
                (Sql(q.hourly("tps_p50", "model", f"{q.ROUTERS} AND {q.MODELS}")),),
            ),
            Panel(
                "Error rate per model",
                "Which models fail, and since when? Failed / attempted probes (prober-overloaded ones left out).",
                "timeseries",
                "percentunit",
                (Sql(q.ratio("failures", "model", f"{q.ROUTERS} AND {q.MODELS}")),),
            ),
            Panel(
                "Probes per hour per model",
                "Is every model being measured? Probes made per hour; a drop means the prober or its schedule broke.",
                "timeseries",
                "short",
                (Sql(q.probes_per_hour("model", f"{q.ROUTERS} AND {q.MODELS}", "router || ' ' || model")),),
            ),
            Panel(
                "Error rate per provider",
                "Is one upstream provider behind the failures? Failed / attempted probes per model and provider.",
                "timeseries",
                "percentunit",
                (Sql(q.ratio("failures", "provider", f"{q.ROUTERS} AND {q.MODELS} AND {q.PROVIDERS}", ps)),),
            ),
            Panel(
                "Probes per hour per region",
                "Is every prober region measuring? Probes per hour of the chosen models by prober region.",
                "timeseries",
                "short",
                (
                    Sql(
                        q.probes_per_hour(
                            "region", f"{q.ROUTERS} AND {q.MODELS} AND {q.REGIONS}", "region || ' ' || model"
                        )
                    ),
                ),
                width=24,
            ),
            Panel(
                "TTFT p95 (live)",
                "The latest p95 TTFT of each model over the shortest published window, as Prometheus scrapes it.",
                "timeseries",
                "s",
                (PromQL(f"routewatch_ttft_p95_seconds{{{ROUTER_MODEL}}}", "{{router}} {{model}} ({{window}})"),),
            ),
            Panel(
                "Error ratio (live)",
                "The latest error ratio of each model over the shortest published window, as Prometheus scrapes it.",
                "timeseries",
                "percentunit",
                (PromQL(f"routewatch_error_ratio{{{ROUTER_MODEL}}}", "{{router}} {{model}} ({{window}})"),),
            ),
        ),
        links=(("Model drill-down", f"/d/{MODEL_UID}"), ("SLO", f"/d/{SLO_UID}"), ("Health", f"/d/{HEALTH_UID}")),
    )


def model_drilldown() -> Dashboard:
    """Model drill-down: one model's latency, distribution, throughput and errors, by provider and region."""
    where = f"{q.ONE_MODEL} AND {q.ROUTERS}"
    return Dashboard(
        MODEL_UID,
        "routewatch: model drill-down",
        "One model over time: TTFT percentiles and distribution, throughput, errors by class, by provider and "
        "region; what was served, recent failures, and its incidents as annotations.",
        (*datasource_variables(), _router_var(), _model_var(multi=False), _provider_var(), _region_var()),
        (
            Panel(
                "TTFT p50 / p95 / p99",
                "How long does this model make callers wait for the first token, typically and in the tail? "
                "Hourly percentiles over every provider and region.",
                "timeseries",
                "ms",
                (Sql(q.TTFT_PERCENTILES),),
                width=24,
            ),
            Panel(
                "TTFT and TTFAT p50",
                "How long until the answer itself starts? TTFT counts the first token of any kind, reasoning "
                "included; TTFAT the first answer token. For a reasoning model the gap is its reasoning time.",
                "timeseries",
                "ms",
                (Sql(q.FIRST_TOKENS),),
                width=24,
            ),
            Panel(
                "TTFT distribution",
                "Is the tail one slow mode or a spread? Successful probes per hour by TTFT cell (upper bound, ms).",
                "heatmap",
                "short",
                (Sql(q.TTFT_HEATMAP),),
                width=24,
            ),
            Panel(
                "TTFT p95 by provider",
                "Is one upstream provider slower than the others? Hourly p95 TTFT per provider (all regions).",
                "timeseries",
                "ms",
                (Sql(q.hourly("ttft_p95_ms", "provider", f"{where} AND {q.PROVIDERS}", "router || ' ' || provider")),),
            ),
            Panel(
                "TTFT p95 by region",
                "Is latency a matter of where the prober sits? Hourly p95 TTFT per prober region (all providers).",
                "timeseries",
                "ms",
                (Sql(q.hourly("ttft_p95_ms", "region", f"{where} AND {q.REGIONS}", "router || ' ' || region")),),
            ),
            Panel(
                "Output tokens/s p50 by provider and region",
                "Does generation speed depend on the provider or the region? Hourly median output tokens/s.",
                "timeseries",
                "suffix: tok/s",
                (
                    Sql(
                        q.hourly(
                            "tps_p50",
                            "series",
                            f"{where} AND {q.PROVIDERS} AND {q.REGIONS}",
                            "provider || ' / ' || region",
                        )
                    ),
                ),
            ),
            Panel(
                "Error rate by class",
                "What kind of failure is it: timeouts, 429s, 5xx, broken streams? Failed probes of each class / "
                "attempted, stacked, for the chosen providers and regions. A reasoning model's spent output budget "
                'is not an attempt and has no line here (see "Out of output budget").',
                "timeseries",
                "percentunit",
                (Sql(q.ERRORS_BY_CLASS),),
                stacked=True,
            ),
            Panel(
                "Out of output budget",
                "Is the reasoning budget too small? Probes that spent their whole output budget reasoning, per "
                "router and region: not attempts and not the router's fault; raise routers[].reasoning.budget_tokens.",
                "timeseries",
                "short",
                (Sql(q.BUDGET_EXHAUSTED),),
            ),
            Panel(
                "Error rate by provider",
                "Do failures follow one provider? Failed / attempted probes per provider (all regions).",
                "timeseries",
                "percentunit",
                (Sql(q.ratio("failures", "provider", f"{where} AND {q.PROVIDERS}", "router || ' ' || provider")),),
            ),
            Panel(
                "Error rate by region",
                "Do failures follow one prober region (a network path)? Failed / attempted probes per region.",
                "timeseries",
                "percentunit",
                (Sql(q.ratio("failures", "region", f"{where} AND {q.REGIONS}", "router || ' ' || region")),),
            ),
            Panel(
                "Served model",
                f"Which model and provider actually answered? From the raw probes of the last {q.RAW_HOURS} "
                "hours of the range.",
                "table",
                "short",
                (Sql(q.SERVED_MODEL, "table"),),
            ),
            Panel(
                "Recent failed probes",
                f"What did the failures say? The newest 100 failed probes of the last {q.RAW_HOURS} hours of the "
                "range, error detail as stored (secrets redacted by the prober).",
                "table",
                "none",
                (Sql(q.RECENT_FAILURES, "table"),),
                width=24,
                height=10,
            ),
            Panel(
                "TTFT p95 (live)",
                "The latest p95 TTFT over the shortest published window, from Prometheus.",
                "timeseries",
                "s",
                (PromQL('routewatch_ttft_p95_seconds{router=~"$router", model="$model"}', "{{router}} ({{window}})"),),
            ),
            Panel(
                "Error ratio (live)",
                "The latest error ratio over the shortest published window, from Prometheus.",
                "timeseries",
                "percentunit",
                (PromQL('routewatch_error_ratio{router=~"$router", model="$model"}', "{{router}} ({{window}})"),),
            ),
        ),
        annotations=(Annotation("Incidents", q.INCIDENT_ANNOTATIONS),),
        links=(("Fleet overview", f"/d/{FLEET_UID}"), ("SLO", f"/d/{SLO_UID}")),
    )


def slo() -> Dashboard:
    """SLO: per model, the error budget left over the SLO period and the current burn rates."""
    target = Variable(
        "slo_error_rate",
        "SLO error rate",
        "textbox",
        "0.05",
        "The error-rate objective (slo.error_rate in probes.yaml): the budget is this share of probes",
    )
    period = Variable(
        "slo_period",
        "SLO period",
        "custom",
        "30d,7d,1d",
        "The span the error budget is counted over",
    )
    return Dashboard(
        SLO_UID,
        "routewatch: SLO",
        "Error budget per model against slo.error_rate over the SLO period, and how fast it is burning.",
        (*datasource_variables(), _router_var(), _model_var(), target, period),
        (
            Panel(
                "Error budget remaining",
                "How much of the period's error budget is left? 1 - (error rate over the period / objective); "
                "below 0 the objective is missed.",
                "bargauge",
                "percentunit",
                (Sql(q.BUDGET_REMAINING, "table"),),
                width=12,
                height=10,
                thresholds=((0.25, "orange"), (0.0, "red")),
            ),
            Panel(
                "Burn rates",
                "How fast is the budget going? Error rate / objective over the last 1, 6, 24 and 72 hours (each "
                "with the current hour): 1 spends the budget exactly over the period; alerts page on high 1h and 6h.",
                "table",
                "short",
                (Sql(q.BURN_RATES, "table"),),
                width=12,
                height=10,
                links=(Link("model", "Model drill-down", MODEL_LINK),),
                decimals=2,
            ),
            Panel(
                "Error budget remaining over time",
                "When did the budget go? Budget left as the period's hours accumulate.",
                "timeseries",
                "percentunit",
                (Sql(q.BUDGET_OVER_TIME),),
            ),
            Panel(
                "Hourly burn rate",
                "Which hours burned the budget? Each hour's error rate / objective.",
                "timeseries",
                "short",
                (
                    Sql(
                        q.ratio(
                            "failures::float8 / ${slo_error_rate:sqlstring}::float8",
                            "model",
                            f"{q.ROUTERS} AND {q.MODELS}",
                        )
                    ),
                ),
            ),
            Panel(
                "Burn rate (live)",
                "The current burn rate from Prometheus: the error ratio of the shortest published window / objective.",
                "timeseries",
                "short",
                (PromQL(f"routewatch_error_ratio{{{ROUTER_MODEL}}} / $slo_error_rate", "{{router}} {{model}}"),),
                width=24,
            ),
        ),
        links=(("Fleet overview", f"/d/{FLEET_UID}"), ("Model drill-down", f"/d/{MODEL_UID}")),
        time_from="now-30d",
    )


# Each routewatch process Prometheus scrapes (the health dashboard's "instance" variable).
_PROCESS = 'instance=~"$instance"'
# A legend naming the process; `routewatch run` labels its prober workers' samples with `worker`
# (empty for a process's own families).
_WHO = "{{instance}} {{worker}}"


def _gauge(metric: str, label: str = "") -> PromQL:
    """A gauge per process, as reported."""
    return PromQL(f"{metric}{{{_PROCESS}}}", _WHO + (f" {label}" if label else ""))


def _increase(metric: str, label: str) -> PromQL:
    """A counter's increase per process over Grafana's rate interval."""
    return PromQL(f"increase({metric}{{{_PROCESS}}}[$__rate_interval])", f"{_WHO} {label}")


def _live(title: str, description: str, unit: str, *queries: PromQL) -> Panel:
    """A live time series panel over Prometheus."""
    return Panel(title, description, "timeseries", unit, queries)


def health() -> Dashboard:
    """Prober and aggregator health: throughput, saturation, lag, backlog, refreshes, leadership."""
    instance = Variable(
        "instance",
        "Process",
        "query",
        "label_values(routewatch_refreshes_total, instance)",
        "routewatch processes Prometheus scrapes (one per host:port)",
        multi=True,
        include_all=True,
        on="prometheus",
    )
    return Dashboard(
        HEALTH_UID,
        "routewatch: prober and aggregator health",
        "routewatch itself: is it probing, keeping up, storing, refreshing, and which process leads.",
        (*datasource_variables(), instance, _region_var()),
        (
            _live(
                "Probes per second",
                "Is each process probing at the rate its schedule asks? Completed probes per second by result.",
                "reqps",
                PromQL(
                    "sum by (instance, worker, result)"
                    f" (rate(routewatch_probes_total{{{_PROCESS}}}[$__rate_interval]))",
                    f"{_WHO} {{{{result}}}}",
                ),
            ),
            _live(
                "Probes in flight and queued",
                "Is the prober saturated? Probes running, waiting for a slot, and the concurrency limit.",
                "short",
                _gauge("routewatch_probes_in_flight", "in flight"),
                _gauge("routewatch_probes_queued", "queued"),
                _gauge("routewatch_probe_concurrency_limit", "limit"),
            ),
            _live(
                "Event loop lag",
                "Are measurements trustworthy? Lag of the prober's event loop (timings are skewed by about this).",
                "s",
                _gauge("routewatch_event_loop_lag_seconds", "now"),
                _gauge("routewatch_event_loop_lag_max_seconds", "worst"),
            ),
            _live(
                "Overloaded probes",
                "How many probes were measured while the prober lagged (left out of the figures)?",
                "short",
                _increase("routewatch_probes_overloaded_total", "overloaded"),
            ),
            _live(
                "Skipped slots",
                "Which scheduled probes were not sent? Slots skipped per interval because the series' last probe "
                "was still running (a slow reasoning model) or the daily budget paused it.",
                "short",
                PromQL(
                    "sum by (instance, worker, reason)"
                    f" (increase(routewatch_probe_slots_skipped_total{{{_PROCESS}}}[$__rate_interval]))",
                    f"{_WHO} {{{{reason}}}}",
                ),
            ),
            _live(
                "Results waiting to be stored",
                "Is the writer keeping up? Results accepted but not yet confirmed in the database.",
                "short",
                _gauge("routewatch_results_pending"),
            ),
            _live(
                "Spool on disk",
                "Is a backlog building on disk (database unreachable or slow)? Bytes the result spool holds.",
                "bytes",
                _gauge("routewatch_spool_bytes"),
            ),
            _live(
                "Results stored, failed flushes, drops",
                "Is data reaching the database, and is any lost? Stored per second; failed flushes and dropped, "
                "rejected and unspooled results per interval.",
                "short",
                PromQL(f"rate(routewatch_results_stored_total{{{_PROCESS}}}[$__rate_interval])", f"{_WHO} stored/s"),
                _increase("routewatch_writer_failed_flushes_total", "failed flushes"),
                _increase("routewatch_results_dropped_total", "dropped"),
                _increase("routewatch_results_rejected_total", "rejected"),
                _increase("routewatch_results_unspooled_total", "unspooled"),
            ),
            Panel(
                "Database reachable",
                "Can each process's writer reach the database right now (1) or not (0)?",
                "stat",
                "bool_yes_no",
                (PromQL(f"routewatch_writer_database_up{{{_PROCESS}}}", _WHO, instant=True),),
                thresholds=((0.5, "green"),),
            ),
            _live(
                "Stats age and refresh duration",
                "Are the published figures fresh? Seconds since the last refresh, how long refreshes take, and "
                "the interval they should keep.",
                "s",
                _gauge("routewatch_stats_age_seconds", "age"),
                _gauge("routewatch_stats_refresh_duration_seconds", "duration"),
                _gauge("routewatch_stats_refresh_interval_seconds", "interval"),
            ),
            _live(
                "Refreshes per minute",
                "Is the refresh loop running in each process?",
                "short",
                PromQL(f"60 * rate(routewatch_refreshes_total{{{_PROCESS}}}[$__rate_interval])", "{{instance}}"),
            ),
            _live(
                "Leader",
                "Which process leads (refreshes the rollups and decides states)? 1 for the leader; exactly one "
                "process should show 1.",
                "none",
                PromQL(f'max by (instance) (routewatch_aggregator_role{{role="leader", {_PROCESS}}})', "{{instance}}"),
            ),
            Panel(
                "Probes stored per hour by region",
                "Is every region's prober getting its results into the database? Probes per hour in the hourly "
                "rollup by prober region.",
                "timeseries",
                "short",
                (Sql(q.STORED_BY_REGION),),
            ),
        ),
        time_from="now-24h",
        refresh="30s",
    )


def all_dashboards() -> tuple[Dashboard, ...]:
    """Every dashboard routewatch ships, in the order the docs list them."""
    return (fleet(), model_drilldown(), slo(), health())
