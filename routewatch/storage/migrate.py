"""Versioned schema migrations, in TimescaleDB or plain mode.

Migrations are plain SQL files in ``routewatch/storage/migrations/``:

* ``NNNN_name.sql`` runs in both modes;
* ``NNNN_name.plain.sql`` and ``NNNN_name.timescaledb.sql`` are the two
  variants of one version; a version has either one shared file or both.

:func:`migrate` applies the pending ones in version order, each in its own
transaction, and records each in ``schema_migrations``. The storage mode is
chosen once, on the first run, and recorded in ``routewatch_meta``; every later
run keeps it (a mismatch with what is asked for or available is logged, never
acted on), because moving a database between modes means moving its data.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable

from routewatch.storage.connection import Conn
from routewatch.storage.tables import META_TABLE, PROBE_RESULTS, SCHEMA_MIGRATIONS

log = logging.getLogger(__name__)

MODES = ("timescaledb", "plain")

# Session-level advisory lock held for a whole migrate() run, so that several
# processes starting at once (prober, API, a `db migrate`) apply each
# migration exactly once; the others wait, then find nothing to do. A fixed
# 64-bit key (ASCII "rwmigr" + 1) rather than hashtext() of a name: no
# collision with another application's 32-bit hashes on a shared database.
MIGRATION_LOCK_KEY = 0x7277_6D69_6772_0001

# routewatch_meta key under which the storage mode is recorded.
MODE_KEY = "storage_mode"
_READ_MODE = f"SELECT value FROM {META_TABLE} WHERE key = $1"

_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)(?:\.(?P<mode>plain|timescaledb))?\.sql$")

# Created before anything else, so that the state of the database can be read.
_BOOTSTRAP = f"""
CREATE TABLE IF NOT EXISTS {SCHEMA_MIGRATIONS} (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {META_TABLE} (
    key   text PRIMARY KEY,
    value text
);
"""


class MigrationError(Exception):
    """The database cannot be brought to the expected schema as it stands."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema version: its SQL per mode."""

    version: int
    name: str
    sql: Mapping[str, str]  # mode -> SQL text; both modes are always present

    @property
    def label(self) -> str:
        """``NNNN_name``, as the files are named."""
        return f"{self.version:04d}_{self.name}"


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """What one :func:`migrate` run found and did."""

    mode: str  # the recorded storage mode, "timescaledb" or "plain"
    version: int  # highest applied version after the run (0: none)
    applied: list[str] = field(default_factory=list)  # labels applied by this run, in order
    timescaledb_version: str | None = None  # installed extension version; None in plain mode


def load_migrations(directory: Traversable | None = None) -> list[Migration]:
    """Read and check the migration files, in version order.

    ``directory`` defaults to the packaged ``routewatch/storage/migrations``. Raises
    :class:`MigrationError` on a misnamed file, a version with only one mode
    variant, or one version under two names.
    """
    if directory is None:
        directory = resources.files(__package__).joinpath("migrations")
    found: dict[int, tuple[str, dict[str, str]]] = {}
    for entry in directory.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME.match(entry.name)
        if match is None:
            raise MigrationError(
                f"migration file {entry.name!r} is not named NNNN_name.sql or NNNN_name.<plain|timescaledb>.sql"
            )
        version, name = int(match["version"]), match["name"]
        modes = [match["mode"]] if match["mode"] else list(MODES)
        known_name, sql = found.setdefault(version, (name, {}))
        if known_name != name:
            raise MigrationError(f"migration {version:04d} has two names: {known_name!r} and {name!r}")
        for mode in modes:
            if mode in sql:
                raise MigrationError(f"migration {version:04d}_{name} has more than one file for {mode} mode")
            sql[mode] = entry.read_text(encoding="utf-8")
    migrations = []
    for version in sorted(found):
        name, sql = found[version]
        missing = [mode for mode in MODES if mode not in sql]
        if missing:
            raise MigrationError(
                f"migration {version:04d}_{name} has no {missing[0]} variant: add "
                f"{version:04d}_{name}.{missing[0]}.sql (it may be empty but for a comment)"
            )
        migrations.append(Migration(version, name, sql))
    return migrations


async def timescaledb_available(conn: Conn) -> bool:
    """Whether the server can run TimescaleDB: installed and preloaded."""
    installed = await conn.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
    if not installed:
        return False
    preload = await conn.fetchval("SELECT current_setting('shared_preload_libraries')")
    return "timescaledb" in (preload or "")


async def timescaledb_version(conn: Conn) -> str | None:
    """The TimescaleDB version installed in this database, or None."""
    version: str | None = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    return version


async def recorded_mode(conn: Conn) -> str | None:
    """The storage mode recorded by the first :func:`migrate`, or None before it."""
    if await conn.fetchval("SELECT to_regclass($1)", META_TABLE) is None:
        return None
    mode: str | None = await conn.fetchval(_READ_MODE, MODE_KEY)
    return mode


async def schema_version(conn: Conn) -> int:
    """The highest applied migration version; 0 before the first."""
    if await conn.fetchval("SELECT to_regclass($1)", SCHEMA_MIGRATIONS) is None:
        return 0
    version: int = await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {SCHEMA_MIGRATIONS}")
    return version


@dataclass(frozen=True, slots=True)
class PendingReport:
    """What :func:`migrate` would do, found without changing anything."""

    mode: str  # the recorded storage mode, or the one a first migrate would choose
    mode_recorded: bool  # False: no migrate has run yet, ``mode`` is the server's default
    version: int  # highest applied version now (0: none)
    pending: list[str] = field(default_factory=list)  # labels migrate would apply, in order


async def pending_migrations(conn: Conn, migrations: Sequence[Migration] | None = None) -> PendingReport:
    """Read which migrations :func:`migrate` would apply; writes nothing, takes no lock.

    The answer can go stale at once if another process migrates meanwhile; it
    is for an operator planning an upgrade, not for deciding anything.
    """
    known = list(migrations) if migrations is not None else load_migrations()
    recorded = await recorded_mode(conn)
    default = "timescaledb" if await timescaledb_available(conn) else "plain"
    mode = recorded or default
    done: set[int] = set()
    if await conn.fetchval("SELECT to_regclass($1)", SCHEMA_MIGRATIONS) is not None:
        done = {r["version"] for r in await conn.fetch(f"SELECT version FROM {SCHEMA_MIGRATIONS}")}
    pending = [m.label for m in sorted(known, key=lambda m: m.version) if m.version not in done]
    return PendingReport(mode=mode, mode_recorded=recorded is not None, version=max(done, default=0), pending=pending)


async def migrate(
    conn: Conn,
    *,
    mode: str | None = None,
    migrations: Sequence[Migration] | None = None,
) -> MigrationReport:
    """Bring the database to the latest schema version; return what was done.

    ``mode`` is used only by the first run on an empty database: None picks
    ``timescaledb`` where the server can run it, else ``plain``; ``plain`` may
    be forced on a TimescaleDB server. Later runs keep the recorded mode and
    log a WARNING when it differs from ``mode`` (or, with None, from what the
    server offers). ``migrations`` replaces the packaged files (tests).

    Each migration runs in its own transaction, so the call must not be made
    inside one. Concurrent calls serialise on :data:`MIGRATION_LOCK_KEY`;
    re-running is a no-op.
    """
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode must be one of {MODES} or None, not {mode!r}")
    if conn.is_in_transaction():
        raise MigrationError("migrate() runs each migration in its own transaction: call it outside one")
    pending_source = list(migrations) if migrations is not None else load_migrations()

    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        async with conn.transaction():
            await conn.execute(_BOOTSTRAP)
        chosen = await _settle_mode(conn, mode)
        done = {r["version"] for r in await conn.fetch(f"SELECT version FROM {SCHEMA_MIGRATIONS}")}
        applied: list[str] = []
        for migration in sorted(pending_source, key=lambda m: m.version):
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql[chosen])
                await conn.execute(
                    f"INSERT INTO {SCHEMA_MIGRATIONS} (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            done.add(migration.version)
            applied.append(migration.label)
            log.info("applied migration %s (%s mode)", migration.label, chosen)
        version = max(done, default=0)
        newest_known = max((m.version for m in pending_source), default=0)
        if version > newest_known:
            log.warning(
                "database schema version %d is newer than this routewatch knows (%d): "
                "a newer routewatch has migrated it",
                version,
                newest_known,
            )
        tsdb = await timescaledb_version(conn)
    finally:
        # A dead connection has lost the lock with its session already.
        if not conn.is_closed():
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return MigrationReport(mode=chosen, version=version, applied=applied, timescaledb_version=tsdb)


async def _settle_mode(conn: Conn, asked: str | None) -> str:
    """Return the mode to migrate in, recording it on the first run.

    Called with the migration lock held and the bootstrap tables in place.
    """
    available = await timescaledb_available(conn)
    default = "timescaledb" if available else "plain"
    recorded: str | None = await conn.fetchval(_READ_MODE, MODE_KEY)

    if recorded is None:
        if await conn.fetchval("SELECT to_regclass($1)", PROBE_RESULTS) is not None:
            raise MigrationError(
                f"{PROBE_RESULTS} exists but no storage mode is recorded: this database was set up "
                "by a routewatch from before versioned migrations; start on a new database "
                "(or move the data into one)"
            )
        chosen = asked or default
        if chosen == "timescaledb" and not available:
            raise MigrationError(
                "timescaledb mode was asked for, but this server cannot run TimescaleDB "
                "(it must be installed and listed in shared_preload_libraries)"
            )
        await conn.execute(f"INSERT INTO {META_TABLE} (key, value) VALUES ($1, $2)", MODE_KEY, chosen)
        log.info("storage mode recorded: %s", chosen)
        return chosen

    if recorded not in MODES:
        raise MigrationError(f"{META_TABLE} records an unknown storage mode {recorded!r}")
    if asked is not None and asked != recorded:
        log.warning(
            "%s mode was asked for, but this database was set up in %s mode; keeping %s "
            "(changing mode needs a new database)",
            asked,
            recorded,
            recorded,
        )
    elif asked is None and default != recorded:
        log.warning(
            "this server offers %s mode, but this database was set up in %s mode; keeping %s "
            "(changing mode needs a new database)",
            default,
            recorded,
            recorded,
        )
    if recorded == "timescaledb" and not available:
        raise MigrationError(
            "this database was set up in timescaledb mode, but the server cannot run TimescaleDB "
            "now (it must be installed and listed in shared_preload_libraries)"
        )
    return recorded
