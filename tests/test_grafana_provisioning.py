"""The Grafana provisioning files in deploy/grafana/provisioning/: their shape, fixed uids, and no secret in them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from routewatch.grafana.plan import (
    FOLDER_UID,
    POSTGRES_TYPE,
    POSTGRES_UID,
    PROMETHEUS_UID,
    postgres_datasource,
    prometheus_datasource,
)

pytestmark = pytest.mark.unit

PROVISIONING = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "provisioning"
ENV_REFERENCE = re.compile(r"\$\{[A-Z][A-Z0-9_]*\}")


def _load(relative: str) -> dict[str, Any]:
    document = yaml.safe_load((PROVISIONING / relative).read_text(encoding="utf-8"))
    assert isinstance(document, dict) and document.get("apiVersion") == 1, relative
    return document


def test_data_sources_have_the_fixed_uids_and_take_every_address_and_secret_from_the_environment() -> None:
    sources = {ds["uid"]: ds for ds in _load("datasources/routewatch.yaml")["datasources"]}
    assert set(sources) == {POSTGRES_UID, PROMETHEUS_UID}
    pg, prom = sources[POSTGRES_UID], sources[PROMETHEUS_UID]
    assert (pg["type"], pg["access"], prom["type"], prom["access"]) == (POSTGRES_TYPE, "proxy", "prometheus", "proxy")
    assert set(pg["secureJsonData"]) == {"password"}
    for value in (pg["url"], pg["user"], pg["jsonData"]["database"], pg["secureJsonData"]["password"], prom["url"]):
        assert ENV_REFERENCE.fullmatch(value), value
    assert "password" not in pg and "password" not in pg["jsonData"]
    assert sum(bool(ds.get("isDefault")) for ds in sources.values()) == 1


def test_provisioned_data_sources_match_what_publish_creates() -> None:
    # One definition of each data source, whichever way it reaches Grafana.
    sources = {ds["uid"]: ds for ds in _load("datasources/routewatch.yaml")["datasources"]}
    published = {
        POSTGRES_UID: postgres_datasource("postgresql://u:p@h:5432/d", timescaledb=False).body,
        PROMETHEUS_UID: prometheus_datasource("http://prometheus:9090").body,
    }
    for uid, body in published.items():
        assert (sources[uid]["name"], sources[uid]["type"]) == (body["name"], body["type"])
        assert set(sources[uid]["jsonData"]) == set(body["jsonData"])


def test_the_dashboard_provider_loads_the_dashboards_folder_into_the_routewatch_folder() -> None:
    (provider,) = _load("dashboards/routewatch.yaml")["providers"]
    assert provider["type"] == "file" and provider["folderUid"] == FOLDER_UID
    assert provider["options"]["path"].startswith("/var/lib/grafana/dashboards/")
    assert provider["allowUiUpdates"] is False  # the repository stays the source of truth


def test_the_contact_point_is_a_webhook_whose_url_comes_from_the_environment() -> None:
    document = _load("alerting/contact-points.yaml")
    (point,) = document["contactPoints"]
    (receiver,) = point["receivers"]
    assert receiver["type"] == "webhook" and ENV_REFERENCE.fullmatch(receiver["settings"]["url"])
    assert [p["receiver"] for p in document["policies"]] == [point["name"]]


def test_no_provisioning_file_holds_a_literal_secret() -> None:
    for path in PROVISIONING.rglob("*.yaml"):
        text = path.read_text(encoding="utf-8")
        for key, value in re.findall(r"(?im)^\s*(password|token|url|secret\w*|basicAuthPassword):\s*(\S+)", text):
            assert ENV_REFERENCE.fullmatch(value) or value.startswith("/"), f"{path}: {key}: {value}"
