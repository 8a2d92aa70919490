"""Fixtures of the hostile sweep: one scenario run for the whole module, on the module's own database."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .scenario import Scenario, Sweep


@pytest.fixture(scope="module")
def scenario(module_db_dsn: str) -> Iterator[Scenario]:
    """The whole hostile scenario, run once; every test judges a part of what it observed."""
    work = Path(tempfile.mkdtemp(prefix="routewatch-hostile-work-"))
    try:
        yield Sweep(module_db_dsn, work).run()
    finally:
        shutil.rmtree(work, ignore_errors=True)
