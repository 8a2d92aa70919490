#!/usr/bin/env python3
"""Prove that two passes of the suite leave no test untested: whatever one skips, the other runs.

Usage: compare_skips.py PLAIN.xml TIMESCALEDB.xml (pytest --junitxml reports of the two passes).
Exits 1, listing them, if a test is skipped in one pass and skipped in or absent from the other.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def outcomes(report: Path) -> dict[str, str]:
    """Map each test id in a junit report to its skip reason, or to "" when it ran."""
    result: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        skipped = case.find("skipped")
        # An xfail is reported as a skip too; it did run, so it counts as run.
        if skipped is None or skipped.get("type") == "pytest.xfail":
            result[test_id] = ""
        else:
            result[test_id] = skipped.get("message") or "skipped"
    return result


def uncovered(first: dict[str, str], second: dict[str, str]) -> list[str]:
    """Test ids skipped in ``first`` that ``second`` does not run either."""
    return sorted(t for t, reason in first.items() if reason and second.get(t, "absent"))


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    names = ("plain", "timescaledb")
    passes = [outcomes(Path(arg)) for arg in argv[1:]]
    for name, tests in zip(names, passes, strict=True):
        skipped = sum(1 for reason in tests.values() if reason)
        print(f"{name} pass: {len(tests)} tests, {skipped} skipped")
    missing = sorted(set(uncovered(passes[0], passes[1])) | set(uncovered(passes[1], passes[0])))
    if missing:
        print(f"{len(missing)} test(s) run in neither pass:")
        for test_id in missing:
            reasons = " | ".join(f"{n}: {p.get(test_id) or 'absent'}" for n, p in zip(names, passes, strict=True))
            print(f"  {test_id}  ({reasons})")
        return 1
    print("every test skipped in one pass ran in the other")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
