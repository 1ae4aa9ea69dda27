"""The config schema: defaults, the shipped example, and errors that name file, key and reason."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.config import (
    Config,
    find_config,
    is_loopback,
    load_config,
    parse_config,
    render_example,
    state_dir,
)
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_no_file_means_all_defaults() -> None:
    config = load_config(None)
    assert config == Config()
    assert config.resolver.did_web is True
    assert config.resolver.cache_ttl == 3600.0


def test_shipped_example_is_the_rendered_schema_and_parses_to_the_defaults() -> None:
    shipped = ROOT / "configs" / "gateway.toml"
    assert shipped.read_text() == render_example(), (
        "run: didgw config example > configs/gateway.toml"
    )
    assert load_config(shipped) == Config(source=str(shipped))


def test_every_key_of_the_example_uncommented_gives_the_defaults(tmp_path: Path) -> None:
    uncommented = "\n".join(
        line[2:] if line.startswith("# ") and " = " in line else line
        for line in render_example().splitlines()
    )
    path = tmp_path / "all.toml"
    path.write_text(uncommented)
    assert load_config(path) == Config(source=str(path))


def test_values_are_read(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text(
        '[resolver]\ndid_web = false\ntimeout = 2\nuniversal_resolver = "https://r.example"\n'
        "cache_ttl = 10\ncache_max_stale = 20\n"
    )
    resolver = load_config(path).resolver
    assert resolver.did_web is False
    assert resolver.timeout == 2.0 and isinstance(resolver.timeout, float)
    assert resolver.universal_resolver == "https://r.example"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[resolvr]\n", "unknown section [resolvr]"),
        ("[resolver]\ntimeot = 1\n", "[resolver] timeot: unknown key"),
        ('[resolver]\ntimeout = "5"\n', "[resolver] timeout: must be a number, got str '5'"),
        ("[resolver]\ndid_web = 1\n", "[resolver] did_web: must be true or false"),
        ("[resolver]\ncache_ttl = true\n", "[resolver] cache_ttl: must be a number, got bool"),
        ("[resolver]\nmax_document_bytes = 1.5\n", "max_document_bytes: must be an integer"),
        ("[resolver]\ntimeout = 0\n", "[resolver] timeout: must be greater than 0, got 0"),
        ("[resolver]\ncache_ttl = -1\n", "cache_ttl: must be 0 or more"),
        ("[resolver]\nmax_document_bytes = 10\n", "must be between 1024 and"),
        ('[resolver]\nuniversal_resolver = "ftp://x"\n', "universal_resolver: must be an http"),
        ('[resolver]\nca_file = "/nonexistent/ca.pem"\n', "ca_file: file not found"),
        ("[resolver]\ncache_ttl = 100\ncache_max_stale = 10\n", "cache_max_stale: must be greater"),
        ("resolver = 3\n", "[resolver] must be a table"),
        ("[gateway\n", "not valid TOML"),
    ],
)
def test_errors_name_the_file_the_key_and_the_reason(
    tmp_path: Path, toml: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(path) in str(exc.value)
    assert message in str(exc.value)


# -- keys that moved: [mqtt] clock_skew_seconds and max_reading_age_seconds to [devices] ------


def test_the_clock_window_is_read_from_devices_without_a_deprecation() -> None:
    config = parse_config(
        {"devices": {"clock_skew_seconds": 60, "max_reading_age_seconds": 600}}, source="f"
    )
    assert (config.devices.clock_skew_seconds, config.devices.max_reading_age_seconds) == (60, 600)
    assert config.deprecations == ()


def test_the_old_keys_under_mqtt_are_still_read_and_name_their_new_place(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "old.toml"
    path.write_text(
        '[mqtt]\nclock_skew_seconds = 60\nmax_reading_age_seconds = 600\nprefix = "x"\n'
    )
    with caplog.at_level(logging.WARNING, logger="gateway.config"):
        config = load_config(path)
    assert (config.devices.clock_skew_seconds, config.devices.max_reading_age_seconds) == (60, 600)
    assert config.mqtt.prefix == "x"
    expected = [
        "[mqtt] clock_skew_seconds is deprecated: use [devices] clock_skew_seconds",
        "[mqtt] max_reading_age_seconds is deprecated: use [devices] max_reading_age_seconds",
    ]
    assert list(config.deprecations) == expected
    assert [r.getMessage() for r in caplog.records] == [f"{path}: {e}" for e in expected]


def test_when_both_places_are_set_the_new_one_wins_and_the_warning_says_so() -> None:
    config = parse_config(
        {"mqtt": {"clock_skew_seconds": 60}, "devices": {"clock_skew_seconds": 30}}, source="f"
    )
    assert config.devices.clock_skew_seconds == 30
    assert config.deprecations == (
        "[mqtt] clock_skew_seconds is deprecated: use [devices] clock_skew_seconds "
        "(both are set; [devices] clock_skew_seconds wins)",
    )


def test_an_old_key_with_an_impossible_value_is_named_as_written() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"mqtt": {"max_reading_age_seconds": 5}}, source="f")
    assert "f: [mqtt] max_reading_age_seconds: must be between 60 and" in str(exc.value)
    with pytest.raises(ConfigError, match=r"\[mqtt\] clock_skew_seconds: must be an integer"):
        parse_config({"mqtt": {"clock_skew_seconds": "60"}}, source="f")


def test_all_errors_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"resolver": {"timeout": -1, "bogus": 1}, "x": {}}, source="f.toml")
    assert str(exc.value).count("f.toml:") == 3


def test_config_file_discovery(tmp_path: Path) -> None:
    named = tmp_path / "named.toml"
    named.write_text("")
    assert find_config(str(named), {}) == named
    assert find_config(None, {"DIDGW_CONFIG": str(named)}) == named
    with pytest.raises(ConfigError, match="config file not found"):
        find_config(str(tmp_path / "missing.toml"), {})
    confdir = tmp_path / "etc"
    confdir.mkdir()
    (confdir / "gateway.toml").write_text("")
    assert find_config(None, {"CONFIGURATION_DIRECTORY": str(confdir)}) == confdir / "gateway.toml"


def test_state_dir_precedence(tmp_path: Path) -> None:
    from gateway.config import GatewaySection

    configured = Config(gateway=GatewaySection(state_dir=str(tmp_path / "cfg")))
    env = {"HOME": str(tmp_path), "STATE_DIRECTORY": "/var/lib/didgw"}
    assert state_dir(configured, "/cli", {**env, "DIDGW_STATE_DIR": "/env"}) == Path("/cli")
    assert state_dir(configured, None, {**env, "DIDGW_STATE_DIR": "/env"}) == Path("/env")
    assert state_dir(configured, None, env) == tmp_path / "cfg"
    assert state_dir(Config(), None, env) == Path("/var/lib/didgw")
    assert state_dir(Config(), None, {"HOME": str(tmp_path)}) == tmp_path / ".local/state/didgw"


def test_the_installed_services_state_comes_before_the_home_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the service installed (its state directory exists), a command given no state
    directory means the service's gateway, not a new one in the user's home."""
    import gateway.config as config_module

    service = tmp_path / "var-lib-didgw"
    monkeypatch.setattr(config_module, "SERVICE_STATE_DIR", service)
    home = {"HOME": str(tmp_path)}
    assert state_dir(Config(), None, home) == tmp_path / ".local/state/didgw"  # not installed
    service.mkdir()
    assert state_dir(Config(), None, home) == service
    assert state_dir(Config(), "/cli", home) == Path("/cli")  # an explicit one still wins
    assert state_dir(Config(), None, {**home, "STATE_DIRECTORY": "/sd"}) == Path("/sd")


# -- exposure warnings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("gw.localhost", True),
        ("0.0.0.0", False),  # noqa: S104 - a value to classify, not a bind
        ("::", False),
        ("192.168.1.20", False),
        ("fe80::1", False),
        ("gateway.example", False),
        ("", False),
        ("LOCALHOST.", True),
        ("broker.localhost", True),
        ("gateway.local", False),  # names are not resolved: they count as the network
        ("localhost.example.com", False),
    ],
)
def test_what_counts_as_loopback(host: str, loopback: bool) -> None:

    assert is_loopback(host) is loopback


def test_the_defaults_expose_nothing() -> None:
    assert Config().warnings() == []


@pytest.mark.parametrize(
    ("toml", "key", "says"),
    [
        ('[metrics]\nhost = "0.0.0.0"\n', "metrics.host", "every interface of this machine"),
        ('[metrics]\nhost = "192.168.1.20"\n', "metrics.host", "without authentication"),
        ('[coap]\nenabled = true\nhost = "::"\n', "coap.host", "every interface of this machine"),
        ('[coap]\nenabled = true\nhost = "10.0.0.2"\n', "coap.host", "unencrypted"),
        ('[http]\nhost = "0.0.0.0"\n', "http.host", "over HTTPS on every interface"),
    ],
)
def test_a_server_off_loopback_is_an_exposure_warning(toml: str, key: str, says: str) -> None:
    import tomllib

    warnings = parse_config(tomllib.loads(toml), source="t").warnings()
    assert [k for k, _ in warnings] == [key]
    assert says in warnings[0][1]


def test_a_server_that_is_off_warns_about_nothing() -> None:
    import tomllib

    toml = '[metrics]\nenabled = false\nhost = "0.0.0.0"\n[coap]\nhost = "::"\n'
    assert parse_config(tomllib.loads(toml), source="t").warnings() == []


def test_a_broker_elsewhere_without_tls_is_warned_about_and_with_tls_is_not() -> None:
    remote = parse_config({"mqtt": {"host": "192.168.1.20"}}, source="t.toml")
    ((key, message),) = remote.warnings()
    assert key == "mqtt.host"
    assert "'192.168.1.20' is not this machine and tls is off" in message
    assert "in clear" in message
    assert parse_config({"mqtt": {"host": "b.lan", "tls": True}}, source="t").warnings() == []
    off = parse_config({"mqtt": {"host": "b.lan", "enabled": False}}, source="t")
    assert off.warnings() == []


def test_the_front_door_is_plain_http_only_on_loopback_and_names_its_address(
    tmp_path: Path,
) -> None:
    loopback = Config().http
    assert not loopback.tls() and loopback.base_url() == "http://localhost:8443"
    lan = parse_config({"http": {"host": "192.168.1.20", "port": 443}}, source="t").http
    assert lan.tls() and lan.base_url() == "https://192.168.1.20:443"
    named = parse_config(
        {"http": {"host": "0.0.0.0", "public_url": "https://gw.home.arpa:8443/"}},  # noqa: S104
        source="t",
    ).http
    assert named.tls() and named.base_url() == "https://gw.home.arpa:8443"
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="cert_file and key_file are set together"):
        parse_config({"http": {"cert_file": str(cert)}}, source="t.toml")
    with pytest.raises(ConfigError, match="public_url"):
        parse_config({"http": {"public_url": "ftp://gw"}}, source="t.toml")


def test_tls_settings_that_cannot_work_together_are_refused(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match=r"\[mqtt\] key_file: cert_file and key_file go together"):
        parse_config({"mqtt": {"tls": True, "cert_file": str(cert)}}, source="t")
    with pytest.raises(ConfigError, match=r"\[mqtt\] ca_file: is only used with tls = true"):
        parse_config({"mqtt": {"ca_file": str(cert)}}, source="t")
    with pytest.raises(ConfigError, match=r"\[mqtt\] ca_file: file not found"):
        parse_config({"mqtt": {"tls": True, "ca_file": str(tmp_path / "none")}}, source="t")
    with pytest.raises(ConfigError, match=r"\[tls\] renew_before_days: must be less than"):
        parse_config({"tls": {"broker_days": 30, "renew_before_days": 30}}, source="t")
