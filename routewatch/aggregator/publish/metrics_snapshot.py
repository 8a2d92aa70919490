"""The part of ``GET /metrics`` that changes only with a refresh: the stats gauges and model states.

Written straight into the Prometheus text format (the format
``prometheus_client.generate_latest`` writes, byte for byte), because going
through metric-family objects costs about 20 us per sample: seconds for the
hundreds of thousands of samples that every window and breakdown of 10,000
series make. The endpoint (``metrics.py``) renders this once per snapshot and
status report and reuses it for every scrape until the next refresh.

What is exported is chosen by :class:`MetricsExport` (``aggregator.metrics``
in probes.yaml). Per (router, model) and exported window there are 12 gauges
(:data:`MODEL_GAUGES`); each exported breakdown adds 9 per window and per
provider, region or prompt tier value (:data:`SLICE_GAUGES`); ``routewatch_model_state``
has 4 per model id. The default (the shortest window, no breakdown) is
therefore 12 series per (router, model) and 4 per model id.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from routewatch.aggregator.model_state import State
from routewatch.aggregator.model_state_store import StatusReport
from routewatch.aggregator.refresh import Snapshot
from routewatch.aggregator.stats import MIN_OK_SAMPLES, WindowCounts, error_rate
from routewatch.config import AggregatorConfig
from routewatch.config.durations import parse_duration

__all__ = [
    "BREAKDOWNS",
    "DEFAULT_EXPORT",
    "MODEL_GAUGES",
    "SLICE_GAUGES",
    "MetricsExport",
    "render_states",
    "render_stats",
]

BREAKDOWNS = ("provider", "region", "tier")
"""The breakdowns /metrics can export, in the order their families are written."""


@dataclass(frozen=True, slots=True)
class MetricsExport:
    """Which of the published stats ``/metrics`` exports.

    ``windows``: the window names, in any order (families list them in the
    snapshot's order); None means the snapshot's shortest window.
    ``breakdowns``: any of :data:`BREAKDOWNS`.
    """

    windows: tuple[str, ...] | None = None
    breakdowns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.breakdowns) - set(BREAKDOWNS)
        if unknown:
            raise ValueError(f"unknown breakdown(s) {sorted(unknown)}; known: {', '.join(BREAKDOWNS)}")

    @classmethod
    def from_config(cls, aggregator: AggregatorConfig) -> MetricsExport:
        """What ``aggregator.metrics`` in probes.yaml asks for."""
        return cls(tuple(aggregator.metrics_windows()), tuple(aggregator.metrics.breakdowns))

    def windows_of(self, snapshot: Snapshot) -> list[str]:
        """The snapshot's windows to export, in the snapshot's order."""
        if self.windows is None:
            return [min(snapshot.windows, key=parse_duration)] if snapshot.windows else []
        return [w for w in snapshot.windows if w in self.windows]


DEFAULT_EXPORT = MetricsExport()
"""The default of ``aggregator.metrics``: the shortest window, no breakdown."""


# ---------------------------------------------------------------- the gauges

_Extract = Callable[[WindowCounts], "float | None"]


def _s(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000.0


# (name after the level prefix, help, value of one cell's counts, also per
# provider/region); a value of None gives no sample (absent, never 0). Token
# counts and the sufficiency flag are per model only: per slice they add
# series, not insight.
_GAUGES: tuple[tuple[str, str, _Extract, bool], ...] = (
    (
        "ttft_p50_seconds",
        "Median time to first token (any output delta) over ok probes",
        lambda c: _s(c.ttft_p50_ms),
        True,
    ),
    ("ttft_p95_seconds", "95th percentile time to first token over ok probes", lambda c: _s(c.ttft_p95_ms), True),
    (
        "ttfat_p50_seconds",
        "Median time to first answer (content) token over ok probes",
        lambda c: _s(c.ttfat_p50_ms),
        True,
    ),
    (
        "ttfat_p95_seconds",
        "95th percentile time to first answer (content) token over ok probes",
        lambda c: _s(c.ttfat_p95_ms),
        True,
    ),
    (
        "output_tokens_per_second_p50",
        "Median output speed over ok probes, in tokens per second",
        lambda c: c.tps_p50,
        True,
    ),
    ("error_ratio", "Failed / attempted probes", lambda c: error_rate(c.attempts, c.ok), True),
    (
        "error_excl_429_ratio",
        "Failed / attempted probes, rate-limited (HTTP 429) attempts left out",
        lambda c: error_rate(c.attempts - c.rate_limited, c.ok),
        True,
    ),
    (
        "window_probes_attempted",
        "Probes attempted (those flagged prober_overloaded are left out)",
        lambda c: c.attempts,
        True,
    ),
    ("window_probes_ok", "Probes that succeeded", lambda c: c.ok, True),
    ("window_input_tokens", "Input tokens sent by probes", lambda c: c.input_tokens, False),
    ("window_output_tokens", "Output tokens received by probes", lambda c: c.output_tokens, False),
    (
        "window_samples_sufficient",
        f"1 when there are at least {MIN_OK_SAMPLES} ok probes, enough to publish the percentiles unmarked",
        lambda c: float(c.ok >= MIN_OK_SAMPLES),
        False,
    ),
)
# Per model only, from the failure classes rather than the counts.
_BUDGET_EXHAUSTED = (
    "window_probes_budget_exhausted",
    "Probes whose output budget ran out while the model reasoned: not attempted against the router; "
    "raise the router's reasoning.budget_tokens",
)
MODEL_GAUGES = len(_GAUGES) + 1
"""Gauges per (router, model) and exported window."""
SLICE_GAUGES = sum(1 for *_, per_slice in _GAUGES if per_slice)
"""Gauges per (router, model), exported window and value of an exported breakdown."""

# Family prefix and help suffix per level (None: the model as a whole). Each
# level has families of its own, so that a sum over one family never counts a
# probe twice.
_LEVELS: dict[str | None, tuple[str, str]] = {
    None: ("routewatch_", ""),
    "provider": ("routewatch_provider_", ", per upstream provider the router reported"),
    "region": ("routewatch_region_", ", per region of the prober that measured"),
    "tier": ("routewatch_tier_", ", per prompt input-length tier (every tier; the others are the headline tier's)"),
}


def _number(value: float) -> str:
    """A sample value as prometheus_client writes it (Go's formatting: large numbers in e-notation)."""
    x = float(value)
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if math.isnan(x):
        return "NaN"
    text = repr(x)
    dot = text.find(".")
    if x > 0 and dot > 6:  # Go switches to an exponent sooner than Python does
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _escape_value(value: str) -> str:
    """A label value as the text format quotes it (what prometheus_client writes)."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels(**pairs: str) -> str:
    """``{name="value",...}`` sorted by name, as prometheus_client writes them."""
    return "{" + ",".join(f'{name}="{_escape_value(value)}"' for name, value in sorted(pairs.items())) + "}"


def _header(name: str, help_: str) -> str:
    doc = help_.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {doc}\n# TYPE {name} gauge\n"


def _families(names: list[str], helps: list[str], samples: list[list[str]]) -> Iterable[str]:
    for name, help_, lines in zip(names, helps, samples, strict=True):
        yield _header(name, help_)
        yield from lines


def render_stats(snapshot: Snapshot, export: MetricsExport = DEFAULT_EXPORT) -> bytes:
    """The stats gauges of ``snapshot`` that ``export`` asks for, in the text exposition format.

    One family per gauge and level, every family written even when it has no
    sample; samples by window (the snapshot's order), then model (the
    snapshot's order), then breakdown value (sorted).
    """
    windows = export.windows_of(snapshot)
    out: list[str] = []
    for dim, (prefix, help_tail) in _LEVELS.items():
        if dim is not None and dim not in export.breakdowns:
            continue
        gauges = [g for g in _GAUGES if dim is None or g[3]]
        names = [prefix + name for name, *_ in gauges]
        extract = [value_of for _, _, value_of, _ in gauges]
        samples: list[list[str]] = [[] for _ in gauges]
        for window in windows:
            for (router, model), stats in snapshot.stats[window].items():
                if dim is None:
                    cells = [(_labels(router=router, model=model, window=window), stats.counts)]
                else:
                    values = stats.breakdown.get(dim, {})
                    cells = [
                        (_labels(router=router, model=model, window=window, **{dim: value}), values[value].counts)
                        for value in sorted(values)
                    ]
                for labels, counts in cells:
                    for name, value_of, lines in zip(names, extract, samples, strict=True):
                        value = value_of(counts)
                        if value is not None:
                            lines.append(f"{name}{labels} {_number(value)}\n")
        out.extend(_families(names, [g[1] + help_tail for g in gauges], samples))
        if dim is None:
            out.extend(_budget_exhausted(snapshot, windows))
    return "".join(out).encode("utf-8")


def _budget_exhausted(snapshot: Snapshot, windows: list[str]) -> Iterable[str]:
    """The per-model family of probes that ran out of output budget while reasoning."""
    name, help_ = _BUDGET_EXHAUSTED
    yield _header("routewatch_" + name, help_)
    for window in windows:
        for (router, model), stats in snapshot.stats[window].items():
            n = 0 if stats.cell is None else stats.cell.budget_exhausted
            yield f"routewatch_{name}{_labels(router=router, model=model, window=window)} {_number(n)}\n"


def render_states(status: StatusReport) -> bytes:
    """``routewatch_model_state`` (1 for each model's state, 0 for the others), ``routewatch_incidents_open``,
    and the notification outbox: ``routewatch_notifications{state}`` and the oldest pending row's time."""
    out = [_header("routewatch_model_state", "Model status: 1 for the current state, 0 for the others")]
    for m in status.models:
        for state in State:
            value = "1.0" if m.state == state else "0.0"
            out.append(f"routewatch_model_state{_labels(model=m.model, state=state.value)} {value}\n")
    out.append(_header("routewatch_incidents_open", "Incidents open now"))
    out.append(f"routewatch_incidents_open {_number(len(status.open))}\n")
    counts = status.notifications
    out.append(
        _header(
            "routewatch_notifications",
            "Incident notifications in the outbox by state: pending (to be sent or retried), sent, dead (given up)",
        )
    )
    for outbox_state, n in (("pending", counts.pending), ("sent", counts.sent), ("dead", counts.dead)):
        out.append(f"routewatch_notifications{_labels(state=outbox_state)} {_number(n)}\n")
    if counts.oldest_pending is not None:
        out.append(
            _header(
                "routewatch_notification_oldest_pending_timestamp_seconds",
                "When the oldest notification still pending was queued (Unix time)",
            )
        )
        out.append(
            f"routewatch_notification_oldest_pending_timestamp_seconds {_number(counts.oldest_pending.timestamp())}\n"
        )
    return "".join(out).encode("utf-8")
