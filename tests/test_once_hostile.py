"""``routewatch once`` against a hostile router: what it prints is text, never instructions.

A real ``routewatch once`` process probes a loopback aiohttp "router" whose
answers carry Rich markup, terminal escape sequences and a lone surrogate, for
model ids too long for an 80-column table. The table must come out whole,
inert and readable, and the exit code must say that probes failed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from aiohttp import web
from rich.cells import cell_len

from routewatch.once import terminal_safe

REPO = Path(__file__).resolve().parent.parent
COLUMNS = 80

LONG_OK = "meta-llama/llama-3.3-70b-instruct-turbo-extended"
MARKUP = "openai/gpt-4.1-nano-2025-04-14-markup-in-the-error"
ESCAPES = "anthropic/claude-haiku-4.5-escape-sequences"
SURROGATE = "google/gemini-2.5-flash-lone-surrogate"
MODELS = [LONG_OK, MARKUP, ESCAPES, SURROGATE]

MARKUP_BODY = "upstream said [/] then [bold red]x and [link=https://evil.example]click[/link]"
ESCAPE_BODY = "\x1b[2J\x1b]0;pwned\x07cleared your screen\x1b[31m red \x9b2J"
SERVED_BY = "served[/]-by-\x1b[5m-blink"


def _event(payload: str) -> bytes:
    return b"data: " + payload.encode() + b"\n\n"


async def _chat(request: web.Request) -> web.StreamResponse:
    """One hostile behaviour per model; LONG_OK answers properly, under a hostile served-model name."""
    model = (await request.json())["model"]
    if model == MARKUP:
        return web.Response(status=500, text=MARKUP_BODY)
    if model == ESCAPES:
        return web.Response(status=502, text=ESCAPE_BODY)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    if model == SURROGATE:
        # A JSON escape for a lone surrogate: valid JSON, not encodable text.
        await resp.write(_event('{"error": {"message": "overloaded \\ud800 [/] try later"}}'))
    else:
        served = json.dumps(SERVED_BY)[1:-1] + "\\udfff"
        chunk = '{"id": "c1", "model": "' + served + '", "choices": [{"delta": {"content": "one two three four"}}]}'
        await resp.write(_event(chunk))
        await resp.write(
            _event(
                '{"choices": [{"delta": {}, "finish_reason": "stop"}], '
                '"usage": {"prompt_tokens": 12, "completion_tokens": 4}}'
            )
        )
        await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


@pytest.fixture
async def hostile_router(aiohttp_server) -> str:  # type: ignore[no-untyped-def]
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _chat)
    server = await aiohttp_server(app)  # loopback, port 0
    return str(server.make_url("/v1"))


def _config(base_url: str, models: list[str]) -> str:
    return yaml.safe_dump(
        {
            "region": "test",
            "routers": [{"name": "hostile", "base_url": base_url, "models": models}],
            "prompts": [
                {
                    "name": "short",
                    "messages": [{"role": "user", "content": "Count from 1 to 10."}],
                    "max_tokens": 16,
                    "min_output_tokens": 2,
                }
            ],
            "timeouts": {"connect": "2s", "headers": "5s", "first_token": "5s", "idle": "2s", "total": "10s"},
        }
    )


def _model_ids(table_lines: list[str]) -> list[str]:
    """Each row's model id: the first column's fragments up to its "router · prompt" line."""
    ids: list[str] = []
    current = ""
    header_done = False
    for line in table_lines:
        if line.startswith("┡"):
            header_done = True
            continue
        if not (header_done and line.startswith("│")):
            continue
        first = line.split("│")[1].strip()
        if " · " in first:
            ids.append(current)
            current = ""
        else:
            current += first
    return ids


async def _once(base_url: str, models: list[str], tmp_path: Path) -> tuple[int, str, str]:
    """Run ``routewatch once`` in an 80-column pipe; (exit code, stdout, stderr)."""
    config = tmp_path / "probes.yaml"
    config.write_text(_config(base_url, models))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROUTEWATCH_", "FORCE_COLOR", "TTY_", "CLICOLOR"))}
    env.update(COLUMNS=str(COLUMNS), LINES="50", PYTHONIOENCODING="utf-8")
    # Not subprocess.run: the router serves from this event loop while the child runs.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "routewatch.cli",
        "once",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    raw_out, raw_err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, raw_out.decode("utf-8"), raw_err.decode("utf-8")  # strict: valid UTF-8


@pytest.mark.system
async def test_once_prints_hostile_router_text_inert_and_whole(hostile_router: str, tmp_path: Path) -> None:
    code, out, err = await _once(hostile_router, MODELS, tmp_path)
    report = f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"

    assert "Traceback" not in out + err, report
    assert code == 2, report  # three of four probes failed
    assert "1 of 4 probes ok" in out, report
    # Nothing a terminal would act on: no escape sequence, no C1 control, no BEL.
    assert "\x1b" not in out and "\x9b" not in out and "\x07" not in out, report
    lines = out.splitlines()
    text = " ".join(line.strip() for line in lines)  # undo word wrapping
    # Markup is shown as sent, not interpreted.
    for literal in ("[/] then [bold red]x and [link=https://evil.example]click[/link]", "\ufffd [/] try later"):
        assert literal in text, report
    assert "HTTP 502: cleared your screen red" in text, report  # the text survives, the escapes do not
    assert "served by served[/]-by--blink\ufffd" in text, report
    too_wide = [line for line in lines if cell_len(line) > COLUMNS]
    assert not too_wide, report
    # Every model id is readable in full, folded or not.
    assert _model_ids(lines) == MODELS, report


@pytest.mark.system
async def test_once_exits_0_only_when_every_probe_succeeded(hostile_router: str, tmp_path: Path) -> None:
    code, out, err = await _once(hostile_router, [LONG_OK], tmp_path)
    assert code == 0, out + err
    assert "1 of 1 probes ok" in out


@pytest.mark.unit
@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        ("\x1b[2J\x1b[Hcleared", "cleared"),  # CSI: clear screen, cursor home
        ("\x1b]0;title\x07after", "after"),  # OSC window title ended by BEL
        ("\x1b]8;;https://evil.example\x1b\\link\x1b]8;;\x1b\\", "link"),  # OSC 8 hyperlink, ST-terminated
        ("\x1bPq#0;2;0;0;0\x1b\\dcs", "dcs"),  # DCS string (sixel)
        ("\x9b31mred", "red"),  # the one-byte C1 CSI
        ("\x1bcreset", "reset"),  # a two-byte escape: full terminal reset
        ("bell\x07 and\x00nul", "bell\ufffd andnul"),  # NUL dropped, as everywhere router text is kept
        ("two\nlines\r\n\ttab", "two lines tab"),
        ("lone \ud800 surrogate", "lone \ufffd surrogate"),
        ("abc\u202edcba", "abc\ufffddcba"),  # a right-to-left override would reorder the line
        ("[bold red]x[/]", "[bold red]x[/]"),  # plain text: markup is escaped by Text, not here
        ("unterminated \x1b[", "unterminated "),
    ],
)
def test_terminal_safe(sent: str, shown: str) -> None:
    assert terminal_safe(sent) == shown
