"""What does reading a router's model list cost the prober's event loop?

A prober decodes each page of a router's model list (``discover:``) in a
thread (``routewatch/probe/model_listing.py``), but a thread only helps while it lets go
of the GIL: the C JSON scanner holds it for a whole page. Pages larger than
256 KiB are therefore decoded with json's pure-Python scanner, which lets the
event loop run every few milliseconds. This measures, for an OpenRouter-sized
list (400 entries with their metadata) and the largest list read (20,000
entries, close to the 8 MiB page bound), the time to decode and check a page
and the event loop's longest stall meanwhile (a 1 ms sleep timed in a loop),
with either scanner, and the stall of the idle loop as the floor. Median of
the rounds; the worst stall too.

    python bench/listing.py --quick   # 3 rounds per case, a few seconds
    python bench/listing.py           # 9 rounds per case
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from machine import describe_machine, print_table, result_header, write_results

from routewatch.probe import model_listing

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "listing.json"
DEFAULT_JSON_QUICK = HERE / "results" / "listing-quick.json"
CASES = (("openrouter-sized", 400, 1500), ("largest read", 20_000, 0))  # (name, entries, description chars)
SCANNERS = (("C", 10**12), ("pure-Python", None))  # None: the module's own threshold


def page_body(entries: int, description: int) -> bytes:
    """A model list shaped like OpenRouter's: id, metadata and per-token prices as strings."""
    data = [
        {
            "id": f"vendor/model-{i:05d}",
            "name": "Vendor: Model",
            "description": "x" * description,
            "context_length": 128000,
            "architecture": {"modality": "text->text", "tokenizer": "Other"},
            "pricing": {"prompt": "0.0000025", "completion": "0.00001", "request": "0", "image": "0"},
            "top_provider": {"context_length": 128000, "max_completion_tokens": 16384, "is_moderated": True},
            "supported_parameters": ["tools", "temperature", "top_p"],
        }
        for i in range(entries)
    ]
    return json.dumps({"data": data}).encode()


async def _stall_while(work: Any) -> tuple[float, float]:
    """(seconds ``work`` took, longest lateness of a 1 ms sleep on the loop meanwhile)."""
    worst = 0.0
    done = False

    async def lag() -> None:
        nonlocal worst
        while not done:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - before - 0.001)

    watcher = asyncio.create_task(lag())
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    await work()
    took = time.perf_counter() - started
    done = True
    await watcher
    return took, worst


async def measure(rounds: int) -> list[dict[str, Any]]:
    """Every (case, scanner) over ``rounds`` rounds, and the idle loop."""
    out: list[dict[str, Any]] = []
    default = model_listing._C_DECODE_BYTES
    for name, entries, description in CASES:
        body = page_body(entries, description)
        for scanner, limit in SCANNERS:
            model_listing._C_DECODE_BYTES = default if limit is None else limit
            runs = [
                await _stall_while(lambda body=body: asyncio.to_thread(model_listing.decode_page, body))
                for _ in range(rounds)
            ]
            out.append(
                {
                    "case": name,
                    "entries": entries,
                    "bytes": len(body),
                    "scanner": scanner,
                    "decode_ms_median": statistics.median(r[0] for r in runs) * 1000,
                    "stall_ms_median": statistics.median(r[1] for r in runs) * 1000,
                    "stall_ms_worst": max(r[1] for r in runs) * 1000,
                }
            )
    model_listing._C_DECODE_BYTES = default
    idle = [await _stall_while(lambda: asyncio.sleep(0.5)) for _ in range(rounds)]
    out.append(
        {
            "case": "idle loop",
            "entries": 0,
            "bytes": 0,
            "scanner": "-",
            "decode_ms_median": None,
            "stall_ms_median": statistics.median(r[1] for r in idle) * 1000,
            "stall_ms_worst": max(r[1] for r in idle) * 1000,
        }
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 rounds per case instead of 9")
    parser.add_argument("--json", type=Path, help="where to write the results")
    args = parser.parse_args()
    rounds = 3 if args.quick else 9
    results = asyncio.run(measure(rounds))
    rows = [["case", "entries", "MB", "scanner", "decode ms", "stall ms (median)", "stall ms (worst)"]]
    for r in results:
        decode = "-" if r["decode_ms_median"] is None else f"{r['decode_ms_median']:.0f}"
        mb = f"{r['bytes'] / 1e6:.2f}" if r["bytes"] else "-"
        rows.append(
            [
                r["case"],
                f"{r['entries']:,}",
                mb,
                r["scanner"],
                decode,
                f"{r['stall_ms_median']:.0f}",
                f"{r['stall_ms_worst']:.0f}",
            ]
        )
    print_table(rows, left=1)
    path = args.json or (DEFAULT_JSON_QUICK if args.quick else DEFAULT_JSON)
    write_results(
        path, {**result_header("listing", args.quick, describe_machine([])), "rounds": rounds, "results": results}
    )
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
