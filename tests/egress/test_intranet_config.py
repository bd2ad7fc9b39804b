"""The agent's config for its second listener: mistakes are named before anything starts, ``his-bridge check``
verifies the terminals' keys and the outbound certificates, and the terminal API is in the agent's OpenAPI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from bridge import openapi
from bridge.config import ConfigError, load_config
from tests.support.egress_rig import Ports, agent_config, intranet_ssl, make_rig_keys

pytestmark = pytest.mark.system


@pytest.fixture
def config_path(tmp_path, dev_certs) -> Path:
    keys = make_rig_keys(tmp_path / "keys")
    return agent_config(dev_certs, keys, Ports(), tmp_path, "http://127.0.0.1:9")


def rewrite(path: Path, old: str, new: str) -> Path:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))
    return path


def his_bridge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge.cli", *args], capture_output=True, text=True, timeout=60)


def test_a_good_config_loads_and_checks(config_path):
    cfg = load_config(config_path)
    assert cfg.intranet is not None and {t.id for t in cfg.intranet.terminals} >= {"KIOSK-01", "WIN-01"}
    done = his_bridge("check", "--config", str(config_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 terminals (kiosk, window)" in done.stdout and "egress to https://127.0.0.1:" in done.stdout


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ('kind = "window"', 'kind = "kiosk"', "a kiosk may not start refunds"),
        ('addresses = ["127.0.0.1"]', 'addresses = ["the lobby"]', "is not an address or network"),
        ('id = "WIN-01"', 'id = "KIOSK-01"', "terminal ids must be unique"),
        ('gateway_url = "https://', 'gateway_url = "http://', "mutual TLS only"),
        ('terminal_ca = "', 'ignored_ca = "', "extra inputs are not permitted"),
        ("max_payment_fen = 500000\nmax_daily_fen = 2000000\n\n[[intranet.terminals]]\nid = \"WIN-01\"",
         "max_payment_fen = 1.5\nmax_daily_fen = 2000000\n\n[[intranet.terminals]]\nid = \"WIN-01\"",
         "max_payment_fen"),
    ],
)  # fmt: skip
def test_config_mistakes_are_named(config_path, old, new, problem):
    rewrite(config_path, old, new)
    with pytest.raises(ConfigError) as e:
        load_config(config_path)
    assert problem.lower() in str(e.value).lower()


def test_terminals_without_egress_are_refused(config_path):
    text = config_path.read_text()
    config_path.write_text(text[: text.index("[egress]")])
    with pytest.raises(ConfigError, match=r"configure \[egress\] too"):
        load_config(config_path)


def test_a_loose_terminal_key_file_fails_the_check(config_path, tmp_path):
    (tmp_path / "keys" / "kiosk.key").chmod(0o644)
    done = his_bridge("check", "--config", str(config_path))
    assert done.returncode == 1 and "chmod 600" in done.stdout


async def test_the_terminal_api_is_in_the_agents_openapi_and_on_the_intranet_listener(rig):
    document = openapi.build("test")
    for operation in ("pay.codepay", "pay.qr", "pay.query", "pay.close", "refund", "refund.query", "transactions"):
        assert f"/v1/terminal/{operation}" in document["paths"]
    assert "CodepayIn" in document["components"]["schemas"] and "/v1/ops/charge.commit" in document["paths"]
    codepay = document["components"]["schemas"]["CodepayIn"]
    assert codepay["properties"]["amount_fen"]["type"] == "integer"
    connector = aiohttp.TCPConnector(ssl=intranet_ssl(rig.certs))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(rig.intranet_url + "/openapi.json") as resp,
    ):
        served = json.loads(await resp.read())
    assert resp.status == 200 and set(served["paths"]) == {p for p in document["paths"] if "/terminal/" in p}


def test_terminal_key_writes_a_private_key_once(tmp_path):
    out = tmp_path / "KIOSK-09.key"
    assert his_bridge("terminal-key", "--out", str(out)).returncode == 0
    assert out.stat().st_mode & 0o777 == 0o600 and len(bytes.fromhex(out.read_text().strip())) == 32
    again = his_bridge("terminal-key", "--out", str(out))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
