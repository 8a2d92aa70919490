"""Where probe results go, and where pushed ones come in: both ends of the push path, wired.

A prober hands each result to a sink. :func:`result_sink` chooses it from the
configuration, for every command that probes:

* ``ingest: {url, token_env}`` set: a push writer
  (``routewatch.delivery.push``), which sends batches to a central server's
  ``POST /v1/ingest`` and needs no database;
* otherwise the database's :class:`~routewatch.storage.writer.BatchWriter`
  (:func:`database_sink`), on a pool the caller opened.

Both spool every result first and replay the spool after an outage or a crash.

On the central server, :func:`ingest_receiver` builds what the ingest
endpoint needs from ``api.ingest_tokens``: each region's token, read from
the variable its entry names, and the same store the batch writer uses
(and, for ``POST /v1/ingest/catalog``, the catalog's ``record_listing``).
:func:`ingest_tokens` checks the tokens before anything starts. A pushing
prober's model list reads go the other way through :func:`catalog_pusher`.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

import asyncpg
from pydantic import SecretStr

from routewatch.aggregator.publish.ingest import IngestReceiver, IngestTokens
from routewatch.config import Config, StorageConfig
from routewatch.config.settings import ENV_ADMIN_TOKEN, Settings
from routewatch.delivery.catalog_push import CatalogPusher, catalog_url
from routewatch.delivery.push import push_writer
from routewatch.delivery.spooled import SpooledDelivery
from routewatch.results.probe_result import ProbeResult
from routewatch.storage import catalog_queries
from routewatch.storage.catalog_queries import ListedModel
from routewatch.storage.connection import Conn
from routewatch.storage.housekeeping import PartitionCache
from routewatch.storage.writer import BatchWriter, Prepare, store_results

# A bearer token shorter than this can be guessed; `openssl rand -hex 16` makes a good one.
MIN_TOKEN_CHARS = 16


class IngestSetupError(ValueError):
    """An ingest token is missing or unusable; the message names the variable, never its value."""


@dataclass(frozen=True)
class DatabaseTarget:
    """What the database's writer needs: the pool, the partition cache and the storage mode."""

    pool: asyncpg.Pool
    partitions: PartitionCache
    mode: str  # "plain" or "timescaledb", from the migrations report


def needs_database(config: Config) -> bool:
    """Whether a prober with ``config`` writes to a database (else it pushes and needs none)."""
    return config.ingest is None


def _partition_prepare(target: DatabaseTarget) -> Prepare:
    """Runs before each batch: the plain mode's day partitions for its results."""

    async def prepare(conn: Conn, results: list[ProbeResult]) -> None:
        await target.partitions.ensure_for(conn, target.mode, (r.started_at for r in results))

    return prepare


def _spool_max_bytes(storage: StorageConfig) -> int:
    return storage.spool_max_mb * 1024 * 1024


@asynccontextmanager
async def database_sink(target: DatabaseTarget, spool_dir: Path, storage: StorageConfig) -> AsyncIterator[BatchWriter]:
    """The spool-backed database writer; at exit it stores what is queued (what it cannot stays in the spool)."""
    writer = BatchWriter(
        target.pool, spool_dir, prepare=_partition_prepare(target), spool_max_bytes=_spool_max_bytes(storage)
    )
    await writer.start()
    try:
        yield writer
    finally:
        await writer.close()


def _token_problem(value: str | None) -> str | None:
    """Why ``value`` cannot serve as a bearer token (never showing it); None when it can."""
    if value is None or not value.strip():
        return "is not set"
    if not value.isascii() or not value.isprintable() or any(c.isspace() for c in value):
        return "must be printable ASCII without spaces"
    if len(value) < MIN_TOKEN_CHARS:
        return f"is shorter than {MIN_TOKEN_CHARS} characters; use a random one, e.g. from `openssl rand -hex 16`"
    return None


def push_token(config: Config, settings: Settings) -> str:
    """The token of ``ingest.token_env``, checked; IngestSetupError when it is unusable."""
    assert config.ingest is not None
    name = config.ingest.token_env
    value = settings.router_keys.get(name)  # the environment as read at start, less routewatch's own settings
    problem = _token_problem(value)
    if problem is not None or value is None:
        raise IngestSetupError(f"ingest.token_env: ${name} {problem}")
    return value


def _ca_file(config: Config) -> Path | None:
    """``ingest.ca_file`` as a path, checked to hold certificates; IngestSetupError if not."""
    assert config.ingest is not None
    if config.ingest.ca_file is None:
        return None
    path = Path(config.ingest.ca_file).expanduser()
    try:
        ssl.create_default_context(cafile=path)
    except OSError as exc:  # ssl.SSLError is one: not PEM, no certificate in it
        raise IngestSetupError(f"ingest.ca_file: cannot use {path} ({exc.strerror or exc})") from None
    return path


@asynccontextmanager
async def push_sink(config: Config, settings: Settings, spool_dir: Path) -> AsyncIterator[SpooledDelivery]:
    """The push writer of ``config.ingest``; at exit it sends what is queued (what it cannot stays in the spool)."""
    assert config.ingest is not None
    writer = push_writer(
        config.ingest.url,
        push_token(config, settings),
        spool_dir,
        token_env=config.ingest.token_env,
        spool_max_bytes=_spool_max_bytes(config.storage),
        ca_file=_ca_file(config),
    )
    await writer.start()
    try:
        yield writer
    finally:
        await writer.close()


def result_sink(
    config: Config, settings: Settings, spool_dir: Path, database: DatabaseTarget | None
) -> AbstractAsyncContextManager[SpooledDelivery]:
    """The sink a prober with ``config`` hands its results to: the push writer when ``ingest`` is set,
    else the database writer on ``database`` (which must then be given; see :func:`needs_database`)."""
    if config.ingest is not None:
        return push_sink(config, settings, spool_dir)
    if database is None:
        raise ValueError("results are stored in the database (no ingest in the config), but no database was given")
    return database_sink(database, spool_dir, config.storage)


def ingest_tokens(config: Config, settings: Settings) -> dict[str, SecretStr]:
    """Each ``api.ingest_tokens`` region's token, checked; IngestSetupError naming every unusable one.

    A token must be set, long enough, distinct from the other regions' (it
    decides the region) and from the admin token (a region's prober must not
    hold the admin's key).
    """
    admin = settings.admin_token.get_secret_value().strip() if settings.admin_token is not None else None
    tokens: dict[str, SecretStr] = {}
    owner: dict[str, int] = {}
    problems = []
    for i, entry in enumerate(config.api.ingest_tokens):
        where = f"api.ingest_tokens[{i}] (region {entry.region}): ${entry.token_env}"
        value = settings.router_keys.get(entry.token_env)
        problem = _token_problem(value)
        if problem is None and value is not None:
            if value == admin:
                problem = f"holds the same token as {ENV_ADMIN_TOKEN}; give each its own"
            elif value in owner:
                problem = f"holds the same token as api.ingest_tokens[{owner[value]}]; give each region its own"
        if problem is not None or value is None:
            problems.append(f"{where} {problem}")
            continue
        owner[value] = i
        tokens[entry.region] = SecretStr(value)
    if problems:
        raise IngestSetupError("; ".join(problems))
    return tokens


def ingest_receiver(
    config: Config, settings: Settings, database: DatabaseTarget, retention: timedelta
) -> IngestReceiver | None:
    """What ``POST /v1/ingest`` needs on this server; None when ``api.ingest_tokens`` names no region."""
    tokens = ingest_tokens(config, settings)
    if not tokens:
        return None
    store = partial(store_results, database.pool, prepare=_partition_prepare(database))
    routers = {r.name: tuple(r.models) for r in config.routers}
    return IngestReceiver(
        IngestTokens(tokens),
        store,
        retention,
        catalog_store=partial(record_pushed_listing, database.pool),
        routers=routers,
    )


async def record_pushed_listing(
    pool: asyncpg.Pool, router: str, seen: datetime, listed: list[ListedModel], complete: bool, keep: list[str]
) -> int:
    """A pushed list read into the catalog, as a prober with a database records its own."""
    async with pool.acquire() as conn:
        return await catalog_queries.record_listing(conn, router, seen, listed, complete=complete, keep=keep)


@asynccontextmanager
async def catalog_pusher(config: Config, settings: Settings) -> AsyncIterator[CatalogPusher | None]:
    """The sender of a pushing prober's model lists to ``{ingest.url}/catalog``; None without ``ingest``."""
    if config.ingest is None:
        yield None
        return
    pusher = CatalogPusher(
        catalog_url(config.ingest.url),
        push_token(config, settings),
        token_env=config.ingest.token_env,
        ca_file=_ca_file(config),
    )
    await pusher.open()
    try:
        yield pusher
    finally:
        await pusher.close()
