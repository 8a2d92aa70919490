"""Reading from a streaming replica: ``ROUTEWATCH_DATABASE_READ_URL``, with real servers and processes.

A primary of the test's own and an asynchronous streaming replica of it made
by ``pg_basebackup`` (``streaming_replica.py``). What is checked:

* a standby's position in the rollup, taken on the hot standby while a
  transaction of the primary is still running, does not count that
  transaction as seen (PostgreSQL's ``pg_current_snapshot()`` on a standby
  lists no running transaction);
* a ``routewatch serve`` standby reading from the replica publishes the same
  figures as the leader on the primary, within one refresh, with probes taken
  by a real prober; its ``/metrics`` say it reads from the replica and how far
  behind it is;
* the replica stopped, the standby reads from the primary, still publishes
  what the leader does, and the gauge says so; the replica back, it reads from
  it again;
* ``routewatch db status`` names the primary's standby with its sync state,
  and the replica's lag (the read URL's, and run against the replica itself);
* a replica that vanishes (its processes stopped with SIGSTOP: connections
  stay open and nothing answers) ends a read in flight at the pool's command
  timeout, and reads go to the primary until it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from hostile.harness import ROUTEWATCH, Process, _children, clean_env, fetch_value, run_async, strict_json, wait_until
from rollup_diagnosis import rollup_diagnosis
from streaming_replica import make_replica
from test_hist_changes import put, since, where
from test_replica_failover import MODELS, _config, _profiles

from routewatch.parts import Database, database_pool, read_pool
from routewatch.postgres.local_server import LocalPostgres
from routewatch.simulator.process import SimulatorProcess
from routewatch.storage.migrate import migrate
from routewatch.storage.read_pools import PRIMARY, REPLICA, ReadPools

pytestmark = pytest.mark.system

REFRESH_S = 1.0  # _config's aggregator.refresh
CHECK_S = 5.0  # storage.read_pools.CHECK_EVERY_S: how often a standby looks at the replica


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[LocalPostgres, LocalPostgres]]:
    """A primary of this test's own and its asynchronous streaming replica, removed after the test."""
    base = Path("/tmp") / f"rw-readurl-{os.getpid()}-{tmp_path.name}"
    primary = LocalPostgres(base / "primary")  # TimescaleDB preloaded where installed, as in production
    replicas: list[LocalPostgres] = []
    try:
        primary.start()
        # Asynchronous: a synchronous standby that stops would hold every commit of the primary.
        replicas.append(run_async(lambda: make_replica(primary, base / "replica", synchronous=False)))
        yield primary, replicas[0]
    finally:
        for replica in replicas:
            replica.stop()
        primary.stop()
        shutil.rmtree(base, ignore_errors=True)


async def _replayed(replica: LocalPostgres, primary: LocalPostgres) -> None:
    """Wait until the replica has replayed everything the primary has written so far."""
    p = await asyncpg.connect(primary.dsn)
    r = await asyncpg.connect(replica.dsn)
    try:
        target = await p.fetchval("SELECT pg_current_wal_lsn()")
        for _ in range(200):
            if await r.fetchval("SELECT pg_last_wal_replay_lsn() >= $1", target):
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the replica did not replay the primary's WAL within 10 s")
    finally:
        await p.close()
        await r.close()


def test_a_position_taken_on_a_hot_standby_does_not_see_a_transaction_still_running(
    servers: tuple[LocalPostgres, LocalPostgres],
) -> None:
    primary, replica = servers

    async def go() -> tuple[list[datetime] | None, list[datetime] | None]:
        writer = await asyncpg.connect(primary.dsn)
        slow = await asyncpg.connect(primary.dsn)
        standby = await asyncpg.connect(replica.dsn)
        try:
            await migrate(writer, mode="plain")
            # A leader's refresh still running (hour 0) while a later transaction commits (hour 1).
            tx = slow.transaction()
            await tx.start()
            await put(slow, 0)
            await put(writer, 1)
            await _replayed(replica, primary)
            seen = await where(standby)
            await tx.commit()
            await _replayed(replica, primary)
            return await since(standby, seen), await since(writer, seen)
        finally:
            for conn in (writer, slow, standby):
                await conn.close()

    on_replica, on_primary = run_async(go)
    hour0 = datetime(2030, 5, 1, 10, tzinfo=UTC)
    # The running transaction's hour is listed once it has committed; the hour of the
    # transaction it saw may be listed again, which only repeats work.
    assert on_replica is not None and hour0 in on_replica
    # On the primary (a standby that takes the lead) a replica's position is not compared at all:
    # another server, the sums are read again.
    assert on_primary is None
    assert set(on_replica) <= {hour0, hour0 + timedelta(hours=1)}


# ---------------------------------------------------------------- serve on a replica


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        body: bytes = resp.read()
        return body


_TIMES = {"updated_at", "window_start", "window_end"}


def _without_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if k not in _TIMES}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def figures(api: str) -> str:
    """``/v1/models`` as published, without its timestamps: the figures alone, comparable across processes."""
    return json.dumps(_without_times(strict_json(_get(f"{api}/v1/models"))), sort_keys=True)


def published(api: str) -> int:
    """Probes counted in the published 7-day figures, summed over the models: those in the figures
    (``attempted``) and those left out for the prober's loop lag (``excluded_prober_overloaded``)."""
    body = strict_json(_get(f"{api}/v1/models"))
    return sum(
        int(m["stats"]["samples"]["attempted"]) + int(m["stats"]["samples"]["excluded_prober_overloaded"])
        for m in body["models"]
    )


def metric(api: str, name: str) -> float | None:
    """One unlabelled sample of ``/metrics``, or None when the family is absent."""
    found = re.search(rf"^{name} (\S+)$", _get(f"{api}/metrics").decode(), re.MULTILINE)
    return float(found.group(1)) if found else None


def _client_connections(dsn: str) -> int:
    """Client sessions on the server at ``dsn`` other than the one asking."""
    n = fetch_value(
        dsn, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
    )
    return int(n)


@pytest.mark.timeout(300)
def test_a_standby_serves_from_the_replica_falls_back_to_the_primary_and_returns(
    servers: tuple[LocalPostgres, LocalPostgres], tmp_path: Path
) -> None:
    primary, replica = servers
    replica_port = replica.port
    processes: list[Process] = []
    sim = None
    try:
        profiles = tmp_path / "profiles.yaml"
        profiles.write_text(yaml.safe_dump(_profiles()))
        sim = SimulatorProcess(profiles)
        sim.start()
        prober_config = tmp_path / "probes-eu.yaml"
        prober_config.write_text(yaml.safe_dump(_config("eu")))
        serve_config = tmp_path / "serve.yaml"
        serve_config.write_text(yaml.safe_dump(_config(None)))
        on_primary = clean_env(ROUTEWATCH_DATABASE_URL=primary.dsn)
        on_replica = clean_env(ROUTEWATCH_DATABASE_URL=primary.dsn, ROUTEWATCH_DATABASE_READ_URL=replica.dsn)

        def serve(name: str, env: dict[str, str]) -> tuple[Process, str]:
            argv = [*ROUTEWATCH, "serve", "--config", str(serve_config), "--data-dir", str(tmp_path / name)]
            process = Process(argv, env, tmp_path / f"serve-{name}.log")
            processes.append(process)
            return process, process.wait_for(r"API:\s+(http://\S+)").group(1)

        def probing(run: int) -> Process:
            argv = [*ROUTEWATCH, "probe", "--config", str(prober_config), "--data-dir", str(tmp_path / "eu")]
            process = Process([*argv, "--simulator-url", sim.base_url], on_primary, tmp_path / f"probe-{run}.log")
            processes.append(process)
            return process

        leader, leader_api = serve("leader", on_primary)  # first: it takes the refresher lock
        assert re.search(r"stats:\s+leader", leader.output())
        standby, standby_api = serve("standby", on_replica)
        assert re.search(r"stats:\s+standby", standby.output())
        assert "reads from the replica at" in standby.output()

        def stored() -> int:
            return int(fetch_value(primary.dsn, "SELECT count(*) FROM probe_results"))

        def same_figures_after_probing(run: int, at_least: int) -> float:
            """Probe until ``at_least`` probes are stored, stop; once the leader publishes every stored
            probe and its figures stay put, the seconds from the leader first publishing them to the
            standby first publishing them."""
            prober = probing(run)
            wait_until(lambda: stored() >= at_least, 60, f"{at_least} probes stored")
            assert prober.stop() == 0, prober.output()[-3000:]
            total = stored()
            wait_until(
                lambda: published(leader_api) == total,
                15,
                lambda: (
                    f"the leader publishing {total} probes, not {published(leader_api)}" + rollup_diagnosis(primary.dsn)
                ),
            )
            first_seen: dict[tuple[str, str], float] = {}
            final = ""
            settled = time.perf_counter() + 3 * REFRESH_S
            deadline = time.perf_counter() + 30
            while time.perf_counter() < deadline:
                now = time.perf_counter()
                shown = {name: figures(api) for name, api in (("leader", leader_api), ("standby", standby_api))}
                for name, body in shown.items():
                    first_seen.setdefault((name, body), now)
                if shown["leader"] != final:
                    final, settled = shown["leader"], now + 3 * REFRESH_S
                elif now >= settled and ("standby", final) in first_seen:
                    break
                time.sleep(0.05)
            assert ("standby", final) in first_seen, f"the standby never published the leader's {final}"
            return first_seen[("standby", final)] - first_seen[("leader", final)]

        # 1. Reading from the replica: the leader's figures within one refresh.
        behind = same_figures_after_probing(1, 3 * len(MODELS))
        assert behind <= 2 * REFRESH_S
        assert metric(standby_api, "routewatch_read_replica_in_use") == 1.0
        lag = metric(standby_api, "routewatch_read_replica_lag_seconds")
        assert lag is not None and 0.0 <= lag < 5.0
        assert _client_connections(replica.dsn) >= 1  # the standby's pool is there
        assert metric(leader_api, "routewatch_read_replica_in_use") is None  # no read URL: no family
        with urllib.request.urlopen(f"{standby_api}/healthz", timeout=5) as resp:
            assert json.loads(resp.read())["role"] == "standby"
        # The primary has a standby, none synchronous: the leader says so, once.
        assert leader.output().count("none is synchronous") == 1, leader.output()[-3000:]

        # 2. The replica stopped: the standby reads from the primary and publishes what the leader does.
        replica.stop()
        stopped = time.perf_counter()
        wait_until(lambda: metric(standby_api, "routewatch_read_replica_in_use") == 0.0, CHECK_S + 15, "falling back")
        fell_back = time.perf_counter() - stopped
        assert metric(standby_api, "routewatch_read_replica_lag_seconds") is None  # unknown, not 0
        before = stored()
        behind_on_primary = same_figures_after_probing(2, before + 2 * len(MODELS))
        assert published(standby_api) > before

        # 3. The replica back on its port: the standby reads from it again, and still agrees.
        again = LocalPostgres(
            replica.data_dir, bin_dir=replica.bin_dir, timescaledb=replica.has_timescaledb, port=replica_port
        )
        again.start()
        try:
            back = wait_until(
                lambda: metric(standby_api, "routewatch_read_replica_in_use") == 1.0, CHECK_S + 15, "returning"
            )
            behind_again = same_figures_after_probing(3, stored() + 2 * len(MODELS))
            assert metric(standby_api, "routewatch_read_replica_lag_seconds") is not None
            log = standby.output()
            assert log.count("the read replica cannot be used") == 1, log[-3000:]
            assert log.count("the read replica answers again") == 1, log[-3000:]
        finally:
            again.stop()
        print(
            f"read replica: standby {behind:.2f} s behind the leader's figures on the replica,"
            f" {behind_on_primary:.2f} s on the primary after falling back ({fell_back:.1f} s after the replica"
            f" stopped), {behind_again:.2f} s back on the replica ({back:.1f} s after it restarted); lag {lag:.3f} s"
        )
    finally:
        for process in processes:
            process.stop()
        if sim is not None:
            sim.stop()
        password = (primary.data_dir / "pg-password").read_text().strip()
        for process in processes:
            assert "Traceback" not in process.output(), process.output()[-3000:]
            assert password not in process.output()


# ---------------------------------------------------------------- a replica that vanishes


def _freeze(server: LocalPostgres, sig: signal.Signals) -> None:
    """Send ``sig`` to the server's postmaster and every process it started: SIGSTOP makes the
    host look vanished (connections stay open, nothing answers), SIGCONT brings it back."""
    pid = server.pid
    assert pid is not None
    for each in [pid, *_children(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, sig)


def test_a_read_in_flight_on_a_vanished_replica_ends_and_reads_go_to_the_primary(
    servers: tuple[LocalPostgres, LocalPostgres],
) -> None:
    primary, replica = servers
    limit_s = 2.0  # the pool's command timeout, shortened from COMMAND_TIMEOUT_S for the test

    async def go() -> tuple[float, float]:
        database = Database(primary.dsn, "the test's primary", read_dsn=replica.dsn)
        async with (
            database_pool(database, "serve") as primary_pool,
            read_pool(database, "serve", command_timeout_s=limit_s) as replica_pool,
        ):
            reads = ReadPools(primary_pool, replica_pool, acquire_timeout_s=limit_s)
            await reads.check()
            assert reads.server == REPLICA and reads.lag_s is not None
            started = 0.0
            try:
                with pytest.raises(TimeoutError):
                    async with reads.acquire() as read:
                        assert read.server == REPLICA
                        in_flight = asyncio.ensure_future(read.conn.fetchval("SELECT 1 FROM pg_sleep(0.5)"))
                        await asyncio.sleep(0.1)
                        _freeze(replica, signal.SIGSTOP)
                        started = time.perf_counter()
                        await in_flight
                ended = time.perf_counter() - started
                assert reads.server == PRIMARY and reads.lag_s is None
                async with reads.acquire() as read:  # at once, on the primary
                    assert read.server == PRIMARY
                    assert await read.conn.fetchval("SELECT NOT pg_is_in_recovery()")
                t0 = time.perf_counter()
                await reads.check()  # the replica still answers nothing: out of use, within the limit
                checked = time.perf_counter() - t0
                assert reads.server == PRIMARY
            finally:
                _freeze(replica, signal.SIGCONT)
            await reads.check()
            assert reads.server == REPLICA and reads.switches == 2
            return ended, checked

    ended, checked = run_async(go)
    # The query ends at the command timeout; giving the connection back waits for the cancel
    # request, which a frozen server never answers either, up to the same limit again.
    assert limit_s - 0.2 <= ended <= 2 * limit_s + 1.0
    assert checked <= limit_s + 1.0
    print(f"vanished replica: the read in flight ended after {ended:.1f} s (limit {limit_s:g} s)")


def test_db_status_describes_the_primarys_standbys_and_the_replicas_lag(
    servers: tuple[LocalPostgres, LocalPostgres], tmp_path: Path
) -> None:
    primary, replica = servers

    def db_status(**env: str) -> str:
        done = subprocess.run(
            [*ROUTEWATCH, "db", "status", "--data-dir", str(tmp_path)],
            env=clean_env(**env),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return done.stdout + done.stderr

    on_primary = db_status(ROUTEWATCH_DATABASE_URL=primary.dsn, ROUTEWATCH_DATABASE_READ_URL=replica.dsn)
    standby = re.search(r"^replication: +a primary; standbys: (.+)$", on_primary, re.MULTILINE)
    assert standby is not None, on_primary
    assert "(streaming, async, " in standby.group(1)
    assert standby.group(1).endswith("none is synchronous: a failover may lose commits the primary acknowledged")
    read = re.search(r"^read replica: +postgresql://\S+ \(from ROUTEWATCH_DATABASE_READ_URL\): (.+)$", on_primary, re.M)
    assert read is not None, on_primary
    assert re.fullmatch(r"a replica, \d+\.\d s behind its primary \(WAL receiver: streaming\)", read.group(1))

    on_replica = db_status(ROUTEWATCH_DATABASE_URL=replica.dsn)
    assert re.search(r"^replication: +a replica, \d+\.\d s behind its primary", on_replica, re.MULTILINE), on_replica
    assert "read replica:" not in on_replica

    replica.stop()
    unreachable = db_status(ROUTEWATCH_DATABASE_URL=primary.dsn, ROUTEWATCH_DATABASE_READ_URL=replica.dsn)
    assert re.search(r"^read replica: .*: cannot be reached \(\w+\)$", unreachable, re.MULTILINE), unreachable
    password = (primary.data_dir / "pg-password").read_text().strip()
    for text in (on_primary, on_replica, unreachable):
        assert password not in text
