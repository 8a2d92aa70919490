"""The OpenAPI 3.1 document of the HTTP API, served at ``GET /openapi.json``.

It describes everything ``api.create_app`` serves: the catalog API
(``api.py``), the ingest endpoint (``ingest.py``), the public status routes (``public_routes.py``: the status page,
``/status.json``, ``/v1/incidents``, the badges) and ``/metrics``
(``metrics.py``). It is built from the same constants the handlers validate
against and answer with (states, breakdown dimensions, series metrics and
buckets, the point cap, incident states and limits, uptime days and levels,
content types), so the document cannot drift from the code on those. Response
schemas are closed (``additionalProperties: false``) where this package writes
the JSON, so a field added to a response without being documented fails the
schemathesis test in tests/test_api.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from routewatch.aggregator.budget import SPEND_DAYS
from routewatch.aggregator.model_state import UPTIME_DAYS, State
from routewatch.aggregator.model_state_store import INCIDENT_LIST_MAX, RECENT_INCIDENTS
from routewatch.aggregator.publish.ingest import MAX_BODY_BYTES, MAX_RESULTS
from routewatch.aggregator.publish.ingest_catalog import MAX_CATALOG_BODY_BYTES, MAX_CATALOG_MODELS, MAX_KEEP
from routewatch.aggregator.publish.ingest_records import OPTIONAL_FIELDS
from routewatch.aggregator.publish.metrics import METRICS_CONTENT_TYPE
from routewatch.aggregator.publish.public_routes import DEFAULT_INCIDENT_LIMIT, HTML, INCIDENT_STATES, SVG
from routewatch.aggregator.publish.status_view import LEVELS
from routewatch.aggregator.rollup import BREAKDOWNS
from routewatch.aggregator.stats import CI_FIELDS, MIN_OK_SAMPLES
from routewatch.probe.router_values import MAX_LABEL_CHARS
from routewatch.results.probe_result import ERROR_CLASSES, ProbeResult

Schema = dict[str, Any]

OPENAPI_VERSION = "3.1.0"
STATES = tuple(state.value for state in State)  # operational, degraded, down, unknown
# An incident is a span with a model degraded or down: its worst state is one of those.
INCIDENT_WORST_STATES = (State.DEGRADED.value, State.DOWN.value)
# A day's uptime bar: a LEVELS name, or unknown (status_view.day_level).
DAY_LEVELS = (*(level for level, _, _ in LEVELS), "unknown")
# Query value -> stats_history column.
SERIES_METRICS = {
    "ttft_p50": "ttft_p50_ms",
    "ttft_p95": "ttft_p95_ms",
    "ttfat_p50": "ttfat_p50_ms",
    "ttfat_p95": "ttfat_p95_ms",
    "tps_p50": "tps_p50",
    "error_rate": "error_rate",
    "error_rate_excl_429": "error_rate_excl_429",
}
SERIES_BUCKETS = ("1h", "1d")
MAX_COST_DAYS = SPEND_DAYS  # the spend the aggregator keeps in memory
MAX_SERIES_POINTS = 2400  # 100 days of hourly points: the default retention, hourly
WINDOW_PATTERN = r"^[0-9]+(\.[0-9]+)?(ms|s|m|h|d|w)$"

_REF = "#/components/schemas/"
NUMBER_OR_NULL: Schema = {"type": ["number", "null"]}
DATE_TIME: Schema = {"type": "string", "format": "date-time"}
DATE_TIME_OR_NULL: Schema = {"type": ["string", "null"], "format": "date-time"}


def _ref(name: str) -> Schema:
    return {"$ref": _REF + name}


def _object(properties: dict[str, Schema], *, optional: Sequence[str] = (), closed: bool = True) -> Schema:
    """An object schema whose properties are all required except ``optional``."""
    out: Schema = {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
    }
    if closed:
        out["additionalProperties"] = False
    return out


# ---------------------------------------------------------------- schemas


_TTFT = "time to first token of any kind, reasoning included, over ok probes (ms)"
_TTFAT = "time to first answer (content) token over ok probes (ms): for a reasoning model, TTFT plus its reasoning time"


def _figures() -> dict[str, Schema]:
    """stats._figures plus ci95 and errors_by_class: what a model and a breakdown cell share."""
    interval: Schema = {"type": ["array", "null"], "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
    count: Schema = {"type": "integer", "minimum": 0}
    rate: Schema = {"type": ["number", "null"], "minimum": 0, "maximum": 1}
    return {
        "ttft_p50_ms": {**NUMBER_OR_NULL, "description": "median " + _TTFT},
        "ttft_p95_ms": {**NUMBER_OR_NULL, "description": "95th percentile " + _TTFT},
        "ttfat_p50_ms": {**NUMBER_OR_NULL, "description": "median " + _TTFAT},
        "ttfat_p95_ms": {**NUMBER_OR_NULL, "description": "95th percentile " + _TTFAT},
        "tps_p50": NUMBER_OR_NULL,
        "error_rate": rate,
        "error_rate_excl_429": rate,
        "tokens": _object({"input": count, "output": count, "total": count}),
        "samples": _object(
            {
                "attempted": count,
                "ok": count,
                "failed": count,
                "rate_limited": count,
                "excluded_prober_overloaded": count,
                "excluded_budget_exhausted": {
                    **count,
                    "description": "probes whose output budget ran out while the model reasoned (finish_reason "
                    "length before any answer): not attempts, not failures; raise the router's "
                    "reasoning.budget_tokens",
                },
                "sufficient": {
                    "type": "boolean",
                    "description": f"at least {MIN_OK_SAMPLES} ok samples: percentiles are publishable unmarked",
                },
                "min_ok_for_sufficient": {"type": "integer", "const": MIN_OK_SAMPLES},
            }
        ),
        "first_probe": DATE_TIME_OR_NULL,
        "last_probe": DATE_TIME_OR_NULL,
        "ci95": {
            **_object(dict.fromkeys(CI_FIELDS, interval)),
            "description": "distribution-free 95% interval of each percentile; null with too few ok samples",
        },
        "errors_by_class": {
            "type": "object",
            "additionalProperties": count,
            "description": "failed probes (prober-overloaded and budget-exhausted ones left out) per error class",
        },
        "router_retries": {
            **_object(
                {
                    "reported_ok": count,
                    "retried": count,
                    "retried_share": rate,
                    "retried_share_ci95": interval,
                    "upstream_calls": count,
                    "upstream_calls_failed": count,
                    "upstream_failure_rate": rate,
                    "upstream_failure_rate_ci95": interval,
                    "ttft_first_attempt_p50_ms": NUMBER_OR_NULL,
                    "ttft_first_attempt_p95_ms": NUMBER_OR_NULL,
                    "ttft_retried_p50_ms": NUMBER_OR_NULL,
                    "ttft_retried_p95_ms": NUMBER_OR_NULL,
                }
            ),
            "description": "what the router reported of its upstream calls (docs/router-dialects.md): successes "
            "it reported attempts for, how many it retried, upstream calls and failed calls (the failure rate "
            "the router hid from clients, with a Wilson 95% interval), and TTFT of first-call and retried "
            "successes. Null rates and percentiles where the router reports no attempts",
        },
    }


def _served_model_cell() -> Schema:
    count: Schema = {"type": "integer", "minimum": 0}
    return _object(
        {
            "share": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "samples": _object({"attempted": count, "ok": count}),
            "ttft_p50_ms": NUMBER_OR_NULL,
            "ttft_p95_ms": NUMBER_OR_NULL,
        }
    )


def _model_stats(*, every_breakdown: bool = False) -> Schema:
    """A stats object; with ``every_breakdown``, its ``breakdown`` holds every dimension (GET /v1/models/{id})."""
    props: dict[str, Schema] = {
        "model": {"type": "string"},
        "router": {"type": "string"},
        "window": {"type": "string"},
        "window_start": DATE_TIME,
        "window_end": DATE_TIME,
        "updated_at": DATE_TIME,
        "tier": {
            "type": "string",
            "minLength": 1,
            "description": "the prompt input-length tier the figures are of (aggregator.headline_tier; "
            "default the prompts' smallest), e.g. '100', '1k'; null figures when the model has no probe of "
            "that tier in the window; every tier's figures are in breakdown.tier",
        },
        **_figures(),
        "breakdown": {
            "type": "object",
            "description": "only with by=: the model's cells for that one dimension, keyed by value. "
            "Providers: at most aggregator.max_providers_per_model names, then 'other' "
            "(every provider past them) and 'unknown' (the router named no provider). Provider and "
            "region cells are of the headline tier (see tier); tier cells hold every tier, keyed by its label",
            "properties": {
                **{
                    dim: {"type": "object", "additionalProperties": _ref("Cell"), "propertyNames": {"minLength": 1}}
                    for dim in BREAKDOWNS
                },
                "served_model": {
                    "type": "object",
                    "description": "which model answered (the router's own name for it), read from the "
                    "window's probes: share of the ok answers, counts and exact TTFT percentiles of the ok ones; "
                    "'unknown': the router named none (most failed probes); 'other': names past the 20 most common",
                    "additionalProperties": _served_model_cell(),
                    "propertyNames": {"minLength": 1},
                },
            },
            "additionalProperties": False,
            "minProperties": 1,
            "maxProperties": 1,
        },
    }
    if every_breakdown:
        cells: Schema = {"type": "object", "additionalProperties": _ref("Cell"), "propertyNames": {"minLength": 1}}
        props["breakdown"] = {
            **_object(dict.fromkeys(BREAKDOWNS, cells)),
            "description": "the model's cells for every dimension, keyed by value (empty when none was measured)",
        }
        return _object(props)
    return _object(props, optional=("breakdown",))


def _probe_result_fields() -> dict[str, Schema]:
    """A schema per ProbeResult field, as JSON carries it (uuid and datetime as strings)."""
    types = {
        "uuid.UUID": {"type": "string", "format": "uuid"},
        "datetime": DATE_TIME,
        "str": {"type": "string"},
        "bool": {"type": "boolean"},
        "int": {"type": "integer"},
        "float": {"type": "number"},
    }
    props: dict[str, Schema] = {}
    for f in dataclasses.fields(ProbeResult):
        name = str(f.type)
        nullable = name.endswith(" | None")
        base = dict(types[name.removesuffix(" | None")])  # KeyError: a new field type to document
        if nullable:
            base["type"] = [base["type"], "null"]
        props[f.name] = base
    return props


def _probe_result() -> Schema:
    """ProbeResult's fields as api.probe_result_json writes them."""
    return _object(_probe_result_fields())


def _ingest_record() -> Schema:
    """One result of a POST /v1/ingest batch, as ingest_records.read_record reads it."""
    props = _probe_result_fields()
    label: Schema = {"minLength": 1, "maxLength": MAX_LABEL_CHARS}
    for name in ("router", "model", "prompt", "methodology"):
        props[name] = {**props[name], **label}
    props["region"] = {
        **props["region"],
        **label,
        "description": "optional: the token's region is used; a record naming another region is rejected",
    }
    props["tier"] = {
        **props["tier"],
        "pattern": "^[1-9][0-9]*k?$",
        "description": "optional, default '100': the prompt's input-length tier as a label ('100', '1k', '10k'; "
        "thousands written with k)",
    }
    props["error_class"] = {"type": ["string", "null"], "enum": [*ERROR_CLASSES, None]}
    props["started_at"] = {
        **props["started_at"],
        "description": "with a UTC offset; within the server's retention, at most an hour ahead of its clock",
    }
    return {
        **_object(props, optional=sorted(OPTIONAL_FIELDS)),
        "description": "a probe result as a prober's spool holds it; ok is true exactly when error_class is null",
    }


def _price() -> Schema:
    per_mtok: Schema = {"type": "number", "minimum": 0}
    return {
        **_object(
            {
                "input_usd_per_mtok": per_mtok,
                "output_usd_per_mtok": per_mtok,
                "cached_input_usd_per_mtok": {**NUMBER_OR_NULL, "description": "null: the input price applies"},
                "source": {
                    "type": "string",
                    "enum": ["config", "listing"],
                    "description": "config: probes.yaml's price for the model (it wins); listing: the router's "
                    "model list's",
                },
            }
        ),
        "type": ["object", "null"],
        "description": "USD per 1M tokens the model's probes are costed at; null: no price",
    }


def _spend(count: Schema, usd: Schema) -> dict[str, Schema]:
    return {
        "probes": count,
        "priced_probes": {**count, "description": "probes with a computed cost (the model had a price)"},
        "usd": {**usd, "description": "computed: the reported tokens × the model's price, over the priced probes"},
        "reported_probes": {**count, "description": "probes whose router reported their cost"},
        "reported_usd": {**NUMBER_OR_NULL, "description": "the router's own figures, summed; null: none reported"},
        "reported_vs_computed": {
            **NUMBER_OR_NULL,
            "description": "reported over computed, over the probes with both; far from 1: the price is wrong",
        },
        "billed_usd": {**usd, "description": "what the budget counts: the reported cost where given, else computed"},
    }


def _costs() -> Schema:
    count: Schema = {"type": "integer", "minimum": 0}
    usd: Schema = {"type": "number", "minimum": 0}
    day: Schema = {"type": "string", "format": "date"}
    row = _object(
        {
            "day": day,
            "router": {"type": "string"},
            "model": {"type": "string"},
            **_spend(count, usd),
            "price": {**_price(), "description": "the model's price now (not necessarily that day's)"},
        }
    )
    router_day = _object({"day": day, "router": {"type": "string"}, **_spend(count, usd)})
    pause = _object(
        {
            "router": {"type": "string"},
            "model": {"type": "string"},
            "prompt": {"type": "string"},
            "usd_per_day": {**usd, "description": "the series' measured cost rate when it was paused"},
        }
    )
    budget = _object(
        {
            "usd_per_day": {**NUMBER_OR_NULL, "description": "budget.usd_per_day; null: no budget"},
            "planned_usd_per_day": {
                **NUMBER_OR_NULL,
                "description": "what probes.yaml plans per day with the models the routers list (discover) and "
                "their listed prices, every answer max_tokens long (the figure each prober logs); re-made every "
                "minute from the model catalog; null: no model has a price",
            },
            "spent_today_usd": {**usd, "description": "billed: the routers' reported costs where given, else computed"},
            "paused": {"type": "array", "items": pause, "description": "series paused until the UTC day turns"},
            "note": {"type": ["string", "null"], "description": "what the status page says while series are paused"},
        }
    )
    return _object(
        {
            "day": {**day, "description": "today (UTC), as the database's clock says"},
            "budget": budget,
            "routers": {"type": "array", "items": router_day, "description": "per router and day, newest first"},
            "models": {"type": "array", "items": row, "description": "per model, router and day, newest first"},
        }
    )


def _catalog_push() -> Schema:
    price: Schema = {"type": "number", "description": "USD per 1M tokens, 0 to 100,000; a bad one is refused"}
    model = _object(
        {"id": {"type": "string"}, "input": price, "output": price, "cached_input": price},
        optional=("input", "output", "cached_input"),
    )
    return _object(
        {
            "router": {"type": "string", "description": "a router this server's probes.yaml configures"},
            "seen": {"type": "string", "format": "date-time", "description": "when the list was read (with offset)"},
            "complete": {
                "type": "boolean",
                "description": "false for a truncated read: its models are recorded, none is retired",
            },
            "models": {"type": "array", "minItems": 1, "maxItems": MAX_CATALOG_MODELS, "items": model},
            "keep": {
                "type": "array",
                "maxItems": MAX_KEEP,
                "items": {"type": "string"},
                "description": "models configured by hand on the prober: never retired",
            },
        },
        optional=("keep",),
    )


def _catalog_report() -> Schema:
    count: Schema = {"type": "integer", "minimum": 0}
    return _object(
        {
            "region": {"type": "string", "description": "the region of the token"},
            "router": {"type": "string"},
            "complete": {"type": "boolean"},
            "models": {**count, "description": "models recorded as listed"},
            "retired": {**count, "description": "models this read retired"},
            "prices_refused": {
                "type": "array",
                "description": "models recorded without a listed price, with the field refused and why",
                "items": _object({"field": {"type": "string"}, "id": {"type": "string"}, "reason": {"type": "string"}}),
            },
        }
    )


def _ingest_report() -> Schema:
    count: Schema = {"type": "integer", "minimum": 0}
    return _object(
        {
            "region": {"type": "string", "description": "the region of the token: every stored result's region"},
            "received": count,
            "stored": {**count, "description": "results newly stored"},
            "duplicates": {**count, "description": "results stored before (same probe id and start): skipped"},
            "rejected": {
                "type": "array",
                "description": "results not stored, each with its index in the batch and the reason",
                "items": _object(
                    {
                        "index": count,
                        "id": {"type": ["string", "null"], "description": "the record's id, when it has a valid one"},
                        "reason": {"type": "string"},
                    }
                ),
            },
            "budget_paused": {
                "type": ["object", "null"],
                "description": "the series the daily budget paused today, for the prober to skip; "
                "null before the server has read the day's spend",
                "properties": {
                    "day": {"type": "string", "format": "date", "description": "the UTC day they are paused for"},
                    "series": {
                        "type": "array",
                        "items": {
                            "type": "array",
                            "items": {"type": "string"},
                            "minItems": 3,
                            "maxItems": 3,
                            "description": "router, model, prompt",
                        },
                    },
                },
                "required": ["day", "series"],
                "additionalProperties": False,
            },
        }
    )


def _incidents() -> Schema:
    """Open incidents (end null) and the most recent closed ones (end set), as status_store writes them."""
    return _object(
        {
            "open": {
                "type": "array",
                "items": {"allOf": [_ref("Incident"), {"properties": {"end": {"type": "null"}}}]},
            },
            "recent": {
                "type": "array",
                "maxItems": RECENT_INCIDENTS,
                "items": {"allOf": [_ref("Incident"), {"properties": {"end": DATE_TIME}}]},
                "description": f"closed incidents, newest first, at most {RECENT_INCIDENTS}",
            },
        }
    )


def _status_page() -> Schema:
    """``GET /status.json``: status_view.view_json."""
    state: Schema = {"type": "string", "enum": list(STATES)}
    seconds: Schema = {"type": "number", "minimum": 0}
    share: Schema = {"type": ["number", "null"], "minimum": 0, "maximum": 1}
    route = _object(
        {
            "router": {"type": "string"},
            "ttft_p50_ms": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": "p50 TTFT (first token of any kind, reasoning included) over the page window; "
                "null with no ok probe",
            },
            "ttfat_p50_ms": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": "p50 TTFAT (first answer token: for a reasoning model, after its reasoning) over "
                "the page window; null with no ok probe",
            },
            "tps_p50": {"type": ["number", "null"], "minimum": 0},
            "input_price_per_mtok": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": "USD per 1M input tokens from probes.yaml; null: not configured",
            },
            "error_rate": {**share, "description": "failed / attempted over the page window; null: nothing attempted"},
        }
    )
    measured = _object(
        {
            "since": {
                "type": ["string", "null"],
                "format": "date",
                "description": "the first UTC day with uptime data; null: none yet",
            },
            "recorded_s": {**seconds, "description": "seconds of data behind uptime_90d (unknown time included)"},
            "full": {"type": "boolean", "description": "every day of the uptime list has data"},
        }
    )
    day = _object(
        {
            "day": {"type": "string", "format": "date", "description": "UTC day"},
            "level": {
                "type": "string",
                "enum": list(DAY_LEVELS),
                "description": "unknown: no data, or more than half of the recorded time unknown",
            },
            "fraction_up": {**share, "description": "operational / known time; null: nothing known"},
            "operational_s": seconds,
            "degraded_s": seconds,
            "down_s": seconds,
            "unknown_s": seconds,
        }
    )
    model = _object(
        {
            "id": {"type": "string"},
            "state": state,
            "since": {**DATE_TIME_OR_NULL, "description": "when it entered this state"},
            "reason": {"type": "string", "description": "one line; empty when operational"},
            "routers": {"type": "array", "items": route, "description": "configured routers first"},
            "retired": {
                "type": "boolean",
                "description": "every router that listed the model (discover) has stopped listing it; not probed",
            },
            "uptime_90d": {**share, "description": "operational / known time over the days below; null: nothing known"},
            "uptime_measured": {**measured, "description": "over what span uptime_90d was measured"},
            "uptime": {
                "type": "array",
                "items": day,
                "minItems": UPTIME_DAYS,
                "maxItems": UPTIME_DAYS,
                "description": f"{UPTIME_DAYS} days, oldest first; the last is today (UTC)",
            },
        }
    )
    return _object(
        {
            "updated_at": {**DATE_TIME_OR_NULL, "description": "status evaluation time"},
            "stats_updated_at": {**DATE_TIME_OR_NULL, "description": "time of the p50 figures"},
            "window": {"type": ["string", "null"], "description": "window of the p50 figures; null without stats"},
            "tier": {
                "type": ["string", "null"],
                "minLength": 1,
                "description": "the prompt tier the p50 figures are of (aggregator.headline_tier, by default the "
                "prompts' smallest): only that tier's probes count in them; null without stats",
            },
            "overall": state,
            "models": {"type": "array", "items": model},
            "incidents": _incidents(),
            "budget_note": {
                "type": ["string", "null"],
                "description": "while the daily budget has paused series: which and why; null otherwise",
            },
        }
    )


def _schemas() -> dict[str, Schema]:
    state: Schema = {"type": "string", "enum": list(STATES)}
    return {
        "Error": _object(
            {
                "error": _object(
                    {
                        "status": {"type": "integer", "minimum": 400, "maximum": 599},
                        "message": {"type": "string"},
                        "parameter": {
                            "type": ["string", "null"],
                            "description": "the query, path or header parameter at fault; null when none",
                        },
                        "issues": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "config reload only: every problem as file:line: field: message",
                        },
                    },
                    optional=("issues",),
                ),
            }
        ),
        "Cell": _object(_figures()),
        "ModelStats": _model_stats(),
        "ModelSummary": _object(
            {
                "id": {"type": "string"},
                "router": {"type": "string"},
                "state": {
                    **state,
                    "description": "from the status engine; unknown when it has no verdict "
                    "or status is not enabled (no SLO configured)",
                },
                "providers": {
                    "type": "array",
                    "items": {"type": ["string", "null"], "minLength": 1},
                    "uniqueItems": True,
                    "description": "providers seen in the listing window: at most "
                    "aggregator.max_providers_per_model names (sorted), then 'other' "
                    "(every provider past them), then null (the router named no provider)",
                },
                "retired": {
                    "type": "boolean",
                    "description": "the router's model list (discover) no longer names the model: it is not "
                    "probed any more; its history stays",
                },
                "retired_at": {
                    **DATE_TIME_OR_NULL,
                    "description": "when the router's list was first read without the model; null while listed",
                },
                "stats": _ref("ModelStats"),
                "cost_today_usd": {
                    **NUMBER_OR_NULL,
                    "minimum": 0,
                    "description": "what this model's probes on this router cost today (UTC day), computed "
                    "at its price (price); null when none of them had a price",
                },
                "price": _price(),
            }
        ),
        "ModelDetail": _object(
            {
                "id": {"type": "string"},
                "router": {"type": "string"},
                "state": state,
                "providers": {
                    "type": "array",
                    "items": {"type": ["string", "null"], "minLength": 1},
                    "uniqueItems": True,
                    "description": "as in the listing (ModelSummary)",
                },
                "retired": {"type": "boolean", "description": "as in the listing (ModelSummary)"},
                "retired_at": {**DATE_TIME_OR_NULL, "description": "as in the listing (ModelSummary)"},
                "cost_today_usd": {**NUMBER_OR_NULL, "description": "as in the listing (ModelSummary)"},
                "price": {**_price(), "description": "as in the listing (ModelSummary)"},
                "stats": {**_ref("ModelStats"), "description": "the listing's window, as in the listing"},
                "routers": {
                    "type": "array",
                    "items": {"type": "string"},
                    "minItems": 1,
                    "description": "every router the model is published for (router= picks one)",
                },
                "window": {"type": "string", "description": "the listing's window"},
                "updated_at": DATE_TIME,
                "status_enabled": {"type": "boolean"},
                "windows": {
                    "type": "object",
                    "additionalProperties": _model_stats(every_breakdown=True),
                    "minProperties": 1,
                    "description": "every configured window, each with every breakdown",
                },
            }
        ),
        "ModelList": _object(
            {
                "window": {"type": "string"},
                "updated_at": DATE_TIME,
                "status_enabled": {"type": "boolean"},
                "models": {"type": "array", "items": _ref("ModelSummary")},
            }
        ),
        "Series": _object(
            {
                "model": {"type": "string"},
                "router": {"type": "string"},
                "window": {"type": "string"},
                "metric": {"type": "string", "enum": list(SERIES_METRICS)},
                "bucket": {"type": "string", "enum": list(SERIES_BUCKETS)},
                "from": DATE_TIME,
                "to": DATE_TIME,
                "aggregation": {"type": "string", "const": "last"},
                "points": {
                    "type": "array",
                    "maxItems": MAX_SERIES_POINTS,
                    "items": _object(
                        {
                            "t": {**DATE_TIME, "description": "start of the bucket (UTC)"},
                            "taken_at": {**DATE_TIME, "description": "the snapshot whose value this is"},
                            "value": NUMBER_OR_NULL,
                        }
                    ),
                },
            }
        ),
        "Status": _object(
            {
                "updated_at": DATE_TIME_OR_NULL,
                "overall": state,
                "models": {
                    "type": "array",
                    "items": _object(
                        {
                            "id": {"type": "string"},
                            "state": state,
                            "since": DATE_TIME_OR_NULL,
                            "reason": {"type": "string"},
                        },
                        closed=False,
                    ),
                },
                "incidents": _incidents(),
            }
        ),
        "Incident": _object(
            {
                "id": {"type": "integer", "minimum": 1},
                "start": DATE_TIME,
                "end": {**DATE_TIME_OR_NULL, "description": "null while open"},
                "worst_state": {"type": "string", "enum": list(INCIDENT_WORST_STATES)},
                "models": {"type": "array", "items": {"type": "string"}, "description": "every model affected, sorted"},
                "suppressed": {
                    "type": "boolean",
                    "description": "every bad spell so far fell inside planned maintenance",
                },
            }
        ),
        "IncidentList": _object(
            {
                "updated_at": {**DATE_TIME_OR_NULL, "description": "status evaluation time"},
                "state": {"type": "string", "enum": list(INCIDENT_STATES)},
                "limit": {"type": "integer", "minimum": 1, "maximum": INCIDENT_LIST_MAX},
                "incidents": {
                    "type": "array",
                    "items": _ref("Incident"),
                    "maxItems": INCIDENT_LIST_MAX,
                    "description": "open incidents first, then closed ones newest first",
                },
            }
        ),
        "StatusPage": _status_page(),
        "Health": _object(
            {
                "status": {"type": "string", "const": "ok"},
                "role": {"type": "string", "enum": ["leader", "standby"]},
                "refreshes": {"type": "integer", "minimum": 0},
                "updated_at": DATE_TIME_OR_NULL,
            }
        ),
        "Readiness": _object(
            {
                "status": {"type": "string", "enum": ["ready", "not_ready"]},
                "reason": {"type": ["string", "null"]},
                "updated_at": DATE_TIME_OR_NULL,
                "age_s": NUMBER_OR_NULL,
                "max_age_s": {"type": "number"},
            }
        ),
        "ProbeResult": _probe_result(),
        "Costs": _costs(),
        "IngestBatch": _object(
            {"results": {"type": "array", "maxItems": MAX_RESULTS, "items": _ref("IngestRecord")}},
        ),
        "IngestRecord": _ingest_record(),
        "IngestReport": _ingest_report(),
        "CatalogPush": _catalog_push(),
        "CatalogReport": _catalog_report(),
        "ProbeRun": _object(
            {
                "model": {"type": "string"},
                "results": {"type": "array", "items": _ref("ProbeResult")},
            }
        ),
        "ReloadReport": _object(
            {
                "file": {"type": "string"},
                "applied": {
                    "type": "boolean",
                    "description": (
                        "true: changes were applied live (probe series, schedule, timeouts, SLO, maintenance); "
                        "false: nothing was"
                    ),
                },
                "restart_required": {"type": "boolean"},
                "changes": {"type": "array", "items": {"type": "string"}},
                "message": {"type": "string"},
            }
        ),
    }


# ---------------------------------------------------------------- parameters and responses


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _parameters(windows: Sequence[str] | None) -> dict[str, Schema]:
    window: Schema = (
        {"type": "string", "enum": list(windows)} if windows else {"type": "string", "pattern": WINDOW_PATTERN}
    )
    return {
        "ModelId": {
            "name": "id",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "minLength": 1},
            "description": "model id as the router names it, e.g. openai/gpt-4o; its '/' may be sent as is or as %2F",
        },
        "Window": _query("window", window, "rolling window; default 7d (or the longest configured)"),
        "Router": _query("router", {"type": "string"}, "the router, needed only when the model is probed on several"),
        "IfNoneMatch": {
            "name": "If-None-Match",
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": "an ETag from an earlier response",
        },
    }


def _content(media_type: str, schema: Schema, description: str, *, cached: bool = False) -> Schema:
    out: Schema = {"description": description, "content": {media_type: {"schema": schema}}}
    if cached:
        out["headers"] = {
            "ETag": {"required": True, "schema": {"type": "string"}, "description": "weak validator"},
            "Cache-Control": {
                "required": True,
                "schema": {"type": "string"},
                "description": "public, max-age=<refresh interval in seconds>",
            },
        }
    return out


def _json(schema_name: str, description: str, *, cached: bool = False) -> Schema:
    return _content("application/json", _ref(schema_name), description, cached=cached)


def _html(description: str, *, cached: bool = False) -> Schema:
    return _content(HTML, {"type": "string"}, description, cached=cached)


def _svg(description: str, *, cached: bool = False) -> Schema:
    return _content(SVG, {"type": "string"}, description, cached=cached)


def _responses() -> dict[str, Schema]:
    return {
        "NotModified": {"description": "If-None-Match matched the current ETag; no body"},
        "BadRequest": _json(
            "Error", "bad input: unknown or repeated query parameter, bad value; error.parameter names it"
        ),
        "NotFound": _json("Error", "no such model (or router for it); error.parameter names it"),
        "Unavailable": _json("Error", "no stats snapshot yet (Retry-After), or the database is unreachable"),
        "Unauthorized": _json("Error", "missing or wrong bearer token (WWW-Authenticate: Bearer)"),
        "Forbidden": _json(
            "Error",
            "admin endpoints are disabled: ROUTEWATCH_ADMIN_TOKEN is not set, or this process offers no admin actions",
        ),
    }


def _std(ok: Schema, *codes: str) -> dict[str, Schema]:
    refs = {
        "304": "NotModified",
        "400": "BadRequest",
        "401": "Unauthorized",
        "403": "Forbidden",
        "404": "NotFound",
        "503": "Unavailable",
    }
    return {"200": ok, **{code: {"$ref": "#/components/responses/" + refs[code]} for code in codes}}


def _p(name: str) -> Schema:
    return {"$ref": "#/components/parameters/" + name}


# ---------------------------------------------------------------- paths


def _paths() -> dict[str, Schema]:
    state_q = _query("state", {"type": "string", "enum": list(STATES)}, "only models in this state")
    series_params = [
        _p("ModelId"),
        _query("metric", {"type": "string", "enum": list(SERIES_METRICS)}, "the figure to chart; default ttft_p50"),
        _query("bucket", {"type": "string", "enum": list(SERIES_BUCKETS)}, "point spacing; default 1h"),
        _query("from", DATE_TIME, "start, ISO-8601 (no offset: UTC); default to - 7d"),
        _query("to", DATE_TIME, "end, ISO-8601 (no offset: UTC); default the snapshot time (now)"),
        _p("Window"),
        _p("Router"),
        _p("IfNoneMatch"),
    ]
    admin: list[Schema] = [{"bearerAuth": []}]
    return {
        "/v1/models": {
            "get": {
                "operationId": "listModels",
                "summary": "Every model with its catalog-window (7d) stats",
                "parameters": [
                    _query(
                        "provider",
                        {"type": "string"},
                        "only models with this provider in their breakdown ('other' and 'unknown' included)",
                    ),
                    state_q,
                    _p("IfNoneMatch"),
                ],
                "responses": _std(_json("ModelList", "the models", cached=True), "304", "400", "503"),
            }
        },
        "/v1/models/{id}": {
            "get": {
                "operationId": "model",
                "summary": "One model: its listing entry and its stats over every window, with every breakdown",
                "description": (
                    "The id is the rest of the path. An id whose last segment is stats, series or probe "
                    "names that sub-resource instead: send such an id with its last '/' as %2F."
                ),
                "parameters": [_p("ModelId"), _p("Router"), _p("IfNoneMatch")],
                "responses": _std(_json("ModelDetail", "the model", cached=True), "304", "400", "404", "503"),
            }
        },
        "/v1/models/{id}/stats": {
            "get": {
                "operationId": "modelStats",
                "summary": "One model's stats over one window, optionally broken down",
                "parameters": [
                    _p("ModelId"),
                    _p("Window"),
                    _p("Router"),
                    _query(
                        "by",
                        {"type": "string", "enum": [*BREAKDOWNS, "served_model"]},
                        "add the per-provider, per-region, per-prompt-tier or per-served-model cells as breakdown.<by>",
                    ),
                    _p("IfNoneMatch"),
                ],
                "responses": _std(_json("ModelStats", "the stats", cached=True), "304", "400", "404", "503"),
            }
        },
        "/v1/models/{id}/series": {
            "get": {
                "operationId": "modelSeries",
                "summary": "A published figure over time, for charts",
                "description": (
                    "Read from stats_history: what the catalog showed over time for one window "
                    "(7d unless window= is given). Each bucket's value is the LAST snapshot taken in "
                    "that bucket (what the catalog showed at its end), not an average: the figures "
                    "are already rolling-window aggregates. Buckets with no snapshot are left out. "
                    f"At most {MAX_SERIES_POINTS} buckets per request: a longer range is a 400 on from."
                ),
                "parameters": series_params,
                "responses": _std(_json("Series", "the points, oldest first", cached=True), "304", "400", "404", "503"),
            }
        },
        "/v1/costs": {
            "get": {
                "operationId": "costs",
                "summary": "What the probes cost per router, model and UTC day, and the daily budget",
                "parameters": [
                    _query(
                        "days",
                        {"type": "integer", "minimum": 1, "maximum": MAX_COST_DAYS},
                        "days back from today (UTC), today included; default 1",
                    ),
                    _query("router", {"type": "string"}, "only this router's models"),
                    _query("model", {"type": "string"}, "only this model"),
                    _p("IfNoneMatch"),
                ],
                "responses": _std(_json("Costs", "spend and budget", cached=True), "304", "400", "503"),
            }
        },
        "/v1/status": {
            "get": {
                "operationId": "status",
                "summary": "Every model's state, the overall state, open and recent incidents",
                "parameters": [_p("IfNoneMatch")],
                "responses": {
                    **_std(_json("Status", "the status", cached=True), "304", "400", "503"),
                    "404": _json("Error", "status is not enabled on this server (no SLO configured)"),
                },
            }
        },
        "/v1/models/{id}/probe": {
            "post": {
                "operationId": "probeModel",
                "summary": "Probe the model now (every router and prompt); results are returned, not stored",
                "security": admin,
                "parameters": [_p("ModelId")],
                "responses": _std(_json("ProbeRun", "the probe results"), "400", "401", "403", "404"),
            }
        },
        "/v1/config/reload": {
            "post": {
                "operationId": "reloadConfig",
                "summary": "Re-read probes.yaml: validate it and report what would change",
                "description": "A bad file is a 400 listing every issue as file:line: field: message; "
                "the running configuration is kept either way.",
                "security": admin,
                "responses": _std(_json("ReloadReport", "the file is valid"), "400", "401", "403"),
            }
        },
        "/v1/ingest": {
            "post": {
                "operationId": "ingest",
                "summary": "Store a batch of probe results pushed by a prober in another region",
                "description": (
                    "The bearer token is a region's ingest token (api.ingest_tokens in the server's probes.yaml) "
                    "and decides the region of every result. Each record is validated on its own: a bad one is "
                    "rejected with its reason, the others stored. Idempotent: a result stored before (same id "
                    f"and started_at) is counted as a duplicate. At most {MAX_RESULTS} results and "
                    f"{MAX_BODY_BYTES} bytes per request (413 beyond). A 200 means the results are committed."
                ),
                "security": [{"ingestAuth": []}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("IngestBatch")}},
                },
                "responses": {
                    **_std(_json("IngestReport", "what was stored, skipped as a duplicate or rejected"), "400", "401"),
                    "403": _json("Error", "ingest is disabled: the server's probes.yaml sets no api.ingest_tokens"),
                    "408": _json("Error", "the request body did not arrive in time"),
                    "413": _json("Error", "too many results or bytes in one request; error.message names the limit"),
                    "503": _json("Error", "the database is unavailable (Retry-After): send the batch again"),
                },
            }
        },
        "/v1/ingest/catalog": {
            "post": {
                "operationId": "ingestCatalog",
                "summary": "Record a pushing prober's read of a router's model list in the catalog",
                "description": (
                    "The bearer token is a region's ingest token. The list is recorded as a prober with a database "
                    "records its own: ordered by seen (the newest read wins, whichever region made it); a complete "
                    "list retires the models it lacks. A 400 names the field that is wrong; a bad price is refused "
                    f"for its model only. At most {MAX_CATALOG_MODELS} models and {MAX_CATALOG_BODY_BYTES} bytes "
                    "(413 beyond)."
                ),
                "security": [{"ingestAuth": []}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("CatalogPush")}},
                },
                "responses": {
                    **_std(_json("CatalogReport", "the list is recorded"), "400", "401"),
                    "403": _json("Error", "ingest is disabled: the server's probes.yaml sets no api.ingest_tokens"),
                    "408": _json("Error", "the request body did not arrive in time"),
                    "413": _json("Error", "too many models or bytes; error.message names the limit"),
                    "503": _json("Error", "the database is unavailable (Retry-After)"),
                },
            }
        },
        **_public_paths(),
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics: the latest stats, model status, the aggregator's and prober's health",
                "description": "Prometheus text exposition format, uncached (Cache-Control: no-store); "
                "gzip-compressed when the scraper accepts it. Query parameters are ignored.",
                "responses": {"200": _content(METRICS_CONTENT_TYPE, {"type": "string"}, "the exposition")},
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "The process is up (stats may still be computing)",
                "responses": _std(_json("Health", "up"), "400"),
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Ready: a snapshot exists and the last refresh is recent",
                "responses": {
                    **_std(_json("Readiness", "ready"), "400"),
                    "503": _json("Readiness", "not ready; reason says why"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "parameters": [_p("IfNoneMatch")],
                "responses": _std(
                    {
                        "description": "the OpenAPI document",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "304",
                    "400",
                ),
            }
        },
    }


def _public_paths() -> dict[str, Schema]:
    """The public status routes of public_routes.py. They ignore query parameters they do not know."""
    not_enabled = "model status is not enabled on this server (no SLO configured)"
    model_badge_id: Schema = {
        "name": "model_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1},
        "description": "model id as the router names it, e.g. openai/gpt-4o; its '/' may be sent as is or as %2F",
    }
    return {
        "/status": {
            "get": {
                "operationId": "statusPage",
                "summary": "The status page: every model's state, daily uptime bars and incidents (HTML, no script)",
                "description": "A 200 page also says so when status is not enabled or not computed yet.",
                "parameters": [_p("IfNoneMatch")],
                "responses": {
                    **_std(_html("the page", cached=True), "304"),
                    "503": _html("the status database cannot be read right now (Retry-After)"),
                },
            }
        },
        "/status.json": {
            "get": {
                "operationId": "statusPageJson",
                "summary": "The status page's data: states, p50s per router, daily uptime and incidents",
                "parameters": [_p("IfNoneMatch")],
                "responses": {
                    **_std(_json("StatusPage", "the status", cached=True), "304"),
                    "404": _json("Error", not_enabled),
                    "503": _json("Error", "status not computed yet, or the database cannot be read (Retry-After)"),
                },
            }
        },
        "/status/models/{model_id}": {
            "get": {
                "operationId": "modelPage",
                "summary": "One model's page: charts over 24 h, 7 d and 90 d, time-of-day profile, providers, "
                "served models, incidents and embed snippets (HTML, no script)",
                "parameters": [model_badge_id, _p("IfNoneMatch")],
                "responses": {
                    **_std(_html("the page", cached=True), "304"),
                    "404": _html("no such model: a page that says so"),
                    "503": _html("stats not computed yet, or the history cannot be read (Retry-After)"),
                },
            }
        },
        "/v1/incidents": {
            "get": {
                "operationId": "listIncidents",
                "summary": "The incident history: open incidents first, then closed ones, newest first",
                "parameters": [
                    _query(
                        "state",
                        {"type": "string", "enum": list(INCIDENT_STATES), "default": "all"},
                        "open, closed or all incidents; default all",
                    ),
                    _query(
                        "limit",
                        {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": INCIDENT_LIST_MAX,
                            "default": DEFAULT_INCIDENT_LIMIT,
                        },
                        f"at most this many incidents; default {DEFAULT_INCIDENT_LIMIT}",
                    ),
                    _p("IfNoneMatch"),
                ],
                "responses": {
                    **_std(_json("IncidentList", "the incidents", cached=True), "304", "400"),
                    "404": _json("Error", not_enabled),
                    "503": _json("Error", "status not computed yet, or the database cannot be read (Retry-After)"),
                },
            }
        },
        "/badge/status.svg": {
            "get": {
                "operationId": "statusBadge",
                "summary": "A badge with the overall state, or one model's",
                "parameters": [
                    _query("model", {"type": "string"}, "a model id: its state instead of the overall one"),
                    _p("IfNoneMatch"),
                ],
                "responses": {
                    **_std(_svg("the badge", cached=True), "304"),
                    "404": _svg("a badge saying why: status is not enabled, or no such model"),
                    "503": _svg("a pending badge: status not computed yet (Retry-After)"),
                },
            }
        },
        "/badge/{model_id}.svg": {
            "get": {
                "operationId": "modelBadge",
                "summary": "A model's embed badge: input price, p50 TTFT and router",
                "parameters": [
                    model_badge_id,
                    _query(
                        "router",
                        {"type": "string"},
                        "the router to show when the model is probed on several; default the first configured",
                    ),
                    _p("IfNoneMatch"),
                ],
                "responses": {
                    **_std(_svg("the badge", cached=True), "304"),
                    "404": _svg("a badge saying why: no such model, or not probed on that router"),
                    "503": _svg("a pending badge: stats not computed yet (Retry-After)"),
                },
            }
        },
    }


def build(windows: Sequence[str] | None = None) -> Schema:
    """The OpenAPI document; ``windows`` (the snapshot's) become the window enum, else a pattern."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "routewatch",
            "version": "1",
            "description": (
                "Latency and reliability of models behind LLM routers. Reads are public and "
                "served from the aggregator's last snapshot, with ETag and Cache-Control: "
                "public, max-age=<refresh interval>. Errors are JSON: "
                '{"error": {"status", "message", "parameter"}}, parameter null when none applies; '
                "badges answer theirs with an explanatory SVG badge instead. Unknown query "
                "parameters are a 400, except on the status page, /status.json, /v1/incidents, "
                "the badges and /metrics, which ignore them."
            ),
        },
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "parameters": _parameters(windows),
            "responses": _responses(),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the value of ROUTEWATCH_ADMIN_TOKEN",
                },
                "ingestAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a region's ingest token (the variable its api.ingest_tokens entry names)",
                },
            },
        },
    }
