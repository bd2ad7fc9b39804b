"""``his-gateway``: the example config is valid, and ``migrate`` with no database configured makes the SQLite
file under var/ beside the config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import TypeAdapter

from gateway.config import load_config
from gateway.store.migrate import head_revision
from tests.support.gateway_rig import make_keys

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]


def test_the_example_config_is_valid():
    from gateway.channels.config import ChannelConfig

    cfg = load_config(REPO / "config" / "gateway.example.toml")
    assert cfg.hospitals[0].bridge is not None
    for merchant in cfg.merchants:
        settings = TypeAdapter(ChannelConfig).validate_python(
            {"channel": merchant.channel, **merchant.channel_settings()}
        )
        assert settings.channel == merchant.channel
        assert str(settings.private_key_file).startswith(str(REPO / "config"))


def test_migrate_without_a_database_section_uses_sqlite_under_var(tmp_path):
    keys = make_keys(tmp_path / "keys")
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[signing]
key = "{keys.gateway_key_path}"
[[hospitals]]
id = "H001"
"""
    )
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "-c", str(config), "migrate"], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        assert f"database at revision {head_revision()} (sqlite)" in result.stdout
    assert (tmp_path / "var" / "gateway.sqlite3").exists()


def test_a_bad_config_is_refused_with_its_path(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text("[[hospitals]]\nid = 'H 1'\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "-c", str(config), "migrate"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "signing" in result.stderr and "hospitals.0.id" in result.stderr
