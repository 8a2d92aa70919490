"""A loopback receiver for notification tests: records every request, answers as it is told.

Each path has a script of behaviours, one per request, the last repeated:
``ok`` (200), ``status:NNN``, ``slow:S`` (answer 200 after S seconds), ``hold``
(never answer until released), ``drop`` (close the connection unanswered),
``store-drop`` (record as stored, then drop: an answer lost on the way back).
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Received:
    """One request as the receiver saw it, and whether it was answered 2xx."""

    path: str
    method: str
    headers: dict[str, str]
    body: bytes
    acked: bool = False  # answered 2xx to a client still there to read it
    late: bool = False  # processed, but the client had given up (timed out) before the answer

    @property
    def key(self) -> str | None:
        return self.headers.get("Idempotency-Key")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """The app's state: scripts per path, requests seen, Grafana annotations stored."""

    scripts: dict[str, list[str]] = field(default_factory=dict)
    seen: list[Received] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def behaviour(self, path: str) -> str:
        script = self.scripts.get(path, ["ok"])
        return script.pop(0) if len(script) > 1 else script[0]

    def acked(self, path: str | None = None) -> list[Received]:
        return [r for r in self.seen if r.acked and (path is None or r.path == path)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        got = Received(request.path, request.method, dict(request.headers), body)
        self.seen.append(got)
        self.arrived.set()
        if request.method == "GET" and request.path.endswith("/api/annotations"):
            tag = request.query.get("tags", "")
            found = [a for a in self.annotations if tag in a["tags"]]
            got.acked = True
            return web.json_response(found[: int(request.query.get("limit", "100"))])
        what = self.behaviour(request.path)
        if what == "hold" or what.startswith("slow:"):
            if what == "hold":
                await self.release.wait()
            else:
                await asyncio.sleep(float(what.split(":")[1]))
            if request.transport is None or request.transport.is_closing():
                got.late = True  # done on this side; the sender never hears of it
                return web.Response(status=200)
            what = "ok"
        if what in ("drop", "store-drop"):
            if what == "store-drop":
                self.annotations.append(got.json())
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)  # never reaches the client
        if what.startswith("status:"):
            return web.Response(status=int(what.split(":")[1]), text="no thanks")
        if request.path.endswith("/api/annotations"):
            self.annotations.append(got.json())
        got.acked = True
        return web.json_response({"ok": True}, status=202 if "pagerduty" in request.path else 200)


class AppThread:
    """An aiohttp application served on 127.0.0.1 from a thread of its own, for tests that wait synchronously."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        assert self._started.wait(10), "server did not start"

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._runner, self.url = self._loop.run_until_complete(start_app(self._app))
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def call(self, callback: Any) -> None:
        """Run ``callback()`` on the server's loop."""
        self._loop.call_soon_threadsafe(callback)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class ReceiverThread(AppThread):
    """A :class:`Receiver` served from a thread of its own."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        super().__init__(receiver_app(receiver))

    def release(self) -> None:
        """Let held requests go on (to find, by now, whether their client is still there)."""
        self.call(self.receiver.release.set)


def receiver_app(receiver: Receiver) -> web.Application:
    """The application answering every path with ``receiver``."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receiver.handle)
    return app


async def start_app(app: web.Application) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on 127.0.0.1, port 0; return the runner and its base URL."""
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def start_receiver(receiver: Receiver) -> tuple[web.AppRunner, str]:
    """Serve ``receiver`` on 127.0.0.1, port 0; return the runner and its base URL."""
    return await start_app(receiver_app(receiver))
