"""Bounded provider labels: at most N named providers per model, the rest counted as ``other``.

The provider of a probe is whatever the router reports (a header or a field
of the answer). Each distinct value becomes rows of ``probe_hist_hourly``,
a cell of ``?by=provider``, an entry of ``/v1/models`` ``providers`` and a
set of ``/metrics`` series, so a router that names a new provider on every
answer would grow all of them without bound. The rollup therefore admits,
per (router, model), at most ``limit`` named providers into the table within
the label horizon (the longest published window): the first ones seen, in
the order their probes started; every later name is stored as ``other``,
which keeps its counts (model totals still equal the sum of the provider
cells). A slot frees up once its name has been absent for the whole horizon,
i.e. from every published window. Raw rows (``probe_results``) keep the name
as reported.

Two values are not names and take no slot: no provider at all (None, ``""``
or the literal ``"unknown"``; stored as ``""``, published as the label
``unknown`` and as JSON null) and ``other`` itself.

:func:`cap_cells` applies the same bound when the cells are published, to
rows the table held before the cap (or a lower limit) was in force: it keeps
the ``limit`` named providers with the most probes and merges the others
into ``other``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Protocol, TypeVar

DEFAULT_MAX_PROVIDERS = 5
DEFAULT_HORIZON_HOURS = 7 * 24  # the default longest window, 7d

OTHER = "other"  # the cell of every provider past the limit
UNKNOWN = "unknown"  # the label of probes whose router named no provider
NO_PROVIDER = ""  # how probe_hist_hourly stores "no provider" (a key column cannot be NULL)

SeriesKey = tuple[str, str]  # (router, model)


def stored_provider(reported: str | None) -> str:
    """The probe_hist_hourly value of a reported provider, before the cap: ``""`` for none."""
    return NO_PROVIDER if reported is None or reported in (NO_PROVIDER, UNKNOWN) else reported


def provider_label(stored: str) -> str:
    """The published cell value (metric label, ``by=provider`` key) of a stored provider."""
    return UNKNOWN if stored in (NO_PROVIDER, UNKNOWN) else stored


def is_named(value: str) -> bool:
    """Whether a stored value or label names a provider (and so takes a slot)."""
    return value not in (NO_PROVIDER, UNKNOWN, OTHER)


class LabelCap:
    """Per (router, model), the named providers admitted: at most ``limit``, first come first admitted.

    Built for one refresh from the provider values the table already holds
    within the horizon; :meth:`label` admits new names while there is room.
    """

    def __init__(self, limit: int, stored: Mapping[SeriesKey, Iterable[str]]) -> None:
        """``stored``: per (router, model), the provider values (stored or labels) within the horizon."""
        if limit < 1:
            raise ValueError(f"the provider limit must be at least 1, got {limit}")
        self.limit = limit
        self._admitted: dict[SeriesKey, set[str]] = {}
        self._overflowing: set[SeriesKey] = set()
        for key, values in stored.items():
            present = set(values)
            self._admitted[key] = {v for v in present if is_named(v)}
            if OTHER in present:
                self._overflowing.add(key)
        # (router, model) whose names overflowed into "other" for the first
        # time within the horizon, in order: the caller logs each once.
        self.newly_capped: list[SeriesKey] = []

    def admit(self, first_seen: Mapping[tuple[str, str, str | None], datetime]) -> None:
        """Admit new names while there is room, earliest first.

        ``first_seen``: (router, model, reported provider) -> its earliest probe.
        """
        for (router, model, reported), _ in sorted(first_seen.items(), key=lambda item: item[1]):
            self.label(router, model, reported)

    def label(self, router: str, model: str, reported: str | None) -> str:
        """The value to store for ``reported``: itself if admitted (now or before), else ``other``."""
        value = stored_provider(reported)
        if not is_named(value):
            return value
        key = (router, model)
        admitted = self._admitted.setdefault(key, set())
        if value in admitted:
            return value
        if len(admitted) < self.limit:
            admitted.add(value)
            return value
        if key not in self._overflowing:
            self._overflowing.add(key)
            self.newly_capped.append(key)
        return OTHER


class Counted(Protocol):
    """What :func:`cap_cells` ranks providers by (an hourly row or a sum of them)."""

    attempts: int
    overloaded: int


Row = TypeVar("Row", bound=Counted)
CellKey = tuple[str, ...]


def cap_cells(groups: Mapping[CellKey, Sequence[Row]], limit: int) -> dict[CellKey, Sequence[Row]]:
    """``groups`` (cell key -> rows) with at most ``limit`` named provider cells per (router, model).

    The named providers with the most probes are kept (ties by name); the
    rows of the others join the ``other`` cell. Other keys pass unchanged.
    When some cell moves, the lists are new: the caller's are never extended;
    when none does (the usual case), the groups come back as they were.
    """
    named: dict[SeriesKey, list[CellKey]] = {}
    for key, rows in groups.items():
        if rows and len(key) == 4 and key[2] == "provider" and is_named(key[3]):
            named.setdefault((key[0], key[1]), []).append(key)
    excess: set[CellKey] = set()
    for cells in named.values():
        if len(cells) > limit:
            ranked = sorted((-sum(h.attempts + h.overloaded for h in groups[key]), key[3], key) for key in cells)
            excess.update(key for _, _, key in ranked[limit:])
    if not excess:
        return dict(groups)
    out: dict[CellKey, Sequence[Row]] = {}
    for key, rows in groups.items():
        target = (key[0], key[1], "provider", OTHER) if key in excess else key
        out[target] = [*out.get(target, ()), *rows]
    return out
