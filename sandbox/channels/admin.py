"""The sandbox-only admin API (JSON, under ``/_admin`` on the channels' port): the payer's side of each trade,
fault injection, held refunds, signing mode, the channels' keys and their rotation, the merchant keys they
accept, and a look into the ledger and the callbacks sent.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from cryptography import x509

from sandbox.channels import crypto
from sandbox.channels.alipay import AlipayFault, AlipaySandbox, cert_sn
from sandbox.channels.faults import FaultBook, FaultError
from sandbox.channels.ledger import Ledger
from sandbox.channels.notifier import Notifier
from sandbox.channels.payer import CodepayScript
from sandbox.channels.unionpay import UnionPayFault, UnionPayMerchant, UnionPaySandbox
from sandbox.channels.wechat import WechatSandbox


@dataclass
class Context:
    ledger: Ledger
    faults: FaultBook
    notifier: Notifier
    wechat: WechatSandbox | None
    alipay: AlipaySandbox | None
    unionpay: UnionPaySandbox | None = None


Server = WechatSandbox | AlipaySandbox | UnionPaySandbox


CONTEXT_KEY = web.AppKey("channels_context", Context)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdminError(400, f"body must be JSON: {exc}") from None
    if not isinstance(data, dict):
        raise AdminError(400, "body must be a JSON object")
    return data


def _server(ctx: Context, data: dict[str, Any]) -> Server:
    channel = data.get("channel")
    server = {"wechat": ctx.wechat, "alipay": ctx.alipay, "unionpay": ctx.unionpay}.get(str(channel))
    if server is None:
        raise AdminError(400, f"channel must be one this sandbox serves (wechat, alipay, unionpay), not {channel!r}")
    return server


def _trade(ctx: Context, data: dict[str, Any]) -> tuple[Server, dict[str, Any]]:
    server = _server(ctx, data)
    trade = ctx.ledger.trade(server.channel, server.merchant_id, str(data.get("out_trade_no")))
    if trade is None:
        raise AdminError(404, f"no {server.channel} trade {data.get('out_trade_no')!r}")
    return server, trade


def route(handler: Callable[[Context, dict[str, Any], web.Request], Any]) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        ctx = request.app[CONTEXT_KEY]
        try:
            data = await _body(request) if request.method in ("POST", "PUT") else dict(request.query)
            result = handler(ctx, data, request)
        except AdminError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        except AlipayFault as exc:
            return web.json_response({"error": f"{exc.sub_code}: {exc.sub_msg}"}, status=409)
        except UnionPayFault as exc:
            return web.json_response({"error": f"{exc.code}: {exc.message}"}, status=409)
        except (FaultError, ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if isinstance(result, web.StreamResponse):
            return result
        return web.json_response(result, status=201 if request.method == "POST" else 200)

    return wrapped


def pay(ctx: Context, data: dict[str, Any], request: web.Request) -> dict[str, Any]:
    """The payer confirms: NOTPAY/USERPAYING → SUCCESS. ``force`` also pays a closed or expired trade, as a
    payer still on the password screen can when the merchant closed meanwhile (a success after a close)."""
    server, trade = _trade(ctx, data)
    force = bool(data.get("force"))
    if trade["state"] in ("SUCCESS", "REFUND"):
        raise AdminError(409, f"trade already {trade['state']}")
    if trade["state"] in ("CLOSED", "REVOKED", "PAYERROR") and not force:
        raise AdminError(409, f"trade is {trade['state']}; pass force=true for a success after a close")
    expires = trade["expires_at"]
    if expires and dt.datetime.fromisoformat(expires) < ctx.ledger.now() and not force:
        raise AdminError(409, "trade expired (time_expire passed); pass force=true to pay anyway")
    return server.pay(trade, payer_id=data.get("payer_id"))


def scan(ctx: Context, data: dict[str, Any], request: web.Request) -> dict[str, Any]:
    server, trade = _trade(ctx, data)
    if not isinstance(server, AlipaySandbox):
        raise AdminError(400, "scan is Alipay's precreate step (a WeChat Native trade exists once created)")
    if trade["state"] == "CLOSED" and not trade["scanned"]:
        raise AdminError(409, "the QR code's trade was closed before the scan (ACQ.TRADE_HAS_CLOSE)")
    return server.scan(trade)


def fail(ctx: Context, data: dict[str, Any], request: web.Request) -> dict[str, Any]:
    """The payer gives up or the bank refuses: an unpaid trade becomes PAYERROR."""
    _, trade = _trade(ctx, data)
    if trade["state"] not in ("NOTPAY", "USERPAYING"):
        raise AdminError(409, f"trade is {trade['state']}")
    return ctx.ledger.update_trade(trade, state="PAYERROR")


def app_pay(ctx: Context, data: dict[str, Any], request: web.Request) -> dict[str, Any]:
    """The Alipay app receiving an ``alipay.trade.app.pay`` order string (signature checked), then paying."""
    if ctx.alipay is None:
        raise AdminError(400, "this sandbox does not serve Alipay")
    trade = ctx.alipay.register_order_string(str(data.get("order_string", "")))
    return ctx.alipay.pay(trade) if data.get("pay", True) else trade


def codepay(ctx: Context, data: dict[str, Any], request: web.Request) -> dict[str, Any]:
    server = _server(ctx, data)
    auth_code = data.get("auth_code")
    if not isinstance(auth_code, str) or not auth_code:
        raise AdminError(400, "auth_code is required")
    script = CodepayScript.from_json({k: v for k, v in data.items() if k not in ("channel", "auth_code")})
    server.codepay_scripts[auth_code] = script
    return {"auth_code": auth_code, **script.__dict__}


PAYERS: dict[str, dict[str, Any]] = {
    "pays": {"outcome": "paid"},
    "slow": {"outcome": "userpaying", "then": "paid", "after_queries": 1, "after_s": 20.0},
    "declines": {"outcome": "userpaying", "then": "payerror", "after_queries": 1},
    "expired": {
        "wechat": {
            "outcome": "error",
            "status": 400,
            "code": "AUTHCODEEXPIRE",
            "message": "二维码已过期，请用户在微信上刷新后再试",
        },
        "alipay": {
            "outcome": "error",
            "code": "ACQ.PAYMENT_AUTH_CODE_INVALID",
            "message": "支付失败，获取顾客账户信息失败，请顾客刷新付款码后重新收款",
        },
    },
}
CODE_PREFIX = {"wechat": "13", "alipay": "28"}
"""Published 付款码 prefixes (WeChat 18 digits from 10–15; Alipay 16–24 digits from 25–30)."""


def new_code(ctx: Context, data: dict[str, Any], request: web.Request) -> dict[str, Any]:
    """A fresh 付款码 as the payer's phone shows it, and how that payer behaves at the scanner: ``pays`` at once,
    ``slow`` (enters a password for ``after_s`` seconds, 20 by default), ``declines``, or ``expired``."""
    server = _server(ctx, data)
    payer = str(data.get("payer", "pays"))
    if payer not in PAYERS:
        raise AdminError(400, f"payer is one of {sorted(PAYERS)}, not {payer!r}")
    spec = PAYERS[payer]
    script_data = dict(spec.get(server.channel, spec))
    if payer == "slow" and "after_s" in data:
        script_data["after_s"] = data["after_s"]
    script = CodepayScript.from_json(script_data)
    auth_code = CODE_PREFIX[server.channel] + "".join(secrets.choice("0123456789") for _ in range(16))
    server.codepay_scripts[auth_code] = script
    return {"auth_code": auth_code, "channel": server.channel, "payer": payer, **script.__dict__}


def hold_refunds(ctx: Context, data: dict[str, Any], request: web.Request) -> dict[str, Any]:
    """The next ``count`` refunds stay PROCESSING until released; with ``out_trade_no``, the next refund of that
    trade only."""
    server = _server(ctx, data)
    holds = server.refund_holds
    if data.get("out_trade_no") is not None:
        holds.trades.add(str(data["out_trade_no"]))
    else:
        holds.count = int(data.get("count", 1))
    return {"channel": server.channel, "holds": holds.count, "trades": sorted(holds.trades)}


def release_refunds(ctx: Context, data: dict[str, Any], request: web.Request) -> dict[str, Any]:
    server = _server(ctx, data)
    state = str(data.get("state", "SUCCESS"))
    wanted = data.get("out_refund_no")
    held = [r for r in ctx.ledger.refunds(server.channel, "PROCESSING") if wanted in (None, r["out_refund_no"])]
    released = []
    for refund in held:
        if isinstance(server, WechatSandbox | UnionPaySandbox):
            server.finish_refund(refund["out_refund_no"], state)
        else:
            server.finish_refund(refund["out_refund_no"])
        released.append(refund["out_refund_no"])
    return {"released": released}


def add_fault(ctx: Context, data: dict[str, Any], request: web.Request) -> dict[str, Any]:
    return ctx.faults.add(data).to_json()


def list_faults(ctx: Context, data: dict[str, Any], request: web.Request) -> dict[str, Any]:
    return {"faults": [rule.to_json() for rule in ctx.faults.rules()]}


def clear_faults(ctx: Context, data: dict[str, Any], request: web.Request) -> dict[str, Any]:
    return {"cleared": ctx.faults.clear()}


def resend(ctx: Context, data: dict[str, Any], request: web.Request) -> dict[str, Any]:
    record_id = int(request.match_info["id"])
    if not ctx.notifier.resend(record_id):
        raise AdminError(404, f"no callback {record_id}")
    return {"resent": record_id}


def signing(ctx: Context, data: dict[str, Any], request: web.Request) -> dict[str, Any]:
    if ctx.wechat is None:
        raise AdminError(400, "this sandbox does not serve WeChat Pay")
    platform = ctx.wechat.platform
    if request.method == "POST":
        if data.get("mode") not in ("certificate", "public_key"):
            raise AdminError(400, "mode is certificate or public_key")
        platform.mode = data["mode"]
    return {"mode": platform.mode, "certificate_serial": platform.cert_serial, "public_key_id": platform.public_key_id}


def wechat_keys(ctx: Context, data: dict[str, Any], request: web.Request) -> dict[str, Any]:
    """The public halves a merchant configures: the platform certificate and the WeChat Pay public key."""
    if ctx.wechat is None:
        raise AdminError(400, "this sandbox does not serve WeChat Pay")
    platform = ctx.wechat.platform
    return {
        "certificate_serial": platform.cert_serial,
        "certificate_pem": crypto.certificate_pem(platform.cert).decode(),
        "public_key_id": platform.public_key_id,
        "public_key_pem": crypto.public_pem(platform.public_key_key.public_key()).decode(),
    }


def wechat_rotate(ctx: Context, data: dict[str, Any], request: web.Request) -> dict[str, Any]:
    """Publish a new platform certificate in ``/v3/certificates`` (``{"activate": true}`` also signs with it from
    now on, as WeChat does once the switch-over date comes); or ``{"serial": S}`` switches to a published one."""
    if ctx.wechat is None:
        raise AdminError(400, "this sandbox does not serve WeChat Pay")
    platform = ctx.wechat.platform
    serial = data.get("serial")
    if serial is None:
        cert = platform.rotate(ctx.wechat.merchant.mchid, days=int(data.get("days", 1825)))
        serial = f"{cert.serial_number:X}"
    if data.get("activate") or data.get("serial"):
        platform.activate(str(serial))
    return {"published": [f"{c.serial_number:X}" for c in platform.certificates()], "signing": platform.cert_serial}


def merchant_keys(ctx: Context, data: dict[str, Any], request: web.Request) -> dict[str, Any]:
    """Register another merchant key, as a merchant does in the channel's console before rotating to it:
    WeChat ``{"serial_no", "public_key_pem"}``, Alipay ``{"public_key_pem"}`` (public-key mode) or
    ``{"public_key_pem", "issue_certificate": true}`` (certificate mode: answers the app certificate),
    UnionPay ``{"certificate_pem"}``."""
    server = _server(ctx, data)
    if isinstance(server, UnionPaySandbox):
        pem = str(data.get("certificate_pem", "")).encode()
        cert = x509.load_pem_x509_certificate(pem)
        server.merchant.certificates[UnionPayMerchant.cert_id(cert)] = crypto.load_public(pem)
        return {"cert_id": UnionPayMerchant.cert_id(cert)}
    key = crypto.load_public(str(data.get("public_key_pem", "")).encode())
    if isinstance(server, WechatSandbox):
        serial = str(data.get("serial_no", ""))
        if not serial:
            raise AdminError(400, "serial_no is required")
        server.merchant.other_keys[serial] = key
        return {"serial_no": serial}
    if server.certificates is not None:
        cert = server.certificates.issue_app_cert(server.app.app_id, key)
        server.app.app_certs[cert_sn(cert)] = key
        server.app.issued.append(cert)
        return {"app_cert_sn": cert_sn(cert), "certificate_pem": crypto.certificate_pem(cert).decode()}
    server.app.other_public_keys.append(key)
    return {"registered": len(server.app.other_public_keys) + 1}


def signers(ctx: Context, data: dict[str, Any], request: web.Request) -> dict[str, Any]:
    """How many requests each merchant key signed, by the id the channel knows it by."""
    return {"signed_with": dict(_server(ctx, data).signed_with)}


def alipay_certificates(ctx: Context, data: dict[str, Any], request: web.Request) -> dict[str, Any]:
    """Certificate mode: what the merchant downloads from the console (GET), or replace the Alipay certificate
    that signs (POST ``/rotate``)."""
    if ctx.alipay is None or ctx.alipay.certificates is None:
        raise AdminError(400, "this sandbox does not serve Alipay in certificate mode")
    certs = ctx.alipay.certificates
    if request.method == "POST":
        certs.rotate(ctx.alipay.app.seller_id)
    return {
        "alipay_cert_sn": certs.sn,
        "alipay_cert_pem": certs.chain_pem(certs.cert).decode(),
        "alipay_root_cert_pem": certs.root_bundle.decode(),
        "alipay_root_cert_sn": certs.root_sn,
        "app_certs": [crypto.certificate_pem(c).decode() for c in ctx.alipay.app.issued],
    }


def unionpay_keys(ctx: Context, data: dict[str, Any], request: web.Request) -> dict[str, Any]:
    """UnionPay's chain as a merchant configures it (root, intermediate) and the certificate that signs now;
    POST ``/rotate`` issues a new signing certificate (``{"owner": …}`` puts another name in its CN)."""
    if ctx.unionpay is None:
        raise AdminError(400, "this sandbox does not serve UnionPay")
    identity = ctx.unionpay.identity
    if request.method == "POST":
        identity.rotate(**({"owner": str(data["owner"])} if data.get("owner") else {}))
    return {
        "root_pem": crypto.certificate_pem(identity.root.cert).decode(),
        "middle_pem": crypto.certificate_pem(identity.middle.cert).decode(),
        "signing_pem": identity.sign_pem,
        "signing_cert_id": str(identity.sign_cert.serial_number),
    }


def trades(ctx: Context, data: dict[str, Any], request: web.Request) -> dict[str, Any]:
    return {"trades": ctx.ledger.trades(data.get("channel"))}


def refunds(ctx: Context, data: dict[str, Any], request: web.Request) -> dict[str, Any]:
    return {"refunds": ctx.ledger.refunds(data.get("channel"))}


def notifications(ctx: Context, data: dict[str, Any], request: web.Request) -> dict[str, Any]:
    return {"notifications": ctx.ledger.notifications(data.get("channel"))}


def healthz(ctx: Context, data: dict[str, Any], request: web.Request) -> dict[str, Any]:
    return {
        "ok": True,
        "wechat": ctx.wechat is not None,
        "alipay": ctx.alipay is not None,
        "unionpay": ctx.unionpay is not None,
    }


def setup_admin(app: web.Application) -> None:
    r = app.router
    r.add_get("/_admin/healthz", route(healthz))
    r.add_post("/_admin/payer/pay", route(pay))
    r.add_post("/_admin/payer/scan", route(scan))
    r.add_post("/_admin/payer/fail", route(fail))
    r.add_post("/_admin/payer/app-pay", route(app_pay))
    r.add_post("/_admin/codepay", route(codepay))
    r.add_post("/_admin/codes", route(new_code))
    r.add_post("/_admin/refunds/hold", route(hold_refunds))
    r.add_post("/_admin/refunds/release", route(release_refunds))
    r.add_get("/_admin/faults", route(list_faults))
    r.add_post("/_admin/faults", route(add_fault))
    r.add_delete("/_admin/faults", route(clear_faults))
    r.add_post("/_admin/notifications/{id:\\d+}/resend", route(resend))
    r.add_get("/_admin/wechat/signing", route(signing))
    r.add_post("/_admin/wechat/signing", route(signing))
    r.add_get("/_admin/wechat/keys", route(wechat_keys))
    r.add_post("/_admin/wechat/rotate", route(wechat_rotate))
    r.add_post("/_admin/merchant-keys", route(merchant_keys))
    r.add_get("/_admin/signers", route(signers))
    r.add_get("/_admin/alipay/certificates", route(alipay_certificates))
    r.add_post("/_admin/alipay/certificates/rotate", route(alipay_certificates))
    r.add_get("/_admin/unionpay/keys", route(unionpay_keys))
    r.add_post("/_admin/unionpay/keys/rotate", route(unionpay_keys))
    r.add_get("/_admin/trades", route(trades))
    r.add_get("/_admin/refunds", route(refunds))
    r.add_get("/_admin/notifications", route(notifications))
