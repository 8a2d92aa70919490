"""``routewatch db migrate`` / ``db status`` as a user runs them, and the spool line."""

from __future__ import annotations

import asyncio
import fcntl
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from factories import probe_result

from routewatch.db_command import spool_backlog, spool_backlogs
from routewatch.delivery.spool import Spool
from routewatch.storage.migrate import load_migrations, migrate


def _cli(args: list[str], dsn: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEWATCH_")}
    env["ROUTEWATCH_DATABASE_URL"] = dsn
    return subprocess.run(
        [sys.executable, "-m", "routewatch.cli", *args, "--data-dir", str(data_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.system
def test_migrate_then_status(db_dsn: str, db_mode: str, tmp_path: Path) -> None:
    first = _cli(["db", "migrate"], db_dsn, tmp_path)
    assert first.returncode == 0, first.stderr
    assert f"storage mode: {db_mode}" in first.stdout
    assert (
        "applied: 0001_probe_results, 0002_rollup_hourly, 0003_hist_rollup, 0004_stats_history, 0005_status, 0006_ingest_done,"
        " 0007_shard_leases, 0008_hist_changes, 0009_hour_percentiles" in first.stdout
    )
    again = _cli(["db", "migrate"], db_dsn, tmp_path)
    assert "applied: nothing to apply" in again.stdout

    status = _cli(["db", "status"], db_dsn, tmp_path)
    assert status.returncode == 0, status.stderr
    lines = dict(line.split(":", 1) for line in status.stdout.splitlines())
    assert lines["storage mode"].strip() == db_mode
    assert lines["schema version"].strip() == str(load_migrations()[-1].version)
    assert lines["notifications"].strip() == "0 pending, 0 sent, 0 dead (given up)"
    assert lines["probe results"].strip().startswith("0 rows")
    assert lines["spool backlog"].strip() == "empty"
    password = db_dsn.split(":")[2].split("@")[0]
    assert password not in status.stdout + status.stderr


@pytest.mark.unit
def test_spool_backlog_counts_unstored_results(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    assert spool_backlog(spool_dir) == "empty"
    with Spool(spool_dir) as spool:
        spool.append([probe_result(started_at=datetime.now(UTC) - timedelta(seconds=i)) for i in range(3)])
    assert spool_backlog(spool_dir).startswith("3 results waiting to be stored")
    # While a writer holds the spool, it is described without being opened.
    with open(spool_dir / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert "in use by a running routewatch" in spool_backlog(spool_dir)


@pytest.mark.unit
def test_spool_backlogs_name_every_prober_workers_spool(tmp_path: Path) -> None:
    assert spool_backlogs(tmp_path) == "empty"
    for name, count in (("spool-worker-1", 2), ("spool-worker-2", 0), ("spool-worker-3", 4)):
        with Spool(tmp_path / name) as spool:
            spool.append([probe_result() for _ in range(count)])
    text = spool_backlogs(tmp_path)
    assert text.startswith("spool-worker-1: 2 results waiting to be stored")
    assert "; spool-worker-3: 4 results waiting to be stored" in text
    assert "; spool-worker-2: nothing waiting" in text


async def _migrate_up_to(dsn: str, version: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn, mode="plain", migrations=[m for m in load_migrations() if m.version <= version])
    finally:
        await conn.close()


async def _tables(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {r["tablename"] for r in rows}


@pytest.mark.system
async def test_migrate_dry_run_lists_pending_and_changes_nothing(db_dsn: str, tmp_path: Path) -> None:
    labels = [m.label for m in load_migrations()]

    empty = await asyncio.to_thread(_cli, ["db", "migrate", "--dry-run"], db_dsn, tmp_path)
    assert empty.returncode == 0, empty.stderr
    assert "not recorded yet" in empty.stdout
    assert "schema version: 0" in empty.stdout
    assert f"would apply: {', '.join(labels)}" in empty.stdout
    assert await _tables(db_dsn) == set(), "a dry run on an empty database created something"

    # A database an older release left at version 8: the two newer ones are pending.
    await _migrate_up_to(db_dsn, 8)
    before = await _tables(db_dsn)
    older = await asyncio.to_thread(_cli, ["db", "migrate", "--dry-run"], db_dsn, tmp_path)
    assert older.returncode == 0, older.stderr
    assert "storage mode: plain (recorded)" in older.stdout
    assert "schema version: 8" in older.stdout
    assert f"would apply: {', '.join(labels[8:])}" in older.stdout
    assert "dry run: nothing was changed" in older.stdout
    assert await _tables(db_dsn) == before

    applied = await asyncio.to_thread(_cli, ["db", "migrate"], db_dsn, tmp_path)
    assert f"applied: {', '.join(labels[8:])}" in applied.stdout
    done = await asyncio.to_thread(_cli, ["db", "migrate", "--dry-run"], db_dsn, tmp_path)
    assert "would apply: nothing to apply" in done.stdout


@pytest.mark.system
def test_dry_run_is_refused_for_status(db_dsn: str, tmp_path: Path) -> None:
    refused = _cli(["db", "status", "--dry-run"], db_dsn, tmp_path)
    assert refused.returncode == 2
    assert "--dry-run applies to `db migrate` only" in refused.stderr
    assert "Traceback" not in refused.stderr
