"""The ``[sms]`` section: overrides merge per hospital and purpose, and a bad one fails when the config is read."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.settings import Secret
from gateway.config import ConfigError, parse_config
from gateway.sms.config import SmsConfig


def raw(tmp_path, sms: dict) -> dict:
    return {"signing": {"key": "k.pem"}, "hospitals": [{"id": "H001"}], "sms": sms}


def test_overrides_merge_per_hospital_and_purpose(tmp_path):
    cfg = parse_config(
        raw(
            tmp_path,
            {
                "enabled": True,
                "secret_file": "sms.secret",
                "defaults": {"phone": {"per_day": 8}},
                "hospitals": {"H001": {"phone": {"per_hour": 2}, "purposes": {"payment": {"code": {"length": 8}}}}},
            },
        ),
        base=tmp_path,
    )
    payment, login = cfg.sms.policy("H001", "payment"), cfg.sms.policy("H001", "login")
    assert (payment.phone.per_hour, payment.phone.per_day, payment.code.length) == (2, 8, 8)
    assert (login.phone.per_hour, login.code.length) == (2, 6)
    assert cfg.sms.policy("H999", "login").phone.per_hour == 5
    assert cfg.sms.secret_file == tmp_path / "sms.secret"


@pytest.mark.parametrize(
    ("sms", "complaint"),
    [
        ({"enabled": True}, "secret_file"),
        ({"hospitals": {"H001": {"purposes": {"refund": {}}}}}, "unknown purpose"),
        ({"hospitals": {"H001": {"ip": {"caps": [{"window_s": 0, "limit": 1}]}}}}, "window_s"),
        ({"hospitals": {"H002": {}}}, "unknown hospital"),
        ({"counters": "memcached://x"}, "counters"),
        ({"defaults": {"lists": {"block_ips": ["not-an-ip"]}}}, "block_ips"),
    ],
)
def test_bad_settings_fail_at_load(tmp_path, sms, complaint):
    with pytest.raises(ConfigError, match=complaint):
        parse_config(raw(tmp_path, sms), base=tmp_path)


def test_defaults_match_the_issue():
    policy = SmsConfig().defaults
    assert (policy.phone.resend_interval_s, policy.code.ttl_s, policy.code.max_attempts) == (60, 300, 5)


def _tencent(secret: dict, app_secret: dict) -> dict:
    return {
        "provider": {
            "kind": "tencent",
            "tencent": {"secret_id": "AKID", **secret, "sdk_app_id": "1400", "sign_name": "医院",
                        "templates": {"binding": "1", "payment": "2", "login": "3"}},
        },
        "captcha": {"kind": "tencent", "tencent": {"secret_id": "AKID", **secret, "captcha_app_id": 7, **app_secret}},
    }  # fmt: skip


def test_tencent_keys_are_secrets_named_by_file_or_environment_and_the_older_file_keys_still_load(tmp_path):
    old = parse_config(
        raw(tmp_path, _tencent({"secret_key_file": "tencent.key"}, {"app_secret_key_file": "captcha.key"})),
        base=tmp_path,
    )
    assert old.sms.provider.tencent.secret_key == Secret(file=tmp_path / "tencent.key")
    assert old.sms.captcha.tencent.app_secret_key == Secret(file=tmp_path / "captcha.key")
    new = parse_config(
        raw(tmp_path, _tencent({"secret_key": {"env": "TENCENT_KEY"}}, {"app_secret_key": {"file": "/etc/c.key"}})),
        base=tmp_path,
    )
    assert new.sms.provider.tencent.secret_key == Secret(env="TENCENT_KEY")
    assert new.sms.captcha.tencent.app_secret_key == Secret(file=Path("/etc/c.key"))
