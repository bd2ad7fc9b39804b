"""``his-gateway channels keys``: every merchant's keys with id, serial, status, expiry and use; ``--check`` as
doctor judges them (a role lapsing within 30 days WARN, one with nothing usable FAIL); the same figures on the
gateway's /metrics for the alert rules."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from gateway.channels import factory
from gateway.channels.metrics import registry
from gateway.config import load_config
from sandbox.channels import crypto as sandbox_crypto
from sandbox.channels.alipay import AlipayCertificates, cert_sn
from sandbox.channels.unionpay import UnionPayIdentity, merchant_pfx
from sandbox.channels.wechat import WechatPlatform
from tests.support.channelrig import (
    ALIPAY_APP_PRIVATE,
    ALIPAY_APP_PUBLIC,
    ALIPAY_SELLER_ID,
    APIV3_KEY,
    UNIONPAY_MER_ID,
    WECHAT_KEY,
    WECHAT_SERIAL,
)

pytestmark = pytest.mark.system


def _toml(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


@pytest.fixture(scope="module")
def material(tmp_path_factory) -> Path:
    """A config with a WeChat merchant mid-rotation, an Alipay merchant in certificate mode and a UnionPay merchant
    whose only signing certificate lapses in 10 days."""
    d = tmp_path_factory.mktemp("keys")
    platform = WechatPlatform.generate("1230000109")
    (d / "platform.pem").write_bytes(sandbox_crypto.certificate_pem(platform.cert))
    (d / "apiv3.key").write_text(APIV3_KEY)
    new_key = sandbox_crypto.new_rsa_key()
    (d / "wx2026.pem").write_bytes(sandbox_crypto.private_pem(new_key))
    certs = AlipayCertificates.generate(ALIPAY_SELLER_ID)
    app_cert = certs.issue_app_cert("2016080300157187", sandbox_crypto.load_public(ALIPAY_APP_PUBLIC.read_bytes()))
    (d / "appCert.crt").write_bytes(sandbox_crypto.certificate_pem(app_cert))
    (d / "alipayCert.crt").write_bytes(certs.chain_pem(certs.cert))
    (d / "alipayRoot.crt").write_bytes(certs.root_bundle)
    identity = UnionPayIdentity.generate()
    key, cert = identity.issue_merchant(UNIONPAY_MER_ID, days=10)
    (d / "up.pfx").write_bytes(merchant_pfx(key, cert, "pw123456"))
    (d / "up.pw").write_text("pw123456")
    (d / "up_root.cer").write_bytes(sandbox_crypto.certificate_pem(identity.root.cert))
    (d / "up_middle.cer").write_bytes(sandbox_crypto.certificate_pem(identity.middle.cert))
    (d / "gateway.pem").write_bytes(b"unused")
    switch = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).isoformat()
    (d / "gateway.toml").write_text(
        f"""
[database]
url = "sqlite:///{d / "gw.sqlite3"}"
[signing]
key = "gateway.pem"
[[hospitals]]
id = "H001"
[[merchants]]
id = "wx1"
channel = "wechat"
hospital = "H001"
mchid = "1230000109"
appid = "wx81be3101902f7cb2"
apiv3_key = {{ file = "apiv3.key" }}
platform_certificates = ["platform.pem"]
merchant_keys = [
  {{ id = "2024", private_key_file = {_toml(str(WECHAT_KEY))}, serial = "{WECHAT_SERIAL}" }},
  {{ id = "2026", private_key_file = "wx2026.pem", serial = "7B2026", valid_from = "{switch}" }},
]
[[merchants]]
id = "ali1"
channel = "alipay"
hospital = "H001"
app_id = "2016080300157187"
seller_id = "{ALIPAY_SELLER_ID}"
alipay_cert_file = "alipayCert.crt"
alipay_root_cert_file = "alipayRoot.crt"
merchant_keys = [
  {{ id = "app", private_key_file = {_toml(str(ALIPAY_APP_PRIVATE))}, certificate_file = "appCert.crt" }},
]
[[merchants]]
id = "up1"
channel = "unionpay"
hospital = "H001"
mer_id = "{UNIONPAY_MER_ID}"
root_cert_file = "up_root.cer"
middle_cert_file = "up_middle.cer"
merchant_keys = [{{ id = "sign", private_key_file = "up.pfx", password = {{ file = "up.pw" }} }}]
""",
        encoding="utf-8",
    )
    tomllib.loads((d / "gateway.toml").read_text(encoding="utf-8"))
    (d / "app_cert_sn.txt").write_text(cert_sn(app_cert))
    return d


def his_gateway(*args: str) -> tuple[int, str]:
    """As an operator runs it (a process of its own: the command configures logging for its whole process)."""
    done = subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout


def test_the_table_names_every_key(material):
    code, out = his_gateway("-c", str(material / "gateway.toml"), "channels", "keys")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["MERCHANT", "CHANNEL", "ROLE", "ID", "SERIAL", "STATUS"]
    by_id = {(line.split()[0], line.split()[3]): line for line in lines[1:]}
    assert "active" in by_id[("wx1", "2024")] and "standby" in by_id[("wx1", "2026")]
    assert "platform-certificate" in out and (material / "app_cert_sn.txt").read_text() in by_id[("ali1", "app")]
    assert "alipay-root" in out and "unionpay-root" in out and "unionpay-intermediate" in out


def test_json_lines(material):
    code, out = his_gateway("-c", str(material / "gateway.toml"), "channels", "keys", "--json", "--merchant", "up1")
    assert code == 0, out
    records = [json.loads(line) for line in out.splitlines()]
    (sign,) = [r for r in records if r["role"] == "signs"]
    assert sign["merchant"] == "up1" and sign["status"] == "active" and sign["serial"].isdigit()
    left = dt.datetime.fromisoformat(sign["not_after"]) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=8) < left < dt.timedelta(days=10)


def test_check_warns_about_what_lapses_within_30_days(material):
    code, out = his_gateway("-c", str(material / "gateway.toml"), "channels", "keys", "--check")
    assert code == 1, out
    assert "WARN  up1 unionpay signs: valid until" in out and "fix: configure the next merchant key" in out
    assert "OK    wx1 wechat signs" in out and "OK    ali1 alipay verifies" in out
    code, out = his_gateway("-c", str(material / "gateway.toml"), "channels", "keys", "--check", "--warn-days", "5")
    assert code == 0, out


def test_check_fails_when_no_key_may_sign(material):
    text = (material / "gateway.toml").read_text(encoding="utf-8")
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    text = text.replace(
        'password = { file = "up.pw" } }]', f'password = {{ file = "up.pw" }}, valid_from = "{later}" }}]'
    )
    (material / "later.toml").write_text(text, encoding="utf-8")
    code, out = his_gateway("-c", str(material / "later.toml"), "channels", "keys", "--check", "--merchant", "up1")
    assert code == 2 and "FAIL  up1 unionpay: no key may sign now (sign standby)" in out


def test_the_expiry_metric(material):
    cfg = load_config(material / "gateway.toml")
    channels = {
        m.id: factory.build_channel(factory.channel_config(m.channel, m.channel_settings())) for m in cfg.merchants
    }
    text = generate_latest(registry(channels)).decode()
    assert 'hisgateway_channel_signing_keys_usable{channel="unionpay",merchant="up1"} 1.0' in text
    line = next(
        line
        for line in text.splitlines()
        if line.startswith("hisgateway_channel_key_expiry_timestamp_seconds{")
        and 'merchant="up1"' in line
        and 'role="signs"' in line
    )
    left = float(line.rsplit(" ", 1)[1]) - dt.datetime.now(dt.UTC).timestamp()
    assert 8 * 86400 < left < 10 * 86400
    assert 'key="2026"' in text and 'role="anchors"' in text
    assert 'key="alipay-cert"' in text
