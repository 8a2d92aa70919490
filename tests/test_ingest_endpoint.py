"""``POST /v1/ingest`` on real parts: the app as ``routewatch serve`` builds it, PostgreSQL, the aggregator.

The receiver is built by the command line's own wiring (``sinks.ingest_receiver``)
from a probes.yaml text and the environment, and stores through the writer's path.
Each test reads back what the database holds, as a user would check.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from factories import probe_result
from ingest_support import EU_TOKEN, MODEL, US_TOKEN, central_parts, record

from routewatch.aggregator.publish.ingest import MAX_BODY_BYTES, MAX_RESULTS
from routewatch.aggregator.refresh import Aggregator

pytestmark = pytest.mark.db

ClientFactory = Callable[..., Any]


@dataclass
class Client:
    client: TestClient
    central: Client

    @property
    def pool(self) -> asyncpg.Pool:
        return self.central.pool

    @property
    def aggregator(self) -> Aggregator:
        return self.central.aggregator

    async def push(self, records: list[Any], token: str = EU_TOKEN) -> tuple[int, Any]:
        """POST a batch; (status, JSON answer)."""
        resp = await self.client.post(
            "/v1/ingest",
            data=json.dumps({"results": records}),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        return resp.status, await resp.json()

    async def rows(self) -> list[asyncpg.Record]:
        return await self.central.rows()


@pytest.fixture
async def central(db_dsn: str, aiohttp_client: ClientFactory, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Client]:
    async with central_parts(db_dsn, monkeypatch) as parts:
        yield Client(await aiohttp_client(parts.app()), parts)


async def test_a_batch_is_stored_and_the_aggregator_sees_it_like_local_results(central: Client) -> None:
    results = [probe_result(region="eu", model=MODEL, ttft_ms=100.0 + i) for i in range(5)]
    status, report = await central.push([record(r) for r in results])
    assert status == 200, report
    today = (await central.pool.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")).isoformat()
    nothing_paused = {"day": today, "series": []}
    assert report == {
        "region": "eu",
        "received": 5,
        "stored": 5,
        "duplicates": 0,
        "rejected": [],
        "budget_paused": nothing_paused,
    }
    assert {r["id"] for r in await central.rows()} == {r.id for r in results}
    # Logged for the rollup in the same transaction, as the batch writer does.
    assert await central.pool.fetchval("SELECT sum(rows) FROM probe_ingest_log") == 5
    await central.aggregator.refresh()
    snap = central.aggregator.snapshot
    assert snap is not None
    stats = snap.stats["1h"][("sim", MODEL)]
    assert stats.as_json()["samples"]["attempted"] == 5
    assert set(stats.breakdown["region"]) == {"eu"}


async def test_a_replayed_batch_stores_nothing_twice(central: Client) -> None:
    batch = [record(probe_result(region="eu", model=MODEL)) for _ in range(4)]
    first = await central.push(batch)
    again = await central.push(batch)
    overlapping = await central.push([*batch[2:], record()])
    assert first[1]["stored"] == 4
    assert again[0] == 200
    assert {k: v for k, v in again[1].items() if k != "budget_paused"} == {
        "region": "eu",
        "received": 4,
        "stored": 0,
        "duplicates": 4,
        "rejected": [],
    }
    assert overlapping[1]["stored"] == 1 and overlapping[1]["duplicates"] == 2
    ids = [r["id"] for r in await central.rows()]
    assert len(ids) == len(set(ids)) == 5


async def test_the_token_decides_the_region(central: Client) -> None:
    """A token for eu cannot write us: a record naming us is rejected, one naming no region is stored as eu."""
    claims_us = record(probe_result(region="us", model=MODEL))
    no_region = record(region=None)
    status, report = await central.push([claims_us, no_region])
    assert status == 200
    assert report["stored"] == 1
    [rejected] = report["rejected"]
    assert rejected["index"] == 0 and rejected["id"] == claims_us["id"]
    assert "region 'us' is not this token's region ('eu')" in rejected["reason"]
    # The us token writes us.
    status, us_report = await central.push([claims_us], token=US_TOKEN)
    assert (status, us_report["region"], us_report["stored"]) == (200, "us", 1)
    rows = {str(r["id"]): r["region"] for r in await central.rows()}
    assert rows == {no_region["id"]: "eu", claims_us["id"]: "us"}


async def test_bad_tokens_are_401_without_detail(central: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    body = json.dumps({"results": [record()]})
    wrong = EU_TOKEN[:-1] + ("0" if EU_TOKEN[-1] != "0" else "1")
    for headers in (
        {},
        {"Authorization": f"Basic {EU_TOKEN}"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Bearer {wrong}"},
        {"Authorization": f"Bearer {EU_TOKEN}{US_TOKEN}"},
    ):
        resp = await central.client.post("/v1/ingest", data=body, headers=headers)
        text = await resp.text()
        assert resp.status == 401, text
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        error = json.loads(text)["error"]
        assert error["parameter"] == "Authorization"
        # Nothing about what was sent, the tokens there are or their regions.
        for secret in (EU_TOKEN, US_TOKEN, wrong, "eu", "us"):
            assert secret not in error["message"]
    assert await central.rows() == []
    assert "refused 1 request(s) without a valid region token" in caplog.text  # then rate-limited
    for secret in (EU_TOKEN, US_TOKEN, wrong):
        assert secret not in caplog.text


async def test_without_tokens_ingest_is_disabled(
    db_dsn: str, aiohttp_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with central_parts(db_dsn, monkeypatch, tokens=[]) as parts:
        assert parts.receiver is None
        status, answer = await Client(await aiohttp_client(parts.app()), parts).push([record()])
    assert status == 403
    assert "no api.ingest_tokens" in answer["error"]["message"]


async def test_oversize_requests_are_413_with_the_limit(central: Client) -> None:
    # Declared too large: refused before the body is read.
    resp = await central.client.post(
        "/v1/ingest",
        data=io.BytesIO(b" " * (MAX_BODY_BYTES + 1)),
        headers={"Authorization": f"Bearer {EU_TOKEN}", "Content-Type": "application/json"},
    )
    error = (await resp.json())["error"]
    assert resp.status == 413 and f"at most {MAX_BODY_BYTES} are taken" in error["message"]

    # Streamed without a length: refused once the limit is passed.
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"results": ['
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536

    resp = await central.client.post("/v1/ingest", data=chunks(), headers={"Authorization": f"Bearer {EU_TOKEN}"})
    assert resp.status == 413 and f"over {MAX_BODY_BYTES} bytes" in (await resp.json())["error"]["message"]

    status, answer = await central.push([record() for _ in range(MAX_RESULTS + 1)])
    assert status == 413
    assert f"{MAX_RESULTS + 1} results in one request; at most {MAX_RESULTS}" in answer["error"]["message"]
    assert await central.rows() == []


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"not json", "must be a JSON object"),
        (b'{"results": [{"ttft_ms": NaN}]}', "NaN is not a JSON number"),
        (b'{"results": {}}', 'one key, "results", a list'),
        (b'{"results": [], "more": 1}', 'one key, "results", a list'),
        (b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
    ],
)
async def test_an_unreadable_body_is_400(central: Client, body: bytes, says: str) -> None:
    resp = await central.client.post("/v1/ingest", data=body, headers={"Authorization": f"Bearer {EU_TOKEN}"})
    error = (await resp.json())["error"]
    assert resp.status == 400 and error["parameter"] == "body"
    assert says in error["message"]


async def test_malformed_records_are_rejected_with_their_reason_and_the_rest_stored(central: Client) -> None:
    now = datetime.now(UTC)
    good = [record() for _ in range(3)]
    bad: list[tuple[Any, str]] = [
        ("a string", "must be a JSON object, not str"),
        (record(model=None), "missing field 'model'"),
        (record(ttft_ms="fast"), "ttft_ms is 'fast', not a number"),
        (record(ok="yes"), "ok is 'yes', not true or false"),
        (record(id="not-a-uuid"), "id 'not-a-uuid' is not a UUID"),
        (record(started_at="yesterday"), "not an ISO-8601 time"),
        (record(started_at=now.replace(tzinfo=None).isoformat()), "has no UTC offset"),
        (record(started_at=(now + timedelta(days=2)).isoformat()), "outside the time this server keeps"),
        (record(started_at=(now - timedelta(days=400)).isoformat()), "outside the time this server keeps"),
        (record(error_class="meltdown", ok=False), "error_class 'meltdown' is not one of"),
        (record(ok=False), "ok must be true exactly when error_class is null"),
        (record(model="m/\x00a"), "holds control characters"),
        (record(router=""), "router is empty"),
        (record(prompt="p" * 201), "prompt is 201 characters long"),
        (record(colour="blue"), "unknown field 'colour'"),
        (record(chunks=True), "chunks is True, not a whole number"),
    ]
    batch = [good[0], *[raw for raw, _ in bad[:8]], good[1], *[raw for raw, _ in bad[8:]], good[2]]
    status, report = await central.push(batch)
    assert status == 200, report
    assert report["stored"] == 3 and report["received"] == len(batch)
    reasons = [entry["reason"] for entry in report["rejected"]]
    assert len(reasons) == len(bad)
    for reason, (_, says) in zip(reasons, bad):
        assert says in reason, (reason, says)
    assert [entry["index"] for entry in report["rejected"]] == [i for i, raw in enumerate(batch) if raw not in good]
    assert {str(r["id"]) for r in await central.rows()} == {g["id"] for g in good}


async def test_router_values_are_normalised_as_the_prober_does(central: Client) -> None:
    """The same rules as a local probe's (router_values.storable): redacted, cleaned, bounded."""
    raw = record(
        ok=False,
        error_class="http_5xx",
        error_detail="upstream said \x1b[31mno\x1b[0m, key sk-abcdefghijklmnopqrstuvwxyz0123456789",
        input_tokens=2**40,
        provider="\ud800odd",
    )
    status, report = await central.push([raw])
    assert (status, report["stored"]) == (200, 1), report
    [row] = await central.rows()
    assert row["input_tokens"] is None
    assert "\x1b" not in row["error_detail"] and "sk-abcdefghijklmnop" not in row["error_detail"]
    provider = await central.pool.fetchval("SELECT provider FROM probe_results")
    assert provider == "\ufffdodd"


async def test_a_database_outage_is_503_and_nothing_is_lost_for_the_sender(central: Client) -> None:
    await central.pool.close()  # every acquire now fails as it does while the server is away
    status, answer = await central.push([record()])
    assert status == 503
    assert "send the batch again" in answer["error"]["message"]
    resp = await central.client.post(
        "/v1/ingest", data=json.dumps({"results": [record()]}), headers={"Authorization": f"Bearer {EU_TOKEN}"}
    )
    assert resp.status == 503 and int(resp.headers["Retry-After"]) > 0
