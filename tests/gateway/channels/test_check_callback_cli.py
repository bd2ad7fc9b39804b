"""``his-gateway channels check-callback``: each failure reason has its own exit code and message."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import aiohttp
import pytest

from gateway.channels.base import PaymentRequest, Scene
from gateway.channels.cli import EXIT_CODES, main
from tests.support.channelrig import ALIPAY_PUBLIC, APIV3_KEY

pytestmark = pytest.mark.system


async def admin(sandbox, path: str, body: dict) -> dict:
    async with aiohttp.ClientSession() as http, http.post(f"{sandbox.admin_url}{path}", json=body) as resp:
        assert resp.status < 300
        return await resp.json()


@pytest.fixture
async def wechat_capture(sandbox, wechat, receiver, tmp_path):
    sandbox.wechat.platform.mode = "certificate"
    await wechat.create(PaymentRequest("CLI-WX-00001", 800, "x", Scene.native, f"{receiver.url}/cli"))
    await admin(sandbox, "/payer/pay", {"channel": "wechat", "out_trade_no": "CLI-WX-00001"})
    (cb,) = await receiver.wait_for(1)
    headers = tmp_path / "headers.json"
    headers.write_text(json.dumps(cb.headers))
    body = tmp_path / "body.json"
    body.write_bytes(cb.body)
    return headers, body, int(cb.headers["Wechatpay-Timestamp"])


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["channels", "check-callback", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


async def test_wechat_valid_and_each_reason(wechat_capture, trust, capsys, tmp_path):
    headers, body, stamp = wechat_capture
    base = ["--channel", "wechat", "--headers", headers, "--body", body, "--at", stamp + 10]
    ok = [*base, "--platform-key", trust.certificate, "--apiv3-key", APIV3_KEY]

    code, out, _ = run(capsys, *ok, "--mchid", "1230000109")
    assert code == 0
    shown = json.loads(out)
    assert shown["event_type"] == "TRANSACTION.SUCCESS" and shown["resource"]["out_trade_no"] == "CLI-WX-00001"

    code, _, err = run(
        capsys, *base, "--platform-key", trust.public_key, "--public-key-id", trust.public_key_id,
        "--apiv3-key", APIV3_KEY,
    )  # fmt: skip
    assert code == EXIT_CODES["unknown_serial"] == 3 and "unknown_serial" in err

    tampered = tmp_path / "tampered.json"
    tampered.write_bytes(body.read_bytes().replace(b"encrypt-resource", b"encrypt-resourcE"))
    code, _, err = run(capsys, *ok[:4], "--body", tampered, *ok[6:])
    assert code == 4 and "bad_signature" in err

    code, _, err = run(capsys, *ok[:6], "--at", stamp + 1000, *ok[8:])
    assert code == 5 and "stale" in err

    code, _, err = run(capsys, *base, "--platform-key", trust.certificate, "--apiv3-key", "X" * 32)
    assert code == 6 and "bad_tag" in err

    code, _, err = run(capsys, *ok, "--mchid", "1900000109")
    assert code == 7 and "wrong_merchant" in err

    partial = tmp_path / "partial.txt"
    partial.write_text(
        "\n".join(f"{k}: {v}" for k, v in json.loads(headers.read_text()).items() if k != "Wechatpay-Nonce")
    )
    code, _, err = run(capsys, *ok[:2], "--headers", partial, *ok[4:])
    assert code == 8 and "malformed" in err

    code, _, err = run(capsys, *base, "--apiv3-key", APIV3_KEY)
    assert code == 2 and "--platform-key" in err


async def test_alipay_valid_tampered_foreign_stale(sandbox, alipay, receiver, capsys, tmp_path):
    await alipay.create(PaymentRequest("CLI-ALI-0001", 800, "x", Scene.native, f"{receiver.url}/cli"))
    await admin(sandbox, "/payer/pay", {"channel": "alipay", "out_trade_no": "CLI-ALI-0001"})
    (cb,) = await receiver.wait_for(1)
    headers = tmp_path / "headers.txt"
    headers.write_text("Content-Type: application/x-www-form-urlencoded; charset=utf-8\n")
    body = tmp_path / "body.txt"
    body.write_bytes(cb.body)
    base = ["--channel", "alipay", "--headers", headers, "--platform-key", ALIPAY_PUBLIC]

    code, out, _ = run(capsys, *base, "--body", body, "--app-id", "2016080300157187")
    assert code == 0 and json.loads(out)["fields"]["out_trade_no"] == "CLI-ALI-0001"
    code, _, err = run(capsys, *base, "--body", body, "--app-id", "2021000000000000")
    assert code == 7 and "wrong_merchant" in err
    code, _, err = run(capsys, *base, "--body", body, "--at", 4102444800)
    assert code == 5 and "stale" in err
    tampered = tmp_path / "tampered.txt"
    tampered.write_bytes(cb.body.replace(b"total_amount=8.00", b"total_amount=0.08"))
    code, _, err = run(capsys, *base, "--body", tampered)
    assert code == 4 and "bad_signature" in err


async def test_wired_into_his_gateway(wechat_capture, trust):
    headers, body, stamp = wechat_capture
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway.cli", "channels", "check-callback", "--channel", "wechat",
         "--headers", str(headers), "--body", str(body), "--platform-key", str(trust.certificate),
         "--apiv3-key-file", str(trust.apiv3_key_file), "--at", str(stamp)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["resource"]["trade_state"] == "SUCCESS"


async def test_unionpay_valid_tampered_and_from_another_chain(
    sandbox, unionpay, unionpay_trust, receiver, tmp_path, capsys
):
    await unionpay.create(PaymentRequest("CLIUP0000001", 800, "x", Scene.native, f"{receiver.url}/up"))
    await admin(sandbox, "/payer/pay", {"channel": "unionpay", "out_trade_no": "CLIUP0000001"})
    (cb,) = await receiver.wait_for(1)
    headers, body = tmp_path / "up_headers.json", tmp_path / "up_body.txt"
    headers.write_text(json.dumps(cb.headers))
    body.write_bytes(cb.body)
    chain = ["--root-cert", unionpay_trust.root, "--middle-cert", unionpay_trust.middle]
    base = ["--channel", "unionpay", "--headers", headers]

    code, out, _ = run(capsys, *base, "--body", body, *chain, "--mer-id", "777290058167151")
    assert code == 0 and json.loads(out)["fields"]["orderId"] == "CLIUP0000001"

    tampered = tmp_path / "up_tampered.txt"
    tampered.write_bytes(cb.body.replace(b"txnAmt=800", b"txnAmt=8000"))
    code, _, err = run(capsys, *base, "--body", tampered, *chain)
    assert code == EXIT_CODES["bad_signature"] and "bad_signature" in err

    code, _, err = run(capsys, *base, "--body", body, *chain, "--mer-id", "898000000000001")
    assert code == EXIT_CODES["wrong_merchant"]

    other = tmp_path / "other_root.cer"
    other.write_bytes(unionpay_trust.middle.read_bytes())
    code, _, err = run(capsys, *base, "--body", body, "--root-cert", other, "--middle-cert", unionpay_trust.middle)
    assert code == EXIT_CODES["untrusted_certificate"] == 10 and "untrusted_certificate" in err

    code, _, err = run(capsys, *base, "--body", body)
    assert code == 2 and "--root-cert" in err
