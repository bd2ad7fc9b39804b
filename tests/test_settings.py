"""The configuration toolkit the agent and the gateway share (``bridge.settings``): one error, one strict base,
one ``HOST:PORT`` parser, one ``${env:}`` expansion and one way to name a secret — and both products' configs
really go through it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError, model_validator

import bridge.config
import gateway.config
from bridge.settings import (
    ConfigError,
    Secret,
    StrictModel,
    addresses_or_networks,
    expand_env,
    file_aliases,
    parse_host_port,
    read_toml,
    validation_error,
)


@pytest.mark.parametrize(
    ("value", "parsed"),
    [("0.0.0.0:8443", ("0.0.0.0", 8443)), ("[::1]:9109", ("::1", 9109)), ("his.local:0", ("his.local", 0))],
)
def test_host_port_is_parsed_with_ipv6_brackets_stripped(value, parsed):
    assert parse_host_port(value) == parsed


@pytest.mark.parametrize("value", ["8443", ":8443", "host:", "host:http", "host:65536", "host:-1"])
def test_what_is_not_host_port_is_refused_by_name(value):
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        parse_host_port(value)


def test_env_is_expanded_in_nested_strings_and_an_unset_variable_is_named(monkeypatch):
    monkeypatch.setenv("H14_PASSWORD", "s3cret")
    raw = {"database": {"url": "postgresql://u:${env:H14_PASSWORD}@db/x"}, "list": ["${env:H14_PASSWORD}", 3]}
    assert expand_env(raw) == {"database": {"url": "postgresql://u:s3cret@db/x"}, "list": ["s3cret", 3]}
    monkeypatch.delenv("H14_PASSWORD")
    with pytest.raises(ConfigError, match="environment variable H14_PASSWORD is not set"):
        expand_env(raw)


def test_both_products_share_one_config_error():
    assert bridge.config.ConfigError is gateway.config.ConfigError is ConfigError


def test_an_unknown_key_in_either_product_is_refused_with_its_dotted_name(tmp_path):
    with pytest.raises(ConfigError, match=r"config: server\.listn: Extra inputs are not permitted"):
        gateway.config.parse_config({"signing": {"key": "k.pem"}, "server": {"listn": "x"}}, base=tmp_path)
    path = tmp_path / "bridge.toml"
    path.write_text('hospital = "H1"\n[server]\nlisten = "nowhere"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bridge\.toml: server\.listen: Value error, 'nowhere' is not HOST:PORT"):
        bridge.config.load_config(path)


def test_a_missing_or_broken_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match=r"absent\.toml: no such file \(hint\)"):
        read_toml(tmp_path / "absent.toml", missing_hint=" (hint)")
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_toml(broken)


def test_a_secret_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    (tmp_path / "k").write_text("from-file\n", encoding="utf-8")
    assert Secret(file=Path("k")).resolved(tmp_path).read() == "from-file"
    monkeypatch.setenv("H14_KEY", "from-env")
    assert Secret(env="H14_KEY").read() == "from-env"
    monkeypatch.delenv("H14_KEY")
    with pytest.raises(ValueError, match="H14_KEY is not set"):
        Secret(env="H14_KEY").read()
    for both_or_neither in ({}, {"file": "k", "env": "H14_KEY"}):
        with pytest.raises(ValidationError, match="exactly one of `file` or `env`"):
            Secret.model_validate(both_or_neither)


class _Vendor(StrictModel):
    key: Secret | None = None

    _aliases = model_validator(mode="before")(file_aliases({"key_file": "key"}))


def test_the_older_file_spelling_of_a_secret_is_still_accepted():
    assert _Vendor.model_validate({"key_file": "secrets/k"}).key == Secret(file=Path("secrets/k"))
    assert _Vendor.model_validate({"key": {"env": "K"}}).key == Secret(env="K")
    with pytest.raises(ValidationError, match="give key or its older spelling key_file, not both"):
        _Vendor.model_validate({"key_file": "a", "key": {"file": "b"}})
    with pytest.raises(ValidationError) as e:
        _Vendor.model_validate({"kee": 1})
    assert "kee" in str(validation_error("vendor.toml", e.value))


def test_address_lists_take_addresses_and_networks_and_name_what_is_neither():
    assert addresses_or_networks(["10.0.0.5", "10.0.0.0/24", "::1"]) == ["10.0.0.5", "10.0.0.0/24", "::1"]
    with pytest.raises(ValueError, match="'the lobby' is not an address or network"):
        addresses_or_networks(["10.0.0.5", "the lobby"])
