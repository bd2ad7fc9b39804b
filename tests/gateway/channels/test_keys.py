"""Which merchant key signs when: the newest whose ``valid_from`` has passed, never a retired or expired one; key
records checked against their files."""

from __future__ import annotations

import datetime as dt

import pytest

from bridge.settings import Secret
from gateway.channels.base import ChannelError
from gateway.channels.config import MerchantKey
from gateway.channels.keys import KeyRing, KeyStatus, SigningKey, load_merchant_key
from gateway.channels.unionpay_crypto import cert_id
from gateway.channels.wechat_crypto import certificate_serial
from sandbox.channels import crypto as sandbox_crypto
from sandbox.channels.unionpay import UnionPayIdentity, merchant_pfx
from tests.support.channelrig import UNIONPAY_TEST_KEY

T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
KEY = sandbox_crypto.new_rsa_key()


def key(id: str, **window: dt.datetime) -> SigningKey:
    return SigningKey(id, KEY, id.upper(), None, window.get("valid_from"), window.get("retire_after"))


def test_the_newest_started_key_signs():
    ring = KeyRing([key("old"), key("new", valid_from=T0 + dt.timedelta(days=1))])
    assert ring.current(T0).id == "old"
    assert ring.current(T0 + dt.timedelta(days=1)).id == "new"
    statuses = {k.id: k.status for k in ring.inventory("wechat", "x", T0 + dt.timedelta(days=2))}
    assert statuses == {"old": KeyStatus.superseded, "new": KeyStatus.active}
    before = {k.id: k.status for k in ring.inventory("wechat", "x", T0)}
    assert before == {"old": KeyStatus.active, "new": KeyStatus.standby}


def test_a_retired_key_never_signs_and_none_left_is_a_retryable_error():
    ring = KeyRing([key("only", retire_after=T0)])
    assert ring.current(T0 - dt.timedelta(seconds=1)).id == "only"
    with pytest.raises(ChannelError) as info:
        ring.current(T0)
    assert info.value.code == "NO_SIGNING_KEY" and info.value.retryable


def test_an_expired_certificate_never_signs(tmp_path):
    identity = UnionPayIdentity.generate()
    k, cert = identity.issue_merchant("777290058167151", days=2)
    (tmp_path / "short.pfx").write_bytes(merchant_pfx(k, cert, "pw"))
    (tmp_path / "pw").write_text("pw")
    record = MerchantKey(id="short", private_key_file=tmp_path / "short.pfx", password=Secret(file=tmp_path / "pw"))
    loaded = load_merchant_key(record, cert_id)
    assert loaded.serial == str(cert.serial_number) and loaded.status(dt.datetime.now(dt.UTC)) is KeyStatus.active
    assert loaded.status(cert.not_valid_after_utc + dt.timedelta(seconds=1)) is KeyStatus.expired


def test_the_published_unionpay_test_certificate_expired_on_26_november_2026(tmp_path):
    (tmp_path / "pw").write_text("000000")
    record = MerchantKey(id="acp", private_key_file=UNIONPAY_TEST_KEY, password=Secret(file=tmp_path / "pw"))
    loaded = load_merchant_key(record, cert_id)
    assert loaded.serial == "69903319369"
    assert loaded.status(dt.datetime(2026, 11, 25, tzinfo=dt.UTC)) is KeyStatus.active
    assert loaded.status(dt.datetime(2026, 11, 27, tzinfo=dt.UTC)) is KeyStatus.expired


def test_a_serial_that_is_not_the_certificates_is_refused(tmp_path):
    cert = sandbox_crypto.platform_certificate(KEY, "1230000109")
    (tmp_path / "key.pem").write_bytes(sandbox_crypto.private_pem(KEY))
    (tmp_path / "cert.pem").write_bytes(sandbox_crypto.certificate_pem(cert))
    record = MerchantKey(id="k", private_key_file=tmp_path / "key.pem", certificate_file=tmp_path / "cert.pem")
    assert load_merchant_key(record, certificate_serial).serial == certificate_serial(cert)
    wrong = record.model_copy(update={"serial": "ABCDEF"})
    with pytest.raises(ValueError, match="is not its certificate's"):
        load_merchant_key(wrong, certificate_serial)
    other = sandbox_crypto.platform_certificate(sandbox_crypto.new_rsa_key(), "1230000109")
    (tmp_path / "other.pem").write_bytes(sandbox_crypto.certificate_pem(other))
    with pytest.raises(ValueError, match="not the private key's"):
        load_merchant_key(record.model_copy(update={"certificate_file": tmp_path / "other.pem"}), certificate_serial)


def test_a_wrong_pkcs12_password_fails_at_start(tmp_path):
    (tmp_path / "pw").write_text("not-it")
    record = MerchantKey(id="acp", private_key_file=UNIONPAY_TEST_KEY, password=Secret(file=tmp_path / "pw"))
    with pytest.raises(ValueError):
        load_merchant_key(record, cert_id)


def test_retire_after_must_follow_valid_from():
    with pytest.raises(ValueError, match="retire_after"):
        MerchantKey(id="k", private_key_file="k.pem", valid_from=T0, retire_after=T0)
