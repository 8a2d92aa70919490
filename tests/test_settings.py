"""Settings from the environment: read in one module, every variable a field, secrets never shown."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from routewatch.config import load_config
from routewatch.config.settings import ENV_PREFIX, Settings, SettingsError, load_settings

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parent.parent
SOURCES = [p for package in ("routewatch", "probe", "aggregator") for p in (REPO / package).rglob("*.py")]
SETTINGS_MODULE = REPO / "routewatch" / "config" / "settings.py"


@pytest.fixture(autouse=True)
def _no_routewatch_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sets what it reads; a developer's own ROUTEWATCH_* variables stay out."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def test_only_the_settings_module_reads_the_environment() -> None:
    readers = sorted(
        str(p.relative_to(REPO))
        for p in SOURCES
        if re.search(r"\bos\.(environ|getenv)\b", p.read_text(encoding="utf-8"))
    )
    assert readers == ["routewatch/config/settings.py"]


def test_every_routewatch_variable_the_code_names_is_a_setting() -> None:
    named = {name for p in SOURCES for name in re.findall(r"\bROUTEWATCH_[A-Z0-9_]+\b", p.read_text(encoding="utf-8"))}
    fields = {field.validation_alias for field in Settings.model_fields.values()}
    assert named - fields == set()


def test_values_are_read_and_blank_is_unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ROUTEWATCH_API_PORT", " 8080 ")
    monkeypatch.setenv("ROUTEWATCH_DATA_DIR", "~/rw-data")
    monkeypatch.setenv("ROUTEWATCH_PG_BIN", str(tmp_path))
    monkeypatch.setenv("ROUTEWATCH_PG_USER", "postgres")
    monkeypatch.setenv("ROUTEWATCH_ROUTER_URL", "   ")
    monkeypatch.setenv("ROUTEWATCH_CONFIG", "")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    settings = load_settings()
    assert settings.api_port == 8080
    assert settings.data_dir == Path.home() / "rw-data"
    assert settings.pg_bin == tmp_path and settings.pg_user == "postgres"
    assert settings.router_url is None and settings.config is None
    assert settings.xdg_data_home == tmp_path / "xdg"
    assert settings.database_dsn() is None


@pytest.mark.parametrize("value", ["80800", "http", "-1"])
def test_a_bad_port_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("ROUTEWATCH_API_PORT", value)
    with pytest.raises(SettingsError) as bad:
        load_settings()
    assert str(bad.value) == f"ROUTEWATCH_API_PORT: {value!r} is not a port number (0-65535)"


def test_secrets_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {
        "ROUTEWATCH_DATABASE_URL": "postgresql://rw:db-secret-1@127.0.0.1:5432/rw",
        "ROUTEWATCH_DATABASE_READ_URL": "postgresql://rw:db-secret-5@127.0.0.1:5433/rw",
        "ROUTEWATCH_ADMIN_TOKEN": "admin-secret-2",
        "ROUTEWATCH_API_KEY": "sk-secret-3",
        "ORCAROUTER_API_KEY": "sk-secret-4",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    shown = f"{settings} {settings!r} {settings.router_keys!r} {settings.model_dump()}"
    for value in secrets.values():
        assert value not in shown
    assert settings.database_dsn() == secrets["ROUTEWATCH_DATABASE_URL"]
    assert settings.database_read_dsn() == secrets["ROUTEWATCH_DATABASE_READ_URL"]
    assert "ROUTEWATCH_DATABASE_READ_URL" not in settings.router_keys
    assert "ROUTEWATCH_DATABASE_READ_URL" not in settings.notify_secrets
    assert settings.admin_token is not None and settings.admin_token.get_secret_value() == "admin-secret-2"


def test_router_keys_are_the_environment_as_read_without_routewatch_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCAROUTER_API_KEY", "sk-or")
    monkeypatch.setenv("ROUTEWATCH_API_KEY", "sk-default")
    monkeypatch.setenv("ROUTEWATCH_ADMIN_TOKEN", "admin")
    monkeypatch.setenv("ROUTEWATCH_DATABASE_URL", "postgresql://rw:pw@127.0.0.1/rw")
    settings = load_settings()
    monkeypatch.setenv("ORCAROUTER_API_KEY", "changed later")  # read once: later changes are not seen
    keys = settings.router_keys
    assert keys["ORCAROUTER_API_KEY"] == "sk-or"
    assert keys["ROUTEWATCH_API_KEY"] == "sk-default"
    assert "ROUTEWATCH_ADMIN_TOKEN" not in keys and "ROUTEWATCH_DATABASE_URL" not in keys


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mysql://rw:pw@db/rw", "not a postgresql:// URL"),
        ("postgresql://rw:pw@db-a:5432,db-b:54x2/rw", "host 2 of the URL's host list is not host[:port]"),
        ("postgresql://rw:pw@db-a:5432,,db-b/rw", "host 2 of the URL's host list is not host[:port]"),
        (
            "postgresql://rw:pw@db-a,db-b/rw?target_session_attrs=readwrite",
            "target_session_attrs must be one of any, prefer-standby, primary, read-only, read-write, standby",
        ),
    ],
)
def test_a_bad_database_url_is_named_without_showing_it(
    monkeypatch: pytest.MonkeyPatch, url: str, problem: str
) -> None:
    monkeypatch.setenv("ROUTEWATCH_DATABASE_URL", "postgresql://rw:pw@db-a:5432,db-b:5432/rw")
    monkeypatch.setenv("ROUTEWATCH_DATABASE_READ_URL", url)
    with pytest.raises(SettingsError) as bad:
        load_settings()
    assert str(bad.value) == f"ROUTEWATCH_DATABASE_READ_URL: {problem}"


def test_multi_host_urls_with_target_session_attrs_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    primary = "postgresql://rw:pw@db-a:5432,db-b:5432,[::1]:5433/rw?target_session_attrs=read-write"
    monkeypatch.setenv("ROUTEWATCH_DATABASE_URL", primary)
    monkeypatch.setenv("ROUTEWATCH_DATABASE_READ_URL", "postgres://rw:pw@db-b/rw?target_session_attrs=prefer-standby")
    settings = load_settings()
    assert settings.database_dsn() == primary


def test_a_read_url_needs_the_primary_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTEWATCH_DATABASE_READ_URL", "postgresql://rw:secret-pw@db-b/rw")
    with pytest.raises(SettingsError) as bad:
        load_settings()
    assert str(bad.value).startswith(
        "ROUTEWATCH_DATABASE_READ_URL is a replica of the database ROUTEWATCH_DATABASE_URL names"
    )
    assert "secret-pw" not in str(bad.value)


def test_the_region_comes_from_the_environment_over_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "probes.yaml"
    config.write_text(
        "region: in-the-file\nrouters: [{name: r, base_url: simulator, models: [m]}]\n"
        "prompts: [{name: p, messages: [{role: user, content: hi}]}]\n"
    )
    monkeypatch.setenv("ROUTEWATCH_REGION", " eu-west ")
    assert load_config(config, load_settings().region).region == "eu-west"
    monkeypatch.setenv("ROUTEWATCH_REGION", "")
    assert load_config(config, load_settings().region).region == "in-the-file"
    monkeypatch.setenv("ROUTEWATCH_REGION", "eu\nwest")
    with pytest.raises(SettingsError) as bad:
        load_settings()
    assert str(bad.value) == "ROUTEWATCH_REGION: a region is one line of printable text"
