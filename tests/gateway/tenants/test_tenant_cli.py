"""``his-gateway hospitals|apps|merchants|tenants`` as an operator types them: an agent link checked by loading
its files, refusals that say what is wrong (and change nothing), an import run twice, JSON to read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge import protocol
from tests.support.channelrig import WECHAT_KEY, WECHAT_MCHID, WECHAT_SERIAL

pytestmark = pytest.mark.system


def gateway(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "-c", str(config), *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}, check=False,
    )  # fmt: skip


@pytest.fixture
def config(tmp_path, keys) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "gw.sqlite3"}"\n[signing]\nkey = "{keys.gateway_key_path}"\n'
    )
    return path


def test_hospitals_with_an_agent_link(config, dev_certs):
    bridge = [
        "--bridge-url", "https://10.9.0.1:8443", "--bridge-ca", str(dev_certs.ca_cert),
        "--bridge-client-cert", str(dev_certs.client_cert), "--bridge-client-key", str(dev_certs.client_key),
        "--bridge-signing-key", str(dev_certs.platform_signing_key), "--bridge-agent-key-id", "bridge-H009",
        "--bridge-agent-public-key", str(dev_certs.bridge_signing_pub),
    ]  # fmt: skip
    missing = gateway(config, "hospitals", "add", "H009", "--name", "九院", *bridge[:-1], "/nowhere/bridge.pub")
    assert missing.returncode == 1 and "agent link" in missing.stderr and "--no-check" in missing.stderr
    assert gateway(config, "hospitals", "list").stdout == ""
    added = gateway(config, "hospitals", "add", "H009", "--name", "九院", "--read-cache", "patient.query=120", *bridge)
    assert added.returncode == 0, added.stderr
    shown = json.loads(gateway(config, "hospitals", "show", "H009", "--json").stdout)
    assert shown["bridge"]["client_key"] == str(dev_certs.client_key) and shown["read_cache"] == {"patient.query": 120}
    assert shown["source"] == "cli"
    again = gateway(config, "hospitals", "update", "H009", "--recon-at", "09:45")
    assert again.returncode == 0 and "updated" in again.stdout
    assert (
        gateway(config, "hospitals", "update", "H009", "--recon-at", "09:45").stdout.strip()
        == "hospital H009 unchanged"
    )
    bad = gateway(config, "hospitals", "update", "H009", "--recon-at", "25:00")
    assert bad.returncode == 1 and "recon_at" in bad.stderr
    assert gateway(config, "hospitals", "show", "H404").stderr.strip().endswith("no hospital 'H404'")


def test_apps_and_merchants_refused_with_the_reason(config, tmp_path):
    assert gateway(config, "hospitals", "add", "H010", "--name", "十院").returncode == 0
    private = tmp_path / "app.pem"
    private.write_bytes(protocol.private_pem(protocol.generate_ed25519("x")))
    refused = gateway(config, "apps", "add", "a-10", "--hospital", "H010", "--public-key", str(private))
    assert refused.returncode == 1 and "private key" in refused.stderr
    unknown_op = gateway(
        config, "apps", "add", "a-10", "--hospital", "H010", "--public-key", str(private), "--allow", "pay"
    )
    assert unknown_op.returncode == 2 and "unknown operation" in unknown_op.stderr
    settings = tmp_path / "wx.toml"
    settings.write_text(
        f'mchid = "{WECHAT_MCHID}"\nappid = "wx01"\nmerchant_serial_no = "{WECHAT_SERIAL}"\n'
        f'private_key_file = "{WECHAT_KEY}"\napiv3_key = {{ env = "WX10_APIV3" }}\n'
        'public_key_file = "keys/pub.pem"\npublic_key_id = "PUB_KEY_ID_10"\n'
    )
    unset = gateway(config, "merchants", "add", "wx10", "--hospital", "H010", "--channel", "wechat",
                    "--settings", str(settings))  # fmt: skip
    assert unset.returncode == 1 and "cannot be built here" in unset.stderr and "WX10_APIV3" in unset.stderr
    saved = gateway(config, "merchants", "add", "wx10", "--hospital", "H010", "--channel", "wechat",
                    "--settings", str(settings), "--no-check")  # fmt: skip
    assert saved.returncode == 0, saved.stderr
    shown = json.loads(gateway(config, "merchants", "show", "wx10", "--json").stdout)
    assert shown["settings"]["public_key_file"] == str(tmp_path / "keys" / "pub.pem"), "relative to the settings file"
    assert shown["settings"]["apiv3_key"] == {"env": "WX10_APIV3"}


def test_tenants_import_twice(config, tmp_path):
    pub = tmp_path / "k.pub"
    pub.write_bytes(protocol.generate_ed25519("k").public().public_pem())
    file = tmp_path / "tenants.toml"
    file.write_text(
        f'[[hospitals]]\nid = "H011"\nname = "十一院"\n[[hospitals.apps]]\napp_id = "k-11"\npublic_key = "{pub}"\n'
    )
    first = gateway(config, "tenants", "import", str(file))
    assert first.returncode == 0 and "2 added" in first.stdout, first.stderr
    second = gateway(config, "tenants", "import", str(file))
    assert second.returncode == 0 and "0 added, 0 updated, 2 unchanged" in second.stdout
    assert gateway(config, "tenants", "version").stdout.strip() == "3"
    empty = tmp_path / "empty.toml"
    empty.write_text("[server]\n")
    nothing = gateway(config, "tenants", "import", str(empty))
    assert nothing.returncode == 1 and "no [[hospitals]] or [[merchants]]" in nothing.stderr
