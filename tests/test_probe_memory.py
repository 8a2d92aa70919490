"""A probe's memory and loop time stay bounded whatever the size of the answer.

The probe runs in a fresh process (tests/probe_memory_child.py) that
measures its own peak RSS, so nothing else in the test run blurs the figure;
the router runs here, on loopback, and sends more than the probe accepts.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hostile_router import HostileRouter, Reply, finish, healthy_body, running_router, sse, token

from routewatch.probe.chat_stream import MAX_RESPONSE_BYTES
from routewatch.probe.sse import MAX_EVENT_BYTES

pytestmark = pytest.mark.system

CHILD = Path(__file__).with_name("probe_memory_child.py")
# The bound the probe documents (chat_stream's module docstring) is well
# under this; the old whole-text token estimate grew by over 200 MiB.
MAX_GROWTH_MIB = 64
# Other probes' timings suffer from any stall of the shared loop.
MAX_STALL_MS = 200
OVER_LIMIT = MAX_RESPONSE_BYTES + (1 << 20)


def event(content: str) -> bytes:
    return b"data: " + json.dumps({"choices": [{"delta": {"content": content}}]}).encode() + b"\n\n"


def repeated(one: bytes, total: int) -> bytes:
    return one * (total // len(one) + 1)


def widest_event() -> bytes:
    """The valid chunk that decodes to the most Python objects the event limit lets through."""
    n = (MAX_EVENT_BYTES - 100) // 3
    return b'{"choices": [' + b",".join([b"{}"] * n) + b"]}"


SCENARIOS = {
    # ~1 KiB of prose per event: many words, the old estimate's worst case.
    "words": repeated(event(("lorem ipsum dolor sit amet, 12345 consectetur; " * 22)[:1024]), OVER_LIMIT),
    # The most token events the byte limit allows: one word each.
    "tiny": repeated(event(" a"), OVER_LIMIT),
    # One line that never ends.
    "one-line": b"data: " + b"x" * OVER_LIMIT,
    # A chunk as wide as the event limit allows, between two good ones.
    "wide-json": sse(token(" one"), widest_event(), finish()),
}


@pytest.fixture
async def router() -> AsyncIterator[HostileRouter]:
    async for r in running_router():
        r.replies = {name: Reply(body=body) for name, body in SCENARIOS.items()}
        r.replies["warmup"] = Reply(body=healthy_body())
        yield r


@pytest.mark.alone  # loop stalls are bounded to the millisecond
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the peak RSS")
async def test_huge_answers_keep_memory_and_loop_stalls_bounded(router: HostileRouter) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        router.base_url,
        *SCENARIOS,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), timeout=60)
    assert child.returncode == 0, err.decode()
    reports = {r["model"]: r for r in map(json.loads, out.decode().splitlines())}

    assert set(reports) == set(SCENARIOS)
    for report in reports.values():
        assert report["growth_mib"] < MAX_GROWTH_MIB, report
        assert report["max_hold_ms"] < MAX_STALL_MS, report
    assert reports["words"]["error_detail"] == "answer larger than 16 MiB"
    assert reports["tiny"]["error_detail"] == "answer larger than 16 MiB"
    assert "longer than" in reports["one-line"]["error_detail"]
    assert reports["wide-json"]["error_class"] is None and reports["wide-json"]["output_tokens"] == 3
    # The answer was still counted, all of it that was read.
    assert reports["words"]["output_tokens"] > 3_000_000
    assert reports["tiny"]["output_tokens"] == reports["tiny"]["chunks"] > 300_000
