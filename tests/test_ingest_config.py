"""The push path's settings: probes.yaml's ``ingest`` and ``api.ingest_tokens``, the tokens they name, the sink chosen.

Every problem is reported with its line or its variable's name; a token's value never appears in a message.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from factories import config_text

from routewatch.config import Config, ConfigError, parse_config
from routewatch.config.settings import Settings
from routewatch.delivery.spooled import backoff_delay
from routewatch.sinks import IngestSetupError, ingest_tokens, needs_database, push_sink, push_token, result_sink

pytestmark = pytest.mark.unit

TOKEN = "0123456789abcdef0123456789abcdef"


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "probes.yaml")
    return [str(issue) for issue in caught.value.issues]


def pushing(url: str = "https://central.example.com/v1/ingest", token_env: str = "EU_INGEST_TOKEN") -> str:
    return config_text(ingest={"url": url, "token_env": token_env})


def receiving(*entries: dict[str, str]) -> str:
    return config_text(api={"ingest_tokens": list(entries)})


def test_a_pushing_config_parses() -> None:
    config = parse_config(pushing(), "probes.yaml")
    assert config.ingest is not None and config.ingest.token_env == "EU_INGEST_TOKEN"
    assert not needs_database(config)
    assert needs_database(parse_config(config_text(), "probes.yaml"))


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://central.example.com/v1/ingest", "must be https:// (over http the token would cross the network"),
        ("https://user:pw@central.example.com/v1/ingest", "remove the credentials from the URL"),
        ("https:///v1/ingest", "the URL has no host name"),
        ("ftp://central.example.com/v1/ingest", "must be an https:// URL"),
        ("https://central.example.com/v1/ingest?token=x", "must have no query or fragment"),
        ("https://central.example.com:99999/v1/ingest", "is not a valid URL"),
    ],
)
def test_the_ingest_url_must_be_https_without_credentials(url: str, says: str) -> None:
    [problem] = issues(pushing(url=url))
    assert problem.startswith("probes.yaml:") and "ingest.url: " in problem and says in problem
    assert "pw" not in problem


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8321/v1/ingest", "http://[::1]:8321/v1/ingest", "http://localhost/x"]
)
def test_plain_http_is_allowed_to_loopback_only(url: str) -> None:
    assert parse_config(pushing(url=url), "probes.yaml").ingest is not None


@pytest.mark.parametrize(
    ("name", "says"),
    [
        (TOKEN + "-x", "must be the name of an environment variable"),
        ("ROUTEWATCH_ADMIN_TOKEN", "is one of routewatch's own settings"),
    ],
)
def test_token_env_names_a_variable_of_ones_own(name: str, says: str) -> None:
    for text, field in (
        (pushing(token_env=name), "ingest.token_env"),
        (receiving({"region": "eu", "token_env": name}), "api.ingest_tokens[0].token_env"),
    ):
        [problem] = issues(text)
        assert f"{field}: " in problem and says in problem
        assert TOKEN not in problem  # a pasted token is not repeated


def test_regions_and_their_variables_are_unique() -> None:
    text = receiving(
        {"region": "eu", "token_env": "EU_TOKEN"},
        {"region": "us", "token_env": "EU_TOKEN"},
        {"region": "eu", "token_env": "ASIA_TOKEN"},
    )
    found = issues(text)
    assert any('api.ingest_tokens[2].region: duplicate region "eu" (also ingest_tokens[0])' in p for p in found)
    assert any(
        'api.ingest_tokens[1].token_env: duplicate token_env "EU_TOKEN" (also ingest_tokens[0])' in p for p in found
    )
    assert all(p.startswith("probes.yaml:") for p in found)


def settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name in ("EU_TOKEN", "US_TOKEN", "ROUTEWATCH_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def two_regions() -> Config:
    return parse_config(
        receiving({"region": "eu", "token_env": "EU_TOKEN"}, {"region": "us", "token_env": "US_TOKEN"}), "probes.yaml"
    )


def test_each_regions_token_is_read_from_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = ingest_tokens(two_regions(), settings(monkeypatch, EU_TOKEN=TOKEN, US_TOKEN=TOKEN[::-1]))
    assert {region: t.get_secret_value() for region, t in tokens.items()} == {"eu": TOKEN, "us": TOKEN[::-1]}
    assert TOKEN not in repr(tokens)


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"US_TOKEN": TOKEN}, "api.ingest_tokens[0] (region eu): $EU_TOKEN is not set"),
        ({"EU_TOKEN": "tiny-3f9a", "US_TOKEN": TOKEN}, "$EU_TOKEN is shorter than 16 characters"),
        ({"EU_TOKEN": "with space " + TOKEN, "US_TOKEN": TOKEN}, "$EU_TOKEN must be printable ASCII without spaces"),
        ({"EU_TOKEN": TOKEN, "US_TOKEN": TOKEN}, "$US_TOKEN holds the same token as api.ingest_tokens[0]"),
        (
            {"EU_TOKEN": TOKEN, "US_TOKEN": TOKEN[::-1], "ROUTEWATCH_ADMIN_TOKEN": TOKEN},
            "$EU_TOKEN holds the same token as ROUTEWATCH_ADMIN_TOKEN",
        ),
    ],
)
def test_unusable_tokens_are_refused_naming_the_variable_only(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], says: str
) -> None:
    with pytest.raises(IngestSetupError) as caught:
        ingest_tokens(two_regions(), settings(monkeypatch, **env))
    assert says in str(caught.value)
    for value in env.values():
        assert value not in str(caught.value)


def test_a_pushing_prober_needs_its_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = parse_config(pushing(token_env="EU_TOKEN"), "probes.yaml")
    with pytest.raises(IngestSetupError, match=r"ingest.token_env: \$EU_TOKEN is not set"):
        push_token(config, settings(monkeypatch))
    assert push_token(config, settings(monkeypatch, EU_TOKEN=TOKEN)) == TOKEN


def test_without_ingest_the_sink_needs_a_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no database was given"):
        result_sink(parse_config(config_text(), "probes.yaml"), settings(monkeypatch), tmp_path, None)


@pytest.mark.parametrize(
    ("failures", "spread", "expected"),
    [(1, 0.0, 1.0), (2, 0.0, 2.0), (3, 0.0, 4.0), (5, 0.0, 15.0), (50, 0.0, 15.0), (3, 1.0, 3.0), (1, 1.0, 1.0)],
)
def test_retries_back_off_doubling_up_to_a_cap(failures: int, spread: float, expected: float) -> None:
    assert backoff_delay(failures, 1.0, 15.0, spread) == expected


async def test_a_ca_file_that_holds_no_certificate_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    for path, says in ((not_pem, "ingest.ca_file: cannot use"), (tmp_path / "missing.pem", "No such file")):
        config = parse_config(
            config_text(ingest={"url": "https://c.example/v1/ingest", "token_env": "EU_TOKEN", "ca_file": str(path)}),
            "probes.yaml",
        )
        with pytest.raises(IngestSetupError, match=says):
            async with push_sink(config, settings(monkeypatch, EU_TOKEN=TOKEN), tmp_path / "spool"):
                pass
    assert not (tmp_path / "spool").exists(), "nothing was started"
