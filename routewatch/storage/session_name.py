"""The name a routewatch process gives its database sessions, so an operator can tell them apart.

PostgreSQL shows a session's ``application_name`` in ``pg_stat_activity``;
``routewatch db status`` reads it to say which process holds the refresher
lock and which processes are connected. The server only knows its own
backend's pid, so the name carries the client process's pid and host:
``routewatch serve 4242@api-7d9f8``. In a container every process may be
pid 1, so the host (the container or pod name) is the part that tells
replicas apart; it is shortened, never the command or pid, to fit the
server's 63-byte limit. A URL that names its own ``application_name`` keeps
it: the operator chose that name.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import parse_qs, urlsplit

# PostgreSQL keeps NAMEDATALEN - 1 bytes of a name and silently cuts the rest.
MAX_NAME_BYTES = 63
PREFIX = "routewatch "


def application_name(command: str, pid: int | None = None, host: str | None = None) -> str:
    """``routewatch <command> <pid>@<host>``, in printable ASCII within :data:`MAX_NAME_BYTES`.

    PostgreSQL replaces other characters with ``?``; a host name never has
    them, but a name with them would not be recognised afterwards.
    """
    head = f"{PREFIX}{command} {os.getpid() if pid is None else pid}@"
    host = socket.gethostname() if host is None else host
    host = "".join(c if " " <= c <= "~" else "?" for c in host)
    return (head + host)[:MAX_NAME_BYTES]


def session_settings(dsn: str, command: str) -> dict[str, str]:
    """asyncpg ``server_settings`` naming this process's sessions; empty when ``dsn`` names its own.

    asyncpg lets explicit settings override the URL's query parameters, so
    the URL is looked at first.
    """
    if "application_name" in parse_qs(urlsplit(dsn).query):
        return {}
    return {"application_name": application_name(command)}
