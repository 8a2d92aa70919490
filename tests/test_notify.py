"""Incident notifications: the config section, the formats, the outbox written with the
incident, and the sender against a flaky loopback receiver."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import socket
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
from factories import config_text
from grafana_standin import GrafanaStandIn
from notify_support import Receiver, start_app, start_receiver

from routewatch.admin import restart_changes
from routewatch.aggregator.model_state_store import StatusReport
from routewatch.aggregator.publish.metrics_snapshot import render_states
from routewatch.config import ConfigError, NotificationsConfig, NotificationTarget, format_summary, parse_config
from routewatch.notify import signing
from routewatch.notify.formats import dedup_key, render
from routewatch.notify.sender import OutboxSender, backoff_s
from routewatch.notify.targets import Target, TargetSetupError, resolve_targets
from routewatch.storage.describe import DbStatus, format_status
from routewatch.storage.model_state_queries import save_model_state
from routewatch.storage.outbox_queries import CLOSE, OPEN, OutboxCounts, OutboxRow, outbox_counts
from routewatch.storage.schema import ensure_schema

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
SECRET = "hmac-secret-0123456789abcdef"
SLACK_TOKEN = "T000/B000/slacktokenXYZ123456"
PD_KEY = "pd-routing-key-abcdef0123456789"
GRAFANA_TOKEN = "glsa_grafanatoken0123456789"
ALL_SECRETS = (SECRET, SLACK_TOKEN, PD_KEY, GRAFANA_TOKEN)


def _check(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "probes.yaml")
    return [str(issue) for issue in info.value.issues]


def _row(transition: str = OPEN, row_id: int = 7, end: datetime | None = None) -> OutboxRow:
    event = {
        "incident": 3,
        "transition": transition,
        "start": T0.isoformat(),
        "end": end.isoformat() if end else None,
        "worst_state": "down",
        "models": [{"id": "acme/<model>&co", "state": "down", "reason": "3 consecutive failures"}],
    }
    return OutboxRow(row_id, 3, T0, transition, "t", event, 0, T0)


# ---------------------------------------------------------------- configuration


@pytest.mark.unit
def test_check_config_names_file_line_and_field_of_each_notification_problem() -> None:
    issues = _check(
        config_text()
        + "notifications:\n"
        + "  targets:\n"
        + "    - {name: hook, kind: webhook, url_env: HOOK_URL, secret_env: ROUTEWATCH_DATABASE_URL}\n"
        + "    - {name: chat, kind: slack, url_env: 'https://hooks.slack.com/services/x'}\n"
        + "    - {name: pd, kind: pagerduty}\n"
        + "    - {name: chat2, kind: slack, url_env: SLACK_URL, secret_env: X}\n"
        + "    - {name: g, kind: grafana, url_env: G}\n"
    )
    base = config_text().count("\n")  # lines before the section
    assert issues == [
        f"probes.yaml:{base + 3}: notifications.targets[0].secret_env: ROUTEWATCH_DATABASE_URL holds one of"
        " routewatch's own secrets; it is never sent to a notification target",
        f"probes.yaml:{base + 4}: notifications.targets[1].url_env: must be the name of an environment variable"
        " (letters, digits and _, e.g. SLACK_WEBHOOK_URL), not the URL or secret itself",
        f"probes.yaml:{base + 5}: notifications.targets[2].routing_key_env: a pagerduty target needs"
        " routing_key_env: the variable holding the PagerDuty integration (routing) key",
        f"probes.yaml:{base + 6}: notifications.targets[3].secret_env: a slack target takes no secret_env"
        " (Slack's incoming webhooks are not signed: the URL is the secret)",
        f"probes.yaml:{base + 7}: notifications.targets[4].token_env: a grafana target needs token_env:"
        " the variable holding a Grafana service-account token",
    ]
    backoff = _check(config_text() + "notifications:\n  backoff_initial: 10m\n  backoff_max: 1m\n")
    assert backoff == [f"probes.yaml:{base + 3}: notifications.backoff_max: must be at least backoff_initial (600 s)"]


@pytest.mark.unit
def test_duplicate_target_names_are_refused() -> None:
    issues = _check(
        config_text()
        + "notifications:\n  targets:\n"
        + "    - {name: a, kind: webhook, url_env: A}\n"
        + "    - {name: a, kind: slack, url_env: B}\n"
    )
    assert issues == [
        f"probes.yaml:{config_text().count(chr(10)) + 4}: notifications.targets[1].name:"
        ' duplicate target name "a" (also targets[0])'
    ]


@pytest.mark.unit
def test_targets_read_their_secrets_from_the_environment_and_never_show_them() -> None:
    configs = [
        NotificationTarget(name="hook", kind="webhook", url_env="HOOK_URL", secret_env="HOOK_SECRET"),
        NotificationTarget(name="pd", kind="pagerduty", routing_key_env="PD_KEY"),
    ]
    env = {"HOOK_URL": "https://example.com/hook?token=abc123", "HOOK_SECRET": SECRET, "PD_KEY": PD_KEY}
    targets = resolve_targets(configs, env)
    assert targets["pd"].url == "https://events.pagerduty.com/v2/enqueue"
    shown = repr(targets)
    assert SECRET not in shown and PD_KEY not in shown and "abc123" not in shown
    assert "?token=abc123" not in repr(targets["hook"])

    with pytest.raises(TargetSetupError) as info:
        resolve_targets(configs, {"HOOK_URL": "http://example.com/hook", "HOOK_SECRET": SECRET})
    message = str(info.value)
    assert "HOOK_URL must hold an https:// URL" in message
    assert "environment variable PD_KEY is not set" in message
    assert "example.com" not in message and SECRET not in message


# ---------------------------------------------------------------- formats


@pytest.mark.unit
def test_webhook_is_signed_over_timestamp_and_body_and_carries_the_idempotency_key() -> None:
    target = Target("hook", "webhook", "https://example.com/h", signing_secret=SECRET)
    request = render(target, _row(), now_s=1_800_000_000)
    assert request.headers["Idempotency-Key"] == "7"
    body = json.loads(request.body)
    assert body["delivery_id"] == 7 and body["type"] == "incident.opened"
    assert body["incident"]["models"][0]["id"] == "acme/<model>&co"
    ts, sig = request.headers["X-Routewatch-Timestamp"], request.headers["X-Routewatch-Signature"]
    assert signing.verify(SECRET, ts, request.body, sig, now=1_800_000_010)
    # Replayed later, tampered with, or signed with another secret: refused.
    assert not signing.verify(SECRET, ts, request.body, sig, now=1_800_000_000 + 301)
    assert not signing.verify(SECRET, ts, request.body.replace(b"down", b"up"), sig, now=1_800_000_010)
    assert not signing.verify("other", ts, request.body, sig, now=1_800_000_010)
    # The same row at a later attempt: the same body (only the signature headers move).
    again = render(target, _row(), now_s=1_800_000_060)
    assert again.body == request.body and again.headers["X-Routewatch-Timestamp"] != ts


@pytest.mark.unit
def test_slack_pagerduty_and_grafana_bodies_have_their_documented_shapes() -> None:
    end = T0 + timedelta(minutes=14, seconds=5)
    slack = json.loads(render(Target("s", "slack", "https://hooks.example/x"), _row(), 0).body)
    assert slack["text"].startswith("routewatch incident 3 opened (down): acme/&lt;model&gt;&amp;co down")
    assert slack["blocks"][0]["type"] == "section" and slack["blocks"][0]["text"]["type"] == "mrkdwn"

    pd = Target("pd", "pagerduty", "https://events.example/v2/enqueue", routing_key=PD_KEY)
    trigger = json.loads(render(pd, _row(), 0).body)
    resolve = json.loads(render(pd, _row(CLOSE, 8, end), 0).body)
    assert trigger["event_action"] == "trigger" and resolve["event_action"] == "resolve"
    assert trigger["dedup_key"] == resolve["dedup_key"] == dedup_key(_row())
    assert trigger["routing_key"] == PD_KEY
    assert trigger["payload"]["severity"] == "critical" and trigger["payload"]["source"] == "routewatch"
    assert set(resolve) == {"routing_key", "event_action", "dedup_key"}

    graf = Target("g", "grafana", "https://grafana.example/", token=GRAFANA_TOKEN)
    opened = render(graf, _row(), 0)
    closed = render(graf, _row(CLOSE, 8, end), 0)
    assert opened.url == closed.url == "https://grafana.example/api/annotations"
    assert opened.headers["Authorization"] == f"Bearer {GRAFANA_TOKEN}"
    o, c = json.loads(opened.body), json.loads(closed.body)
    assert o["dashboardUID"] == "routewatch-model" and o["time"] == int(T0.timestamp() * 1000)
    assert "timeEnd" not in o and c["timeEnd"] == int(end.timestamp() * 1000)
    assert {"routewatch", "incident", "incident-3", "opened", "routewatch-delivery-7"} == set(o["tags"])
    assert "resolved after 14m 05s" in c["text"]


@pytest.mark.unit
def test_backoff_doubles_to_its_cap_with_jitter_between_half_and_all() -> None:
    rng = random.Random(1)
    for attempts, full in ((1, 2.0), (2, 4.0), (3, 8.0), (10, 600.0), (500, 600.0)):
        waits = [backoff_s(attempts, 2.0, 600.0, rng) for _ in range(200)]
        assert full / 2 <= min(waits) and max(waits) <= full
        assert max(waits) - min(waits) > full / 4  # spread out, not one value


# ---------------------------------------------------------------- the outbox, written with the incident


def _incident(iid: int, end: datetime | None = None, suppressed: bool = False) -> tuple[Any, ...]:
    return (iid, T0, end, "down", ["acme/m"], suppressed, T0)


STATUS = [("acme/m", "down", T0, "3 consecutive failures", 3, 0, True, T0, T0)]


async def _rows(conn: asyncpg.Connection) -> list[tuple[int, str, str]]:
    rows = await conn.fetch("SELECT incident_id, transition, target FROM notification_outbox ORDER BY id")
    return [(r["incident_id"], r["transition"], r["target"]) for r in rows]


@pytest.mark.db
async def test_each_open_and_close_is_queued_once_per_target_with_the_incident(conn: asyncpg.Connection) -> None:
    await ensure_schema(conn)
    targets = ["a", "b"]
    await save_model_state(conn, STATUS, [_incident(1)], [], targets)
    assert await _rows(conn) == [(1, OPEN, "a"), (1, OPEN, "b")]
    # Saved again unchanged (a new leader re-saving, say): nothing more.
    await save_model_state(conn, STATUS, [_incident(1)], [], targets)
    await save_model_state(conn, STATUS, [_incident(1, T0 + timedelta(minutes=5))], [], targets)
    assert await _rows(conn) == [(1, OPEN, "a"), (1, OPEN, "b"), (1, CLOSE, "a"), (1, CLOSE, "b")]

    # Inside maintenance: announced to no one; once the window ends with the model
    # still bad, it opens; it closes as any other.
    await save_model_state(conn, STATUS, [_incident(2, suppressed=True)], [], targets)
    assert len(await _rows(conn)) == 4
    await save_model_state(conn, STATUS, [_incident(2)], [], targets)
    await save_model_state(conn, STATUS, [_incident(2, T0 + timedelta(hours=1))], [], targets)
    assert (await _rows(conn))[4:] == [(2, OPEN, "a"), (2, OPEN, "b"), (2, CLOSE, "a"), (2, CLOSE, "b")]
    # Suppressed from start to end: nothing at all.
    await save_model_state(conn, STATUS, [_incident(3, suppressed=True)], [], targets)
    await save_model_state(conn, STATUS, [_incident(3, T0 + timedelta(hours=2), suppressed=True)], [], targets)
    assert len(await _rows(conn)) == 8

    # A failed save stores neither the incident nor its notifications.
    with pytest.raises(asyncpg.PostgresError):
        await save_model_state(conn, STATUS, [_incident(4), (5, T0, None, "bogus", ["x"], False, T0)], [], targets)
    assert await conn.fetchval("SELECT count(*) FROM incidents WHERE id >= 4") == 0
    assert len(await _rows(conn)) == 8


# ---------------------------------------------------------------- the sender


def _refusing_socket() -> socket.socket:
    """Bound, never listening: connections to its port are refused for as long as it is open, and no
    server started meanwhile can take the port (as one could a port bound and closed again)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


async def _deliver_all(sender: OutboxSender, pool: asyncpg.Pool, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        await sender.drain()
        async with pool.acquire() as conn:
            if (await outbox_counts(conn)).pending == 0:
                return
        await asyncio.sleep(0.02)
    raise AssertionError("notifications still pending")


@pytest.mark.db
@pytest.mark.timeout(60)
async def test_flaky_receivers_get_every_transition_once_per_key(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver = Receiver(
        scripts={
            "/flaky": ["status:500", "status:503", "drop", "ok"],  # fails 3 times, then ok
            f"/services/{SLACK_TOKEN}": ["slow:2", "ok"],  # slower than the timeout once
            "/v2/enqueue/pagerduty": ["status:429", "ok"],
            "/grafana/api/annotations": ["ok"],
            "/gone": ["status:404"],  # refused: given up at once
        }
    )
    runner, base = await start_receiver(receiver)
    refuser = _refusing_socket()
    env = {
        "FLAKY_URL": f"{base}/flaky",
        "FLAKY_SECRET": SECRET,
        "SLACK_URL": f"{base}/services/{SLACK_TOKEN}",
        "PD_URL": f"{base}/v2/enqueue/pagerduty",
        "PD_KEY": PD_KEY,
        "GRAFANA_URL": f"{base}/grafana",
        "GRAFANA_TOKEN": GRAFANA_TOKEN,
        "GONE_URL": f"{base}/gone",
        "REFUSED_URL": f"http://127.0.0.1:{refuser.getsockname()[1]}/hook",
    }
    configs = [
        NotificationTarget(name="flaky", kind="webhook", url_env="FLAKY_URL", secret_env="FLAKY_SECRET"),
        NotificationTarget(name="chat", kind="slack", url_env="SLACK_URL"),
        NotificationTarget(name="pd", kind="pagerduty", url_env="PD_URL", routing_key_env="PD_KEY"),
        NotificationTarget(name="graf", kind="grafana", url_env="GRAFANA_URL", token_env="GRAFANA_TOKEN"),
        NotificationTarget(name="gone", kind="webhook", url_env="GONE_URL"),
        NotificationTarget(name="refused", kind="webhook", url_env="REFUSED_URL"),
    ]
    targets = resolve_targets(configs, env)
    policy = NotificationsConfig(targets=configs, timeout=1.0, max_attempts=5, backoff_initial=0.05, backoff_max=0.2)
    try:
        async with pool.acquire() as conn:
            await ensure_schema(conn)
            await save_model_state(conn, STATUS, [_incident(1)], [], list(targets))
            await save_model_state(conn, STATUS, [_incident(1, T0 + timedelta(minutes=3))], [], list(targets))
        async with aiohttp.ClientSession() as session:
            sender = OutboxSender(pool, targets, policy, session, rng=random.Random(0))
            await _deliver_all(sender, pool, 30)
        async with pool.acquire() as conn:
            rows = await conn.fetch("SELECT * FROM notification_outbox ORDER BY id")
            dump = json.dumps([dict(r) for r in rows], default=str)
    finally:
        await runner.cleanup()
        refuser.close()

    by_target = {t: [r for r in rows if r["target"] == t] for t in targets}
    # Every transition delivered to every target that can take it, in order, and acknowledged once per key.
    for name in ("flaky", "chat", "pd", "graf"):
        assert [(r["transition"], r["state"]) for r in by_target[name]] == [(OPEN, "sent"), (CLOSE, "sent")]
    acked = Counter(r.key for r in receiver.acked() if r.method == "POST")
    assert set(acked.values()) == {1}, acked
    assert set(acked) == {str(r["id"]) for r in rows if r["state"] == "sent"}
    assert [r["attempts"] for r in by_target["flaky"]] == [4, 1]  # 500, 503, dropped, ok
    # Timed out once: the receiver had done the work but the sender never heard; the repeat
    # carries the same key and body, which is what lets a receiver drop it.
    assert by_target["chat"][0]["attempts"] == 2
    slack = [r for r in receiver.seen if r.key == str(by_target["chat"][0]["id"])]
    assert [(r.late, r.acked) for r in slack] == [(True, False), (False, True)]
    assert slack[0].body == slack[1].body
    # The repeated requests of one row are the same request: same key, same body.
    flaky_open = [r for r in receiver.seen if r.path == "/flaky" and r.key == str(by_target["flaky"][0]["id"])]
    assert len(flaky_open) == 4 and len({r.body for r in flaky_open}) == 1
    for r in flaky_open:
        h = r.headers
        assert signing.verify(SECRET, h["X-Routewatch-Timestamp"], r.body, h["X-Routewatch-Signature"], time.time())
    # A resolve never overtakes its trigger.
    pd_bodies = [r.json() for r in receiver.acked("/v2/enqueue/pagerduty")]
    assert [b["event_action"] for b in pd_bodies] == ["trigger", "resolve"]
    assert receiver.annotations[1]["timeEnd"] - receiver.annotations[1]["time"] == 180_000
    grafana_posts = [r for r in receiver.seen if r.path == "/grafana/api/annotations"]
    assert all(r.headers["Authorization"] == f"Bearer {GRAFANA_TOKEN}" for r in grafana_posts)
    # Refused outright: dead after one attempt; never answering: dead after max_attempts.
    assert [(r["state"], r["attempts"]) for r in by_target["gone"]] == [("dead", 1), ("dead", 1)]
    assert [(r["state"], r["attempts"]) for r in by_target["refused"]] == [("dead", 5), ("dead", 5)]
    assert "HTTP 404" in by_target["gone"][0]["last_error"]
    assert "ClientConnectorError" in by_target["refused"][0]["last_error"]
    # No secret in the database or the logs (the URLs' tokens included).
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("routewatch"))
    assert "notification" in ours
    for secret in ALL_SECRETS:
        assert secret not in dump
        assert secret not in ours
    assert f"{base}/" not in ours


@pytest.mark.db
@pytest.mark.timeout(30)
async def test_a_grafana_annotation_whose_answer_was_lost_is_not_added_twice(pool: asyncpg.Pool) -> None:
    receiver = Receiver(scripts={"/api/annotations": ["store-drop", "ok"]})
    runner, base = await start_receiver(receiver)
    configs = [NotificationTarget(name="g", kind="grafana", url_env="G", token_env="T")]
    targets = resolve_targets(configs, {"G": base, "T": GRAFANA_TOKEN})
    policy = NotificationsConfig(targets=configs, timeout=1.0, backoff_initial=0.05, backoff_max=0.1)
    try:
        async with pool.acquire() as conn:
            await ensure_schema(conn)
            await save_model_state(conn, STATUS, [_incident(1)], [], ["g"])
        async with aiohttp.ClientSession() as session:
            await _deliver_all(OutboxSender(pool, targets, policy, session), pool, 10)
    finally:
        await runner.cleanup()
    assert len(receiver.annotations) == 1
    assert [r.method for r in receiver.seen] == ["POST", "GET"]  # the repeat asked first, and found it


@pytest.mark.unit
def test_event_json_of_two_saves_is_byte_identical() -> None:
    # The body is derived from the stored event only, so every attempt sends the same bytes.
    target = Target("hook", "webhook", "https://example.com/h")
    bodies = {hashlib.sha256(render(target, _row(), now_s=n).body).hexdigest() for n in range(5)}
    assert len(bodies) == 1


@pytest.mark.db
@pytest.mark.timeout(30)
async def test_incident_annotations_land_on_the_drill_down_in_the_grafana_stand_in(pool: asyncpg.Pool) -> None:
    grafana = GrafanaStandIn(GRAFANA_TOKEN)
    runner, base = await start_app(grafana.app())
    configs = [NotificationTarget(name="g", kind="grafana", url_env="G", token_env="T")]
    targets = resolve_targets(configs, {"G": base, "T": GRAFANA_TOKEN})
    try:
        async with pool.acquire() as conn:
            await ensure_schema(conn)
            await save_model_state(conn, STATUS, [_incident(1)], [], ["g"])
            await save_model_state(conn, STATUS, [_incident(1, T0 + timedelta(minutes=9))], [], ["g"])
        async with aiohttp.ClientSession() as session:
            await _deliver_all(OutboxSender(pool, targets, NotificationsConfig(targets=configs), session), pool, 10)
    finally:
        await runner.cleanup()
    assert grafana.problems == []
    opened, closed = grafana.annotations
    assert opened["dashboardUID"] == closed["dashboardUID"] == "routewatch-model"
    assert "timeEnd" not in opened and closed["timeEnd"] - closed["time"] == 9 * 60_000
    assert {"incident-1", "opened"} <= set(opened["tags"]) and {"incident-1", "resolved"} <= set(closed["tags"])


@pytest.mark.unit
def test_check_config_summary_names_the_targets_and_their_variables() -> None:
    text = config_text() + "notifications:\n  targets:\n    - {name: chat, kind: slack, url_env: SLACK_URL}\n"
    summary = format_summary(parse_config(text, "probes.yaml"), "probes.yaml")
    assert summary.splitlines()[-1] == "  incidents notified to chat (slack: SLACK_URL)"


@pytest.mark.unit
def test_a_reload_that_changes_the_targets_asks_for_a_restart() -> None:
    before = parse_config(config_text(), "probes.yaml")
    text = config_text() + "notifications:\n  targets:\n    - {name: chat, kind: slack, url_env: SLACK_URL}\n"
    assert restart_changes(before, parse_config(text, "probes.yaml")) == ["notifications: changed"]


@pytest.mark.unit
def test_dead_and_pending_notifications_show_in_db_status_and_metrics() -> None:
    counts = OutboxCounts(pending=1, sent=5, dead=2, oldest_pending=T0)
    status = DbStatus("plain", None, "18", 10, 0, "exact count", 0, None, None, None, 0, 1, counts)
    line = next(line for line in format_status(status).splitlines() if line.startswith("notifications:"))
    assert (
        line == "notifications:   1 pending, 5 sent, 2 dead (given up); oldest pending queued 2026-11-29 12:00:00+00:00"
    )
    text = render_states(StatusReport(T0, (), (), (), counts)).decode()
    assert 'routewatch_notifications{state="dead"} 2' in text
    assert 'routewatch_notifications{state="pending"} 1' in text
    (oldest,) = [line for line in text.splitlines() if line.startswith("routewatch_notification_oldest_pending_")]
    assert float(oldest.split()[1]) == T0.timestamp()


@pytest.mark.db
@pytest.mark.timeout(30)
async def test_only_the_leader_sends(pool: asyncpg.Pool) -> None:
    receiver = Receiver()
    runner, base = await start_receiver(receiver)
    configs = [NotificationTarget(name="hook", kind="webhook", url_env="U")]
    targets = resolve_targets(configs, {"U": f"{base}/hook"})
    leading = False
    try:
        async with pool.acquire() as conn:
            await ensure_schema(conn)
            await save_model_state(conn, STATUS, [_incident(1)], [], ["hook"])
        async with aiohttp.ClientSession() as session:
            sender = OutboxSender(
                pool, targets, NotificationsConfig(targets=configs), session, is_leader=lambda: leading, poll_s=0.05
            )
            task = asyncio.create_task(sender.run())
            try:
                await asyncio.sleep(0.5)  # ten polls as a standby
                assert receiver.seen == []
                leading = True
                for _ in range(100):
                    if receiver.acked():
                        break
                    await asyncio.sleep(0.05)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        await runner.cleanup()
    assert [r.json()["type"] for r in receiver.acked()] == ["incident.opened"]
