"""One outbox row as the HTTP request its target's kind expects.

Every request carries the row's id as its idempotency key
(``Idempotency-Key``): a repeat of one notification, after a failure that
left the outcome unknown, carries the same key and the same body, so a
receiver can drop it. Per kind:

- ``webhook``: routewatch's own JSON (:func:`webhook_body`), signed with
  HMAC-SHA256 over a timestamp and the body when a secret is configured
  (:mod:`.signing`);
- ``slack``: an incoming-webhook message, ``text`` plus one mrkdwn section;
- ``pagerduty``: an Events API v2 event, ``trigger`` on open and
  ``resolve`` on close, under one ``dedup_key`` per incident (PagerDuty
  itself drops a repeated trigger or resolve of one key);
- ``grafana``: ``POST /api/annotations``, a point at the start on open, the
  region start to end on close, on the model drill-down dashboard, tagged
  with the delivery id so that a repeat can be found (:func:`grafana_lookup`).

The body of a row is the same at every attempt (only the webhook's
timestamp and signature headers change), and nothing here reads a clock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from routewatch.notify.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature
from routewatch.notify.targets import Target
from routewatch.storage.outbox_queries import CLOSE, OutboxRow

IDEMPOTENCY_HEADER = "Idempotency-Key"
USER_AGENT = "routewatch-notify/1"
GRAFANA_TAGS = ("routewatch", "incident")
PAGERDUTY_SUMMARY_MAX = 1024  # the Events API's limit on payload.summary


@dataclass(frozen=True)
class OutgoingRequest:
    """What to send; ``url`` and some headers hold secrets (never log them)."""

    method: str
    url: str = field(repr=False)
    headers: dict[str, str] = field(repr=False)
    body: bytes = field(repr=False)


def delivery_tag(row_id: int) -> str:
    """The Grafana tag that marks the annotation of one outbox row."""
    return f"routewatch-delivery-{row_id}"


def dedup_key(row: OutboxRow) -> str:
    """PagerDuty's key for the incident: the same for its trigger and its resolve."""
    return f"routewatch-incident-{row.incident_id}-{int(row.incident_start.timestamp())}"


def summary(row: OutboxRow) -> str:
    """One line: what happened, to which models, and why."""
    event = row.event
    models = ", ".join(
        f"{m['id']} {m['state']}" + (f" ({m['reason']})" if m.get("reason") and row.transition != CLOSE else "")
        for m in event["models"]
    )
    if row.transition == CLOSE:
        took = _duration(event["start"], event["end"])
        return f"routewatch incident {row.incident_id} resolved after {took}: {models}"
    return f"routewatch incident {row.incident_id} opened ({event['worst_state']}): {models}"


def _duration(start: str, end: str | None) -> str:
    if end is None:
        return "an unknown time"
    seconds = int((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds())
    hours, rest = divmod(max(seconds, 0), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def webhook_body(row: OutboxRow) -> dict[str, Any]:
    """The generic webhook's JSON: the delivery id, the event type, the incident and a summary."""
    event = row.event
    return {
        "delivery_id": row.id,
        "type": "incident.resolved" if row.transition == CLOSE else "incident.opened",
        "summary": summary(row),
        "incident": {
            "id": row.incident_id,
            "start": event["start"],
            "end": event["end"],
            "worst_state": event["worst_state"],
            "models": event["models"],
        },
    }


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn gives &, < and > meaning (links, mentions): send them as text.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(row: OutboxRow) -> dict[str, Any]:
    """A Slack incoming-webhook message: ``text`` for notifications, one mrkdwn section to read."""
    line = _slack_escape(summary(row))
    icon = ":white_check_mark:" if row.transition == CLOSE else ":rotating_light:"
    details = "\n".join(
        f"• `{_slack_escape(m['id'])}` {m['state']}" + (f": {_slack_escape(m['reason'])}" if m.get("reason") else "")
        for m in row.event["models"]
    )
    return {
        "text": line,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": f"{icon} {line}\n{details}"}}],
    }


def pagerduty_body(row: OutboxRow, routing_key: str) -> dict[str, Any]:
    """An Events API v2 event: trigger (open) or resolve (close) under the incident's dedup_key."""
    if row.transition == CLOSE:
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup_key(row)}
    event = row.event
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key(row),
        "client": "routewatch",
        "payload": {
            "summary": summary(row)[:PAGERDUTY_SUMMARY_MAX],
            "source": "routewatch",
            "severity": "critical" if event["worst_state"] == "down" else "warning",
            "timestamp": event["start"],
            "component": ", ".join(m["id"] for m in event["models"])[:255],
            "group": "llm-models",
            "class": "incident",
            "custom_details": webhook_body(row)["incident"],
        },
    }


def grafana_body(row: OutboxRow, dashboard_uid: str) -> dict[str, Any]:
    """``POST /api/annotations``: a point at the start (open) or the region start..end (close)."""
    event = row.event
    body: dict[str, Any] = {
        "dashboardUID": dashboard_uid,
        "time": _epoch_ms(event["start"]),
        "tags": [
            *GRAFANA_TAGS,
            f"incident-{row.incident_id}",
            "resolved" if row.transition == CLOSE else "opened",
            delivery_tag(row.id),
        ],
        "text": summary(row),
    }
    if row.transition == CLOSE and event["end"] is not None:
        body["timeEnd"] = _epoch_ms(event["end"])
    return body


def _epoch_ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")


def render(target: Target, row: OutboxRow, now_s: int) -> OutgoingRequest:
    """The request that delivers ``row`` to ``target``, attempted at ``now_s`` (Unix seconds)."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        IDEMPOTENCY_HEADER: str(row.id),
    }
    url = target.url
    if target.kind == "webhook":
        body = _json(webhook_body(row))
        if target.signing_secret is not None:
            headers[TIMESTAMP_HEADER] = str(now_s)
            headers[SIGNATURE_HEADER] = signature(target.signing_secret, now_s, body)
    elif target.kind == "slack":
        body = _json(slack_body(row))
    elif target.kind == "pagerduty":
        assert target.routing_key is not None
        body = _json(pagerduty_body(row, target.routing_key))
    elif target.kind == "grafana":
        assert target.token is not None
        body = _json(grafana_body(row, target.dashboard_uid))
        headers["Authorization"] = f"Bearer {target.token}"
        url = target.url.rstrip("/") + "/api/annotations"
    else:
        raise ValueError(f"unknown notification kind {target.kind!r}")
    return OutgoingRequest("POST", url, headers, body)


def grafana_lookup(target: Target, row: OutboxRow) -> OutgoingRequest:
    """``GET /api/annotations`` for the annotation of ``row``: asked before a repeat, so that
    an annotation Grafana stored before an unanswered attempt is not added twice."""
    query = urlencode({"tags": delivery_tag(row.id), "type": "annotation", "limit": 1})
    assert target.token is not None
    headers = {"Accept": "application/json", "User-Agent": USER_AGENT, "Authorization": f"Bearer {target.token}"}
    return OutgoingRequest("GET", f"{target.url.rstrip('/')}/api/annotations?{query}", headers, b"")
