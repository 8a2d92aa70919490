"""Writers for the stream faults that do more than cut a stream short.

Each one writes to a prepared response and notes every token it sends in the
ground-truth record, stamped just before the write that completed the token's event.
A client that hangs up ends them: aiohttp cancels the handler, or a write raises
ConnectionResetError, which the server swallows.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Sequence

from aiohttp import web

from routewatch.simulator.clock import sleep_until
from routewatch.simulator.groundtruth import ServedRequest
from routewatch.simulator.sse import KEEPALIVE, ChunkMaker, content_token

HUGE_TOKEN_BYTES = 1024
HUGE_YIELD_EVERY = 64  # tokens, i.e. 64 KiB
LONG_LINE_PIECE_BYTES = 64 * 1024
INVALID_UTF8 = b"\xff\xfe"


async def keepalive_forever(resp: web.StreamResponse, every_ns: int) -> None:
    """Keep-alive comments every `every_ns`, never anything else."""
    next_ns = time.perf_counter_ns()
    while True:
        next_ns += every_ns
        await sleep_until(next_ns)
        await resp.write(KEEPALIVE)


async def trickle(
    resp: web.StreamResponse, parts: Sequence[tuple[bytes, str | None]], gap_ns: int, record: ServedRequest
) -> None:
    """Write `parts` one byte at a time, a byte every `gap_ns`; a part with a kind is a token."""
    next_ns = time.perf_counter_ns()
    for data, kind in parts:
        sent_ns = next_ns
        for i in range(len(data)):
            await sleep_until(next_ns)
            sent_ns = time.perf_counter_ns()
            await resp.write(data[i : i + 1])
            next_ns += gap_ns
        if kind is not None:
            # A parser has the event only once its last byte is in.
            if not record.token_times_ns:
                record.injected_ttft_ms = (sent_ns - record.received_ns) / 1e6
            record.note_token(kind, sent_ns)


async def huge(
    resp: web.StreamResponse, chunks: ChunkMaker, total_bytes: int, record: ServedRequest, ttft_ms: float
) -> None:
    """`total_bytes` of content in 1 KiB tokens, as fast as the socket takes them; the first is due now."""
    text = "".join(content_token(i) for i in range(HUGE_TOKEN_BYTES))[:HUGE_TOKEN_BYTES]
    full, rest = divmod(total_bytes, HUGE_TOKEN_BYTES)
    # Encoded once: the loop only writes.
    whole = itertools.repeat(chunks.token_event("content", text), full)
    events = itertools.chain(whole, [chunks.token_event("content", text[:rest])] if rest else [])
    for k, data in enumerate(events):
        sent_ns = time.perf_counter_ns()
        await resp.write(data)
        if not record.token_times_ns:
            record.injected_ttft_ms = ttft_ms
        record.note_token("content", sent_ns)
        if k % HUGE_YIELD_EVERY == HUGE_YIELD_EVERY - 1:
            # write() yields only once the socket pushes back; a fast reader must not starve other streams.
            await asyncio.sleep(0)


def invalid_utf8_event(chunks: ChunkMaker, kind: str, text: str) -> bytes:
    """The token's event with bytes that are not UTF-8 at the end of its JSON string."""
    return chunks.raw_token_event(kind, json.dumps(text).encode()[:-1] + INVALID_UTF8 + b'"')


def long_line_event(chunks: ChunkMaker, kind: str, text: str, line_bytes: int) -> bytes:
    """The token's event, its text padded so that the `data:` line is `line_bytes` long."""
    framing = len(chunks.token_event(kind, text)) - len(b"\n\n")
    return chunks.token_event(kind, text + "x" * max(0, line_bytes - framing))


async def spread(resp: web.StreamResponse, data: bytes, over_ns: int) -> int:
    """Write `data` in pieces spread evenly over `over_ns`; returns when the last piece was written.

    The event's closing blank line stays in the last piece, so no line ends early.
    """
    body = data.removesuffix(b"\n\n")
    pieces = [body[i : i + LONG_LINE_PIECE_BYTES] for i in range(0, len(body), LONG_LINE_PIECE_BYTES)] or [b""]
    pieces[-1] += data[len(body) :]
    start_ns = time.perf_counter_ns()
    step_ns = over_ns // max(1, len(pieces) - 1)
    sent_ns = start_ns
    for i, piece in enumerate(pieces):
        await sleep_until(start_ns + i * step_ns)
        sent_ns = time.perf_counter_ns()
        await resp.write(piece)
    return sent_ns
