"""``python -m routewatch.grafana [--check] [DIRECTORY]``: write the dashboards' JSON (default ``dashboards/``).

``--check`` writes nothing and exits 1, naming each file, when the committed
JSON is not what the code makes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from routewatch.grafana.render import stale, write


def main(argv: list[str] | None = None) -> int:
    """Write (or check) the dashboards; the exit status."""
    parser = argparse.ArgumentParser(prog="python -m routewatch.grafana", description=__doc__)
    parser.add_argument("directory", nargs="?", default="dashboards", type=Path)
    parser.add_argument("--check", action="store_true", help="only check that the files are current")
    args = parser.parse_args(argv)
    if args.check:
        problems = stale(args.directory)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("regenerate with: python -m routewatch.grafana", file=sys.stderr)
        return 1 if problems else 0
    changed = write(args.directory)
    print(
        f"{len(changed)} of the dashboards changed in {args.directory}" + (f": {', '.join(changed)}" if changed else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
