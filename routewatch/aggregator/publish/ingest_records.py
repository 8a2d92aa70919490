"""Reading one pushed probe result: untrusted JSON in, a storable ``ProbeResult`` or the reason out.

A record of ``POST /v1/ingest`` is the JSON a prober's spool holds for a
result (``routewatch.delivery.spool.encode_result``): every field of
``ProbeResult`` by name, ``id`` as a UUID string and ``started_at`` as an
ISO-8601 time with its offset. Here each field is checked for its type, the
labels the prober sets itself (router, model, prompt, methodology, region) must
be storable text, ``tier`` a tier's label as ``config.tiers`` writes it, ``ok``
must agree with ``error_class``, and ``started_at`` must fall inside the time
the database keeps (a far-off date would otherwise make the server create a
partition for it). Then the result goes through
``router_values.storable``, the very normalisation a local prober applies to
whatever a router sent, so a pushed result can hold nothing a local one could
not.

The region is the token's: a record may leave ``region`` out, and one that
names another region is rejected, never relabelled (a prober configured for
the wrong region should be told, not silently moved).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from routewatch.config.tiers import canonical_tier
from routewatch.probe.router_values import MAX_LABEL_CHARS, storable, valid_text
from routewatch.results.probe_result import ERROR_CLASSES, ProbeResult

# Fields a record may leave out: those with a default, and the region (the token's).
OPTIONAL_FIELDS = frozenset(
    {f.name for f in dataclasses.fields(ProbeResult) if f.default is not dataclasses.MISSING} | {"region"}
)
FIELD_TYPES = {f.name: str(f.type) for f in dataclasses.fields(ProbeResult)}
# Labels the prober sets from its own configuration: stored and shown as they are, so they must be clean.
_LABELS = ("region", "router", "model", "prompt", "methodology")
# A prober's clock may run a little ahead of the server's.
MAX_CLOCK_AHEAD = timedelta(hours=1)


class RecordRejected(ValueError):
    """A pushed record that cannot be stored; the message is the reason, as the pusher is told."""


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _typed(name: str, value: Any) -> Any:
    """``value`` if it has ``name``'s JSON type (null allowed where the field is optional); RecordRejected if not."""
    kind = FIELD_TYPES[name]
    if value is None:
        if kind.endswith(" | None"):
            return None
        raise RecordRejected(f"{name} must not be null")
    base = kind.removesuffix(" | None")
    if base == "bool":
        ok = isinstance(value, bool)
    elif base == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:  # str, and the uuid and datetime fields, which travel as strings
        ok = isinstance(value, str)
    if not ok:
        want = {"bool": "true or false", "int": "a whole number", "float": "a number"}.get(base, "a string")
        raise RecordRejected(f"{name} is {_describe(value)}, not {want}")
    return value


def _label(name: str, value: str) -> str:
    if not value.strip():
        raise RecordRejected(f"{name} is empty")
    if len(value) > MAX_LABEL_CHARS:
        raise RecordRejected(f"{name} is {len(value)} characters long; at most {MAX_LABEL_CHARS}")
    if valid_text(value) != value:
        raise RecordRejected(f"{name} {_describe(value)} holds control characters, NUL or unpaired surrogates")
    return value


def _tier(value: str) -> str:
    # A tier is a series dimension: only the labels a prober can produce are stored.
    try:
        label = canonical_tier(value)
    except ValueError as exc:
        raise RecordRejected(f"tier: {exc}") from None
    if label != value:
        raise RecordRejected(f"tier {_describe(value)} is not written as a label ({label!r})")
    return label


def _started_at(value: str, oldest: datetime, now: datetime) -> datetime:
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise RecordRejected(f"started_at {_describe(value)} is not an ISO-8601 time") from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise RecordRejected(f"started_at {_describe(value)} has no UTC offset")
    if not oldest <= when <= now + MAX_CLOCK_AHEAD:
        raise RecordRejected(
            f"started_at {when.isoformat()} is outside the time this server keeps "
            f"({oldest.isoformat()} to {(now + MAX_CLOCK_AHEAD).isoformat()})"
        )
    return when


def read_record(raw: object, region: str, *, oldest: datetime, now: datetime) -> ProbeResult:
    """The storable result in ``raw`` (one element of a batch's ``results``), measured in ``region``.

    ``oldest`` and ``now`` bound ``started_at`` (``now`` plus MAX_CLOCK_AHEAD).

    :raises RecordRejected: the reason the record cannot be stored.
    """
    if not isinstance(raw, Mapping):
        raise RecordRejected(f"a result must be a JSON object, not {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in FIELD_TYPES)
    if unknown:
        raise RecordRejected(f"unknown field {_describe(unknown[0])} (is this server older than the prober?)")
    missing = [name for name in FIELD_TYPES if name not in raw and name not in OPTIONAL_FIELDS]
    if missing:
        raise RecordRejected(f"missing field {missing[0]!r}")
    values = {name: _typed(name, raw[name]) for name in FIELD_TYPES if name in raw}
    given_region = values.get("region")
    if given_region is not None and given_region != region:
        raise RecordRejected(f"region {_describe(given_region)} is not this token's region ({region!r})")
    values["region"] = region
    for name in _LABELS:
        _label(name, values[name])
    try:
        values["id"] = uuid.UUID(values["id"])
    except ValueError:
        raise RecordRejected(f"id {_describe(values['id'])} is not a UUID") from None
    values["started_at"] = _started_at(values["started_at"], oldest, now)
    if "tier" in values:
        values["tier"] = _tier(values["tier"])
    error_class = values.get("error_class")
    if error_class is not None and error_class not in ERROR_CLASSES:
        raise RecordRejected(f"error_class {_describe(error_class)} is not one of {', '.join(ERROR_CLASSES)}")
    if values["ok"] != (error_class is None):
        raise RecordRejected("ok must be true exactly when error_class is null")
    values.setdefault("error_class", None)
    values.setdefault("error_detail", None)
    return storable(ProbeResult(**values))


def record_id(raw: object) -> str | None:
    """The id a record gives, when it is a UUID (to name a rejected record in the answer); else None."""
    if isinstance(raw, Mapping) and isinstance(raw.get("id"), str):
        try:
            return str(uuid.UUID(raw["id"]))
        except ValueError:
            return None
    return None
