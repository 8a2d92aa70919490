"""Headless chromium for the page tests: JavaScript off, loopback only, driven over DevTools.

:func:`headless_chromium` starts Debian's ``chromium`` with scripts disabled
(``--blink-settings=scriptEnabled=false``: the pages must be readable
without JavaScript) and nothing but 127.0.0.1 reachable; :func:`load` opens
a page and returns its rendered DOM and a screenshot; :func:`parse_dom`
turns the DOM into a small tree to assert on. Without chromium,
:func:`chromium_binary` skips the test, unless ROUTEWATCH_REQUIRE_BROWSER=1
(as .ci/run sets), which makes a missing browser a failure.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"  # where the screenshots go
BROWSER_TIMEOUT_S = 90.0  # the whole browser session: start-up dominates, seconds on a quiet machine
REQUIRE_ENV = "ROUTEWATCH_REQUIRE_BROWSER"

# Headless, JavaScript off, nothing but loopback: no background requests, no
# proxy, and every host name except the loopback address resolves to nothing.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # root in CI containers; the page is our own
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-extensions",
    "--blink-settings=scriptEnabled=false",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-default-browser-check",
    "--no-proxy-server",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)


# ---------------------------------------------------------------- a small DOM


VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"})


@dataclass
class Node:
    """One element of the dumped DOM."""

    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list)  # text and children's text, in order

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    @property
    def text(self) -> str:
        return " ".join("".join(self.text_parts).split())

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            yield from child.walk()

    def find_all(self, tag: str, cls: str | None = None) -> list[Node]:
        return [n for n in self.walk() if n.tag == tag and (cls is None or cls in n.classes)]

    def find(self, tag: str, cls: str | None = None) -> Node:
        found = self.find_all(tag, cls)
        assert found, f"no <{tag} class={cls!r}> in <{self.tag} class={self.attrs.get('class')!r}>"
        return found[0]


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        for node in self.stack:  # text counts for every open ancestor
            node.text_parts.append(data)


def parse_dom(markup: str) -> Node:
    """The element tree of ``markup``, with text as a user would read it."""
    builder = _Builder()
    builder.feed(markup)
    builder.close()
    return builder.root


# ---------------------------------------------------------------- chromium


def chromium_binary() -> str:
    """Path of the chromium binary; skips (or fails, with ROUTEWATCH_REQUIRE_BROWSER=1) without one."""
    path = shutil.which("chromium")
    if path is None:
        reason = "chromium is not installed (apt-get install chromium); the pages were not checked in a browser"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason}, and {REQUIRE_ENV}=1 requires it")
        pytest.skip(f"{reason}; set {REQUIRE_ENV}=1 to make this a failure")
    return path


class DevTools:
    """A minimal DevTools protocol client over chromium's loopback WebSocket: calls in order, events buffered."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._last_id = 0
        self._events: list[dict[str, Any]] = []

    async def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send one command (to ``session``'s page, or the browser) and return its result."""
        self._last_id += 1
        message: dict[str, Any] = {"id": self._last_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        await self._ws.send_json(message)
        while True:
            reply = await self._ws.receive_json()
            if reply.get("id") == self._last_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return dict(reply["result"])
            self._events.append(reply)

    async def event(self, method: str, session: str) -> dict[str, Any]:
        """Wait for the next ``method`` event of ``session``."""
        while True:
            for i, event in enumerate(self._events):
                if event.get("method") == method and event.get("sessionId") == session:
                    return dict(self._events.pop(i))
            self._events.append(await self._ws.receive_json())


@asynccontextmanager
async def headless_chromium(binary: str) -> AsyncIterator[DevTools]:
    """Headless chromium (JavaScript off, a throwaway profile), driven over DevTools on loopback.

    ``--dump-dom`` and ``--screenshot`` would be simpler, but headless
    chromium writes nothing for either when scripts are disabled (its command
    handler evaluates JavaScript in the page); the DevTools DOM and Page
    domains work without it.
    """
    with tempfile.TemporaryDirectory(prefix="routewatch-chromium-") as tmp:
        profile = Path(tmp, "profile")
        # Port 0: chromium picks a free loopback port and writes it to DevToolsActivePort.
        proc = await asyncio.create_subprocess_exec(
            binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "--window-size=1280,1600",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        # Drained all along, so a chatty browser never blocks on a full pipe; kept for failure messages.
        stderr = asyncio.create_task(proc.stderr.read())
        try:
            port, path = await _devtools_address(profile / "DevToolsActivePort", proc, stderr)
            async with (
                aiohttp.ClientSession() as http,
                http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0) as ws,
            ):
                devtools = DevTools(ws)
                yield devtools
                await devtools.call("Browser.close")
            await asyncio.wait_for(proc.wait(), BROWSER_TIMEOUT_S)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await _output(stderr)


async def _output(reader: asyncio.Task[bytes]) -> bytes:
    # A helper process of chromium's may hold the pipe a moment after the browser exited; do not wait for ever.
    try:
        return await asyncio.wait_for(asyncio.shield(reader), 10)
    except TimeoutError:
        reader.cancel()
        return b"(chromium's stderr still open)"


async def _devtools_address(
    port_file: Path, proc: asyncio.subprocess.Process, stderr: asyncio.Task[bytes]
) -> tuple[str, str]:
    async with asyncio.timeout(BROWSER_TIMEOUT_S):
        while True:
            lines = port_file.read_text().splitlines() if port_file.exists() else []
            if len(lines) >= 2:
                return lines[0], lines[1]
            if proc.returncode is not None:
                log = (await _output(stderr)).decode(errors="replace")
                pytest.fail(f"chromium exited {proc.returncode}: {log[-2000:]}")
            await asyncio.sleep(0.05)


@dataclass(frozen=True)
class Loaded:
    """A page as chromium rendered it."""

    markup: str  # the DOM, serialised
    png: bytes  # screenshot of the viewport
    content_width: float  # CSS px; wider than the viewport means a horizontal scroll bar
    image_names: tuple[str, ...] = ()  # what a screen reader announces for each image (role img), in order
    element_pngs: tuple[bytes, ...] = ()  # a screenshot of each element matching load()'s ``shoot``


async def load(
    devtools: DevTools,
    url: str,
    width: int = 1280,
    height: int = 1600,
    *,
    full_page: bool = False,
    shoot: str | None = None,
) -> Loaded:
    """Open ``url`` in a new tab with a ``width`` x ``height`` viewport and wait for its load event.

    The screenshot is of the viewport, or with ``full_page`` of the whole page, top to bottom;
    with ``shoot`` (a CSS selector), also one of each matching element, in document order.
    """
    target = (await devtools.call("Target.createTarget", url="about:blank"))["targetId"]
    session = (await devtools.call("Target.attachToTarget", targetId=target, flatten=True))["sessionId"]
    await devtools.call(
        "Emulation.setDeviceMetricsOverride",
        session,
        width=width,
        height=height,
        deviceScaleFactor=1,
        mobile=width < 600,
    )
    await devtools.call("Page.enable", session)
    await devtools.call("Page.navigate", session, url=url)
    await devtools.event("Page.loadEventFired", session)
    root = (await devtools.call("DOM.getDocument", session, depth=0))["root"]["nodeId"]
    markup = (await devtools.call("DOM.getOuterHTML", session, nodeId=root))["outerHTML"]
    metrics = await devtools.call("Page.getLayoutMetrics", session)
    area: dict[str, Any] = {}
    if full_page:
        size = metrics["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": width, "height": float(size["height"]), "scale": 1}
        area = {"captureBeyondViewport": True, "clip": clip}
    shot = await devtools.call("Page.captureScreenshot", session, format="png", **area)
    tree = await devtools.call("Accessibility.getFullAXTree", session)
    elements = await _element_shots(devtools, session, root, shoot) if shoot else ()
    await devtools.call("Target.closeTarget", targetId=target)
    images = tuple(
        str(node.get("name", {}).get("value", ""))
        for node in tree["nodes"]
        if node.get("role", {}).get("value") in ("image", "img") and not node.get("ignored")
    )
    return Loaded(markup, base64.b64decode(shot["data"]), float(metrics["cssContentSize"]["width"]), images, elements)


async def _element_shots(devtools: DevTools, session: str, root: int, selector: str) -> tuple[bytes, ...]:
    """A PNG of each element matching ``selector`` (its border box), through the DOM domain: no script runs."""
    found = (await devtools.call("DOM.querySelectorAll", session, nodeId=root, selector=selector))["nodeIds"]
    shots = []
    for node in found:
        quad = (await devtools.call("DOM.getBoxModel", session, nodeId=node))["model"]["border"]
        xs, ys = quad[0::2], quad[1::2]
        clip = {"x": min(xs), "y": min(ys), "width": max(xs) - min(xs), "height": max(ys) - min(ys), "scale": 1}
        shot = await devtools.call(
            "Page.captureScreenshot", session, format="png", clip=clip, captureBeyondViewport=True
        )
        shots.append(base64.b64decode(shot["data"]))
    return tuple(shots)
