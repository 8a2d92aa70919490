"""A full disk under the spool: said once per episode, and every result still stored.

The disk really fills: a 256 KiB tmpfs mounted under the test's directory
(needs root or CAP_SYS_ADMIN; skipped with the reason otherwise), and,
without any privilege, a file size limit (RLIMIT_FSIZE, so writes fail with
EFBIG) in a child process. The database is the suite's real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from factories import probe_result
from writer_support import stored_ids, until

from routewatch.storage.schema import ensure_schema
from routewatch.storage.writer import BatchWriter

pytestmark = pytest.mark.system

DISK_FULL = "spool: disk full at"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, mounted for this test only."""
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a small file system to fill")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill(directory: Path) -> Path:
    """Write a file in ``directory`` until the file system has no room left."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def log_lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def test_full_disk_is_reported_once_per_episode_and_nothing_is_lost(
    pool: asyncpg.Pool, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with pool.acquire() as conn:
        await ensure_schema(conn)
    caplog.set_level(logging.INFO, logger="routewatch.delivery")
    spool_dir = small_disk / "spool"
    writer = BatchWriter(pool, spool_dir, flush_s=0.05)
    await writer.start()
    submitted = []

    async def probe(count: int) -> None:
        for _ in range(count):
            submitted.append(probe_result())
            await writer.submit(submitted[-1])
            await asyncio.sleep(0.01)  # spread over several flushes, as a schedule would
        await until("the results to be stored", lambda: writer.written == len(submitted))

    try:
        for episode in (1, 2):
            filler = fill(small_disk)
            await probe(30)
            assert len(log_lines(caplog, DISK_FULL)) == episode  # once per episode, not once per probe
            assert str(spool_dir) in log_lines(caplog, DISK_FULL)[-1]
            filler.unlink()
            unspooled = writer.unspooled
            await probe(5)
            assert writer.unspooled == unspooled  # journaled again
            assert len(log_lines(caplog, "spool: journaling again at")) == episode
        assert writer.unspooled >= 2 * 25  # a few may still fit in the segment's last page
        assert writer.failed is None and writer.dropped == 0
    finally:
        await writer.close()
    assert await stored_ids(pool) == {r.id for r in submitted}
    assert not log_lines(caplog, "database unavailable")


_CHILD = textwrap.dedent(
    """
    import asyncio, json, logging, resource, sys
    from pathlib import Path
    import asyncpg
    sys.path.insert(0, sys.argv[3])
    from factories import probe_result
    from writer_support import until
    from routewatch.storage.writer import BatchWriter

    async def main(dsn: str, spool_dir: Path) -> None:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        writer = BatchWriter(pool, spool_dir, flush_s=0.05)
        await writer.start()
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, hard))  # Python ignores SIGXFSZ: writes get EFBIG
        for _ in range(60):
            await writer.submit(probe_result())
        await until("stored", lambda: writer.written == 60)
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        for _ in range(5):
            await writer.submit(probe_result())
        await until("stored", lambda: writer.written == 65)
        await writer.close()
        await pool.close()
        print(json.dumps({"unspooled": writer.unspooled, "written": writer.written}))

    asyncio.run(main(sys.argv[1], Path(sys.argv[2])))
    """
)


async def test_file_size_limit_counts_as_disk_full(pool: asyncpg.Pool, db_dsn: str, tmp_path: Path) -> None:
    async with pool.acquire() as conn:
        await ensure_schema(conn)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHILD,
        db_dsn,
        str(tmp_path / "spool"),
        str(Path(__file__).parent),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    out, err = await asyncio.wait_for(child.communicate(), 60)
    log = err.decode()
    assert child.returncode == 0, log
    counts = json.loads(out)
    assert counts["written"] == 65 and counts["unspooled"] > 0
    assert log.count(DISK_FULL) == 1, log
    assert "File too large" in log
    assert log.count("spool: journaling again at") == 1, log
    assert "database unavailable" not in log
    assert len(await stored_ids(pool)) == 65
