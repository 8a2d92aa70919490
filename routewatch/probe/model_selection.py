"""Which of the models a router lists are probed: its ``discover`` globs and cap."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from routewatch.config import DiscoverConfig


@dataclass(frozen=True, slots=True)
class Selection:
    """The discovered models to probe, and how many matching ones the cap left out."""

    models: tuple[str, ...]  # sorted by id
    over_cap: int


def select_models(listed: Iterable[str], discover: DiscoverConfig, configured: Collection[str]) -> Selection:
    """The listed ids that an include glob matches and no exclude glob does, without those configured.

    Globs are case-sensitive (model ids are). Past ``max_models`` the first by id are kept,
    so the same listing always gives the same set, whichever order the router sends it in.
    """
    matching = sorted(
        model
        for model in set(listed)
        if model not in configured
        and any(fnmatchcase(model, glob) for glob in discover.include)
        and not any(fnmatchcase(model, glob) for glob in discover.exclude)
    )
    kept = matching[: discover.max_models]
    return Selection(tuple(kept), len(matching) - len(kept))
