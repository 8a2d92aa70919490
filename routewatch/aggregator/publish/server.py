"""The API's listening sockets and the limits that keep hostile clients from holding them.

Two jobs:

* :func:`bind_listeners` binds the API address *before* anything else starts,
  so a taken port is reported at once (with the process holding it, where the
  OS tells) instead of after the database was started and migrated. The bound
  sockets are then served by :func:`start_api`, so nothing can take the port
  in between.
* :func:`start_api` serves an aiohttp application on those sockets with
  bounds a plain ``TCPSite`` lacks: a connection must deliver a complete
  request head within ``head_timeout_s`` of connecting (or of its previous
  response) or it is closed, an unread request body is drained for at most
  ``body_timeout_s``, and at most ``max_connections`` connections are open at
  once; beyond that a new connection is answered ``503`` and closed.

The limits are module constants (:class:`ApiLimits` defaults), not settings
of probes.yaml.
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from routewatch.aggregator.publish.http_errors import JSON_TYPE, dumps, error_payload

ENV_API_PORT = "ROUTEWATCH_API_PORT"

# A client has this long from connecting (or from its previous response on a
# keep-alive connection) to send a whole request head; an idle keep-alive
# connection is closed after the same time.
HEAD_TIMEOUT_S = 10.0
# A request body no handler reads is drained for at most this long before the
# connection is closed (no API handler reads a body).
BODY_TIMEOUT_S = 5.0
# Open connections at most; also kept under half the process's file limit,
# which the database pool, the spool and the probes need too.
MAX_CONNECTIONS = 1000
_MIN_CONNECTIONS = 16

_TCP_FILES = ("/proc/net/tcp", "/proc/net/tcp6")
_TIME_WAIT = "06"  # a socket state that holds no inode and no process


class PortInUse(Exception):
    """The API address is taken; the message names it, its holder where known, and the ways out."""


def default_max_connections() -> int:
    """MAX_CONNECTIONS, or half the soft open-files limit when that is lower."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(_MIN_CONNECTIONS, min(MAX_CONNECTIONS, soft // 2))


@dataclass(frozen=True)
class ApiLimits:
    """How long a client may take and how many may connect at once."""

    head_timeout_s: float = HEAD_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S
    max_connections: int = field(default_factory=default_max_connections)


# ---------------------------------------------------------------- binding


def bind_listeners(host: str, port: int) -> list[socket.socket]:
    """Bind (not yet listen on) every address ``host`` resolves to, all on one port.

    ``port`` 0 picks a free port, the same for every address.

    :raises PortInUse: the port is taken on one of the addresses.
    :raises OSError: any other bind failure (an address not on this machine, say).
    """
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    addresses = list(dict.fromkeys((family, sockaddr) for family, _, _, _, sockaddr in infos))
    families = {family for family, _ in addresses}
    bound: list[socket.socket] = []
    try:
        for family, sockaddr in addresses:
            if port == 0 and bound:  # every address on the port the first one got
                sockaddr = (sockaddr[0], bound[0].getsockname()[1], *sockaddr[2:])
            sock = socket.socket(family, socket.SOCK_STREAM)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does: restart over TIME_WAIT
            if family == socket.AF_INET6 and len(families) > 1:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise PortInUse(_port_taken_message(host, int(sockaddr[1]))) from None
                raise OSError(exc.errno, f"cannot listen on {host}:{int(sockaddr[1])}: {exc.strerror}") from None
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return bound


def _port_taken_message(host: str, port: int) -> str:
    holder = port_holder(port)
    held = f" by {holder}" if holder else " (the OS does not say by which process)"
    return (
        f"the API address {host}:{port} is already in use{held}. "
        f"Choose another port: --port N or {ENV_API_PORT}=N (0 picks a free one), or api.port in the config"
    )


def port_holder(port: int) -> str | None:
    """Best effort: ``pid 123 (name)`` of a process with a TCP socket on ``port``, from /proc.

    None when /proc does not say (another user's process, another network namespace, not Linux).
    """
    inodes = _socket_inodes(port)
    if not inodes:
        return None
    holders = [_describe_pid(pid) for pid in _pids_with_sockets(inodes)]
    return ", ".join(holders[:3]) if holders else None


def _socket_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for path in _TCP_FILES:
        try:
            lines = Path(path).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if len(fields) < 10 or fields[3] == _TIME_WAIT:
                continue
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[9] != "0":
                inodes.add(fields[9])
    return inodes


def _pids_with_sockets(inodes: Iterable[str]) -> list[int]:
    targets = {f"socket:[{inode}]" for inode in inodes}
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:  # gone, or another user's
            continue
        if any(_link(fd) in targets for fd in fds):
            found.append(int(entry.name))
    return sorted(found)


def _link(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:  # closed meanwhile (the directory listing's own descriptor, say)
        return ""


def _describe_pid(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        command = " ".join(a.decode(errors="replace") for a in argv if a)
    except OSError:
        command = ""
    if not command:
        try:
            command = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return f"pid {pid}"
    if len(command) > 80:
        command = command[:79] + "…"
    return f"pid {pid} ({command})"


# ---------------------------------------------------------------- serving


class _Gate:
    """Counts open connections against a cap."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.refused = 0

    def enter(self) -> bool:
        if self.open >= self.limit:
            self.refused += 1
            return False
        self.open += 1
        return True

    def leave(self) -> None:
        self.open -= 1


_BUSY_BODY = dumps(error_payload(503, "too many open connections to this server; try again shortly"))
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    + f"Content-Type: {JSON_TYPE}\r\nContent-Length: {len(_BUSY_BODY)}\r\n".encode()
    + b"Retry-After: 1\r\nConnection: close\r\n\r\n"
    + _BUSY_BODY
)


class _GatedHandler(web.RequestHandler):
    """aiohttp's connection handler, admitted only while the gate has room."""

    __slots__ = ("_admitted", "_gate")

    def __init__(self, manager: web.Server, gate: _Gate, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._gate = gate
        self._admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._gate.enter():
            assert isinstance(transport, asyncio.Transport)
            transport.write(_BUSY)
            transport.close()  # after the write; no request is read
            return
        self._admitted = True
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._gate.leave()
        super().connection_lost(exc)


class _GatedSite(web.BaseSite):
    """A pre-bound socket served through _GatedHandler."""

    def __init__(self, runner: web.AppRunner, sock: socket.socket, gate: _Gate, handler_args: dict[str, Any]) -> None:
        super().__init__(runner)
        self._sock = sock
        self._gate = gate
        self._handler_args = handler_args
        self._app_runner = runner
        host, port = sock.getsockname()[:2]
        self._name = f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        manager = self._app_runner.server
        assert manager is not None, "runner.setup() first"

        def handler() -> _GatedHandler:
            return _GatedHandler(manager, self._gate, loop=loop, **self._handler_args)

        self._server = await loop.create_server(handler, sock=self._sock, backlog=self._backlog)


@dataclass
class ApiServer:
    """The running API: its runner (``cleanup()`` stops it) and connection counts."""

    runner: web.AppRunner
    gate: _Gate
    addresses: list[tuple[str, int]]

    @property
    def open_connections(self) -> int:
        """Connections admitted and not yet closed."""
        return self.gate.open

    @property
    def refused_connections(self) -> int:
        """Connections answered 503 because the cap was reached, since start."""
        return self.gate.refused

    async def close(self) -> None:
        """Stop listening, finish requests in flight, close every connection."""
        await self.runner.cleanup()


async def start_api(
    app: web.Application, sockets: Sequence[socket.socket], limits: ApiLimits | None = None
) -> ApiServer:
    """Serve ``app`` on ``sockets`` (from :func:`bind_listeners`) within ``limits``."""
    limits = limits or ApiLimits()
    handler_args: dict[str, Any] = {
        "access_log": None,
        # aiohttp arms this timer when a connection opens and after each
        # response, and closes the connection if no complete request head
        # has arrived by then, however slowly bytes trickle in.
        "keepalive_timeout": limits.head_timeout_s,
        "lingering_time": limits.body_timeout_s,
    }
    runner = web.AppRunner(app, **handler_args)
    await runner.setup()
    gate = _Gate(limits.max_connections)
    try:
        for sock in sockets:
            await _GatedSite(runner, sock, gate, handler_args).start()
    except BaseException:
        await runner.cleanup()
        raise
    addresses = [(str(s.getsockname()[0]), int(s.getsockname()[1])) for s in sockets]
    return ApiServer(runner, gate, addresses)
