"""The alerts as Grafana-managed alert rules, in Grafana's file-provisioning format (``apiVersion: 1``).

Each rule queries the Prometheus data source whose uid Grafana reads from
the environment variable :data:`DATASOURCE_UID_ENV` when it loads the file,
with the same expression as the Prometheus rule (so that Prometheus must load
the generated recording rules too), and fires while that query returns any
series: the query is ``(expr) * 0 + 1``, reduced to its last value and
compared with 0. No data means OK: a healthy system returns no series.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from routewatch.alerting.plan import AlertPlan
from routewatch.alerting.promql import duration
from routewatch.alerting.rules import DRILL_DOWN_UID, HEALTH_UID, Alert

__all__ = ["DATASOURCE_UID_ENV", "FOLDER", "provisioning"]

DATASOURCE_UID_ENV = "PROMETHEUS_DATASOURCE_UID"
"""Grafana's environment variable holding the uid of the Prometheus data source the rules query."""
FOLDER = "routewatch"
_QUERY_RANGE_S = 600  # the instant query's time range; the windows live in the expressions


def _rule(alert: Alert) -> dict[str, Any]:
    datasource = f"${{{DATASOURCE_UID_ENV}}}"
    annotations = {name: t.go(".Labels") for name, t in alert.annotations().items()}
    annotations["__dashboardUid__"] = DRILL_DOWN_UID if alert.per_route else HEALTH_UID
    return {
        "uid": alert.name.lower()[:40],
        "title": alert.name,
        "condition": "C",
        "data": [
            {
                "refId": "A",
                "relativeTimeRange": {"from": _QUERY_RANGE_S, "to": 0},
                "datasourceUid": datasource,
                "model": {
                    "refId": "A",
                    "datasource": {"type": "prometheus", "uid": datasource},
                    "expr": f"({alert.expr}) * 0 + 1",
                    "instant": True,
                    "range": False,
                },
            },
            {
                "refId": "B",
                "datasourceUid": "__expr__",
                "model": {
                    "refId": "B",
                    "type": "reduce",
                    "expression": "A",
                    "reducer": "last",
                    "settings": {"mode": "dropNN"},
                },
            },
            {
                "refId": "C",
                "datasourceUid": "__expr__",
                "model": {
                    "refId": "C",
                    "type": "threshold",
                    "expression": "B",
                    "conditions": [{"evaluator": {"type": "gt", "params": [0]}}],
                },
            },
        ],
        "noDataState": "OK",
        "execErrState": "Error",
        "for": duration(alert.for_s),
        "labels": alert.labels(),
        "annotations": annotations,
        "isPaused": False,
    }


def provisioning(plan: AlertPlan, alerts: Sequence[Alert]) -> dict[str, Any]:
    """The provisioning document: one group in folder :data:`FOLDER`, evaluated every minute."""
    # Grafana evaluates a group at a multiple of 10 s; a minute, or the scaled-down equivalent.
    interval = max(10, round(60 / plan.deployment.scale / 10) * 10)
    return {
        "apiVersion": 1,
        "groups": [
            {
                "orgId": 1,
                "name": "routewatch",
                "folder": FOLDER,
                "interval": f"{interval}s",
                "rules": [_rule(a) for a in alerts],
            }
        ],
    }
