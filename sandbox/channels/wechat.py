"""A WeChat Pay API v3 server for one direct merchant, over the sandbox ledger.

It checks what the real one checks on every call (the ``WECHATPAY2-SHA256-RSA2048`` Authorization against the
merchant's public key and serial, a 5-minute timestamp window, mchid/appid), signs every answer with its platform
key, and calls back with AES-256-GCM resources. Two signing identities exist side by side, as during WeChat's
migration from platform certificates to the WeChat Pay public key: ``mode`` picks which one signs.

Modelled behaviour, beyond the happy path: ``close`` answers 204 even for an unknown order and ``ORDERPAID`` for
a paid one; refunds answer PROCESSING and finish later (or when released, if held) with a REFUND.SUCCESS
callback; codepay answers 202 ``{"trade_state": "USERPAYING"}`` when a scripted payer has to enter a password,
and sends no callback (as documented for 付款码). The trade bill is served for any day up to today.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import json
import re
import secrets
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge import clock
from sandbox.channels import bills, crypto
from sandbox.channels.faults import FaultBook, RefundHolds, Rule
from sandbox.channels.ledger import Ledger, new_serial
from sandbox.channels.notifier import Notifier
from sandbox.channels.payer import CodepayScript
from sandbox.channels.wire import with_faults

SCHEME = "WECHATPAY2-SHA256-RSA2048"
AUTH_PARAM = re.compile(r'(\w+)="([^"]*)"')
TRADE_TYPES = {"jsapi": "JSAPI", "native": "NATIVE", "h5": "MWEB", "app": "APP", "codepay": "MICROPAY"}
STATE_DESC = {
    "NOTPAY": "订单未支付",
    "USERPAYING": "用户支付中，需要输入密码",
    "SUCCESS": "支付成功",
    "REFUND": "转入退款",
    "CLOSED": "已关闭",
    "REVOKED": "已撤销",
    "PAYERROR": "支付失败",
}


class WechatFault(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


@dataclass
class WechatMerchant:
    mchid: str
    appid: str
    serial_no: str
    public_key: rsa.RSAPublicKey
    apiv3_key: bytes
    other_keys: dict[str, rsa.RSAPublicKey] = field(default_factory=dict)
    """Further merchant API certificates by serial (a merchant rotating its key has two for a while)."""

    def key_for(self, serial: str) -> rsa.RSAPublicKey | None:
        wanted = serial.upper().lstrip("0")
        keys = {self.serial_no: self.public_key, **self.other_keys}
        return next((k for s, k in keys.items() if s.upper().lstrip("0") == wanted), None)


@dataclass
class WechatPlatform:
    """The channel's signing identities: a platform certificate and a WeChat Pay public key (``PUB_KEY_ID_…``).

    ``cert`` is the certificate that signs; ``published`` are further certificates ``/v3/certificates`` lists.
    WeChat replaces a platform certificate by publishing the next one ahead and switching to it later:
    ``rotate`` publishes, ``activate`` switches."""

    cert_key: rsa.RSAPrivateKey
    cert: x509.Certificate
    public_key_key: rsa.RSAPrivateKey
    public_key_id: str
    mode: str = "certificate"
    published: list[tuple[rsa.RSAPrivateKey, x509.Certificate]] = field(default_factory=list)

    @property
    def cert_serial(self) -> str:
        return f"{self.cert.serial_number:X}"

    def certificates(self) -> list[x509.Certificate]:
        now = clock.utcnow()
        return [c for c in (self.cert, *(c for _, c in self.published)) if c.not_valid_after_utc > now]

    def rotate(self, mchid: str, *, days: int = 1825) -> x509.Certificate:
        key = crypto.new_rsa_key()
        cert = crypto.platform_certificate(key, mchid, days=days)
        self.published.append((key, cert))
        return cert

    def activate(self, serial: str) -> None:
        for i, (key, cert) in enumerate(self.published):
            if f"{cert.serial_number:X}" == serial.upper():
                self.published[i] = (self.cert_key, self.cert)
                self.cert_key, self.cert = key, cert
                return
        raise ValueError(f"no published platform certificate {serial}")

    def signer(self) -> tuple[str, rsa.RSAPrivateKey]:
        if self.mode == "public_key":
            return self.public_key_id, self.public_key_key
        return self.cert_serial, self.cert_key

    @classmethod
    def generate(cls, mchid: str) -> WechatPlatform:
        cert_key = crypto.new_rsa_key()
        pub_id = "PUB_KEY_ID_01" + "".join(secrets.choice("0123456789") for _ in range(30))
        return cls(cert_key, crypto.platform_certificate(cert_key, mchid), crypto.new_rsa_key(), pub_id)


def _bj(value: str | None) -> str | None:
    return dt.datetime.fromisoformat(value).isoformat() if value else None


@dataclass
class WechatSandbox:
    ledger: Ledger
    faults: FaultBook
    notifier: Notifier
    merchant: WechatMerchant
    platform: WechatPlatform
    refund_delay_s: float = 0.05
    codepay_scripts: dict[str, CodepayScript] = field(default_factory=dict)
    refund_holds: RefundHolds = field(default_factory=RefundHolds)
    signed_with: Counter[str] = field(default_factory=Counter)
    """How many requests each merchant certificate serial signed (rotation tests read it)."""
    _bill_files: dict[str, bytes] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    channel = "wechat"

    @property
    def merchant_id(self) -> str:
        return self.merchant.mchid

    def setup(self, app: web.Application) -> None:
        r = app.router
        for kind in TRADE_TYPES:
            r.add_post(f"/v3/pay/transactions/{kind}", self._handler(f"wechat.create.{kind}", self.create))
        r.add_get("/v3/pay/transactions/out-trade-no/{out_trade_no}", self._handler("wechat.query", self.query))
        r.add_get("/v3/pay/transactions/id/{transaction_id}", self._handler("wechat.query", self.query_by_id))
        r.add_post("/v3/pay/transactions/out-trade-no/{out_trade_no}/close", self._handler("wechat.close", self.close))
        r.add_post(
            "/v3/pay/transactions/out-trade-no/{out_trade_no}/reverse", self._handler("wechat.reverse", self.reverse)
        )
        r.add_post("/v3/refund/domestic/refunds", self._handler("wechat.refund", self.refund))
        r.add_get("/v3/refund/domestic/refunds/{out_refund_no}", self._handler("wechat.refund_query", self.get_refund))
        r.add_get("/v3/bill/tradebill", self._handler("wechat.tradebill", self.tradebill))
        r.add_get("/v3/billdownload/file", self._handler("wechat.billdownload", self.billdownload))
        r.add_get("/v3/certificates", self._handler("wechat.certificates", self.certificates))

    async def close_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def sign_headers(self, body: bytes, *, spoil: bool = False) -> dict[str, str]:
        serial, key = self.platform.signer()
        timestamp, nonce = str(int(clock.now())), secrets.token_hex(16)
        signature = crypto.rsa_sign(key, f"{timestamp}\n{nonce}\n".encode() + body + b"\n")
        if spoil:
            signature = crypto.rsa_sign(key, b"not this message")
        return {
            "Wechatpay-Timestamp": timestamp,
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Signature": signature,
            "Wechatpay-Serial": serial,
            "Wechatpay-Signature-Type": SCHEME,
            "Request-ID": uuid.uuid4().hex,
        }

    def answer(self, status: int, data: dict[str, Any] | None = None, *, spoil: bool = False) -> web.Response:
        body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() if data is not None else b""
        headers = self.sign_headers(body, spoil=spoil)
        if data is not None:
            headers["Content-Type"] = "application/json; charset=utf-8"
        return web.Response(status=status, body=body, headers=headers)

    def _handler(self, name: str, method: Any) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            try:
                self.authenticate(request, body)
            except WechatFault as exc:
                return self.answer(exc.status, {"code": exc.code, "message": exc.message})

            async def apply() -> web.StreamResponse:
                try:
                    return await method(request, body)
                except WechatFault as exc:
                    return self.answer(exc.status, {"code": exc.code, "message": exc.message})

            def error(rule: Rule) -> web.StreamResponse:
                return self.answer(rule.status, {"code": rule.code, "message": rule.message})

            def corrupt(response: web.StreamResponse, rule: Rule) -> web.StreamResponse:
                if rule.mode == "tamper" and isinstance(response, web.Response) and response.body:
                    return web.Response(status=response.status, body=self._tampered(bytes(response.body)))
                if isinstance(response, web.Response):
                    spoiled = self.sign_headers(b"", spoil=True)["Wechatpay-Signature"]
                    response.headers["Wechatpay-Signature"] = spoiled
                return response

            return await with_faults(request, self.faults, name, apply, error, corrupt)

        return handle

    @staticmethod
    def _tampered(served: bytes) -> bytes:
        plain = gzip.decompress(served) if served[:2] == b"\x1f\x8b" else served
        altered = plain.replace(b"`0.0", b"`9.0", 1) if b"`0.0" in plain else plain + b"\n"
        return gzip.compress(altered, mtime=0) if served[:2] == b"\x1f\x8b" else altered

    def authenticate(self, request: web.Request, body: bytes) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, rest = header.partition(" ")
        if scheme != SCHEME:
            raise WechatFault(401, "SIGN_ERROR", f"Authorization 的认证类型不是 {SCHEME}")
        params = dict(AUTH_PARAM.findall(rest))
        missing = {"mchid", "nonce_str", "signature", "timestamp", "serial_no"} - set(params)
        if missing:
            raise WechatFault(401, "SIGN_ERROR", f"Authorization 缺少 {', '.join(sorted(missing))}")
        if params["mchid"] != self.merchant.mchid:
            raise WechatFault(401, "SIGN_ERROR", f"商户号 {params['mchid']} 不存在")
        merchant_key = self.merchant.key_for(params["serial_no"])
        if merchant_key is None:
            raise WechatFault(401, "SIGN_ERROR", "商户证书序列号有误")
        try:
            stamp = int(params["timestamp"])
        except ValueError:
            raise WechatFault(401, "SIGN_ERROR", "timestamp 不是整数") from None
        if abs(clock.now() - stamp) > 300:
            raise WechatFault(401, "SIGN_ERROR", "请求的时间戳已过期")
        message = f"{request.method}\n{request.raw_path}\n{params['timestamp']}\n{params['nonce_str']}\n".encode()
        if not crypto.rsa_verify(merchant_key, message + body + b"\n", params["signature"]):
            raise WechatFault(401, "SIGN_ERROR", "签名错误，请检查后再试")
        self.signed_with[params["serial_no"].upper()] += 1

    def _json(self, body: bytes) -> dict[str, Any]:
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise WechatFault(400, "PARAM_ERROR", "请求体不是合法的 JSON") from None
        if not isinstance(data, dict):
            raise WechatFault(400, "PARAM_ERROR", "请求体应为 JSON 对象")
        return data

    def _check_ids(self, data: dict[str, Any], *, appid: bool = True) -> None:
        if data.get("mchid") != self.merchant.mchid:
            raise WechatFault(400, "PARAM_ERROR", "mchid 与请求的商户号不一致")
        if appid and data.get("appid") != self.merchant.appid:
            raise WechatFault(400, "APPID_MCHID_NOT_MATCH", "appid 和 mch_id 不匹配")

    def trade_json(self, trade: dict[str, Any]) -> dict[str, Any]:
        state = trade["state"]
        out: dict[str, Any] = {
            "appid": trade["appid"],
            "mchid": trade["merchant"],
            "out_trade_no": trade["out_trade_no"],
            "trade_state": state,
            "trade_state_desc": STATE_DESC.get(state, state),
            "amount": {"total": trade["amount_fen"], "currency": "CNY"},
        }
        if trade["paid_at"]:
            out.update(
                transaction_id=trade["trade_no"],
                trade_type=trade["scene"],
                bank_type="OTHERS",
                success_time=_bj(trade["paid_at"]),
                payer={"openid": trade["payer_id"]},
            )
            out["amount"].update(payer_total=trade["amount_fen"], payer_currency="CNY")
            if trade["attach"]:
                out["attach"] = trade["attach"]
        return out

    def refund_json(self, refund: dict[str, Any], trade: dict[str, Any]) -> dict[str, Any]:
        return {
            "refund_id": refund["refund_no"],
            "out_refund_no": refund["out_refund_no"],
            "transaction_id": trade["trade_no"],
            "out_trade_no": trade["out_trade_no"],
            "channel": "ORIGINAL",
            "user_received_account": "支付用户零钱",
            "success_time": _bj(refund["succeeded_at"]),
            "create_time": _bj(refund["created_at"]),
            "status": refund["state"],
            "funds_account": "AVAILABLE",
            "amount": {
                "total": refund["total_fen"],
                "refund": refund["amount_fen"],
                "payer_total": refund["total_fen"],
                "payer_refund": refund["amount_fen"],
                "settlement_refund": refund["amount_fen"],
                "settlement_total": refund["total_fen"],
                "discount_refund": 0,
                "currency": "CNY",
            },
        }

    def _trade(self, out_trade_no: str) -> dict[str, Any]:
        trade = self.ledger.trade(self.channel, self.merchant.mchid, out_trade_no)
        if trade is None:
            raise WechatFault(404, "ORDER_NOT_EXIST", "订单不存在")
        return trade

    async def create(self, request: web.Request, body: bytes) -> web.Response:
        kind = request.path.rsplit("/", 1)[1]
        data = self._json(body)
        self._check_ids(data)
        out_trade_no = data.get("out_trade_no")
        amount = (data.get("amount") or {}).get("total")
        if not isinstance(out_trade_no, str) or not 6 <= len(out_trade_no) <= 32:
            raise WechatFault(400, "PARAM_ERROR", "out_trade_no 长度应为 6-32")
        if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            raise WechatFault(400, "PARAM_ERROR", "amount.total 应为正整数（分）")
        if not data.get("description"):
            raise WechatFault(400, "PARAM_ERROR", "缺少参数 description")
        payer = data.get("payer") or {}
        if kind == "jsapi" and not payer.get("openid"):
            raise WechatFault(400, "PARAM_ERROR", "JSAPI 支付必须传 openid")
        if kind == "codepay":
            if not payer.get("auth_code"):
                raise WechatFault(400, "PARAM_ERROR", "缺少参数 payer.auth_code")
        elif not str(data.get("notify_url", "")).startswith(("http://", "https://")):
            raise WechatFault(400, "PARAM_ERROR", "notify_url 应为 http(s) 地址")
        existing = self.ledger.trade(self.channel, self.merchant.mchid, out_trade_no)
        fingerprint = json.dumps({k: data.get(k) for k in ("amount", "description", "payer")}, sort_keys=True)
        if existing is not None:
            if existing["state"] in ("SUCCESS", "REFUND"):
                raise WechatFault(400, "ORDERPAID", "该订单已支付")
            if existing["state"] in ("CLOSED", "REVOKED"):
                raise WechatFault(400, "ORDER_CLOSED", "当前订单已关闭，请重新下单")
            if existing["request"] != fingerprint or existing["scene"] != TRADE_TYPES[kind]:
                raise WechatFault(403, "OUT_TRADE_NO_USED", "商户订单号重复")
            trade = existing
        else:
            trade = self.ledger.add_trade(
                channel=self.channel,
                merchant=self.merchant.mchid,
                out_trade_no=out_trade_no,
                trade_no=new_serial("4200", self.ledger.now()),
                appid=data["appid"],
                scene=TRADE_TYPES[kind],
                amount_fen=amount,
                description=data["description"],
                notify_url=data.get("notify_url"),
                attach=data.get("attach"),
                payer_id=payer.get("openid"),
                auth_code=payer.get("auth_code"),
                state="NOTPAY",
                request=fingerprint,
                expires_at=data.get("time_expire"),
            )
        if kind == "codepay":
            return self._codepay(trade)
        prepay_id = "wx" + trade["trade_no"]
        if kind == "native":
            return self.answer(200, {"code_url": f"weixin://wxpay/bizpayurl?pr={trade['trade_no'][-10:]}"})
        if kind == "h5":
            return self.answer(
                200, {"h5_url": f"https://wx.tenpay.com/cgi-bin/mmpayweb-bin/checkmweb?prepay_id={prepay_id}"}
            )
        return self.answer(200, {"prepay_id": prepay_id})

    def _codepay(self, trade: dict[str, Any]) -> web.Response:
        script = self.codepay_scripts.get(trade["auth_code"] or "", CodepayScript())
        if trade["state"] != "NOTPAY":
            return self.answer(200, self.trade_json(trade))
        if script.outcome == "error":
            self.ledger.update_trade(trade, state="PAYERROR")
            raise WechatFault(script.status, script.code, script.message)
        if script.outcome == "userpaying":
            self.ledger.update_trade(trade, state="USERPAYING")
            return self.answer(202, {"trade_state": "USERPAYING"})
        trade = self.pay(trade)
        return self.answer(200, self.trade_json(trade))

    def _advance_codepay(self, trade: dict[str, Any]) -> dict[str, Any]:
        trade = self.ledger.update_trade(trade, queries=trade["queries"] + 1)
        if trade["state"] != "USERPAYING":
            return trade
        script = self.codepay_scripts.get(trade["auth_code"] or "", CodepayScript())
        if not script.decided(trade, self.ledger.now()):
            return trade
        if script.then == "paid":
            return self.pay(trade)
        if script.then == "payerror":
            return self.ledger.update_trade(trade, state="PAYERROR")
        return trade

    async def query(self, request: web.Request, body: bytes) -> web.Response:
        if request.query.get("mchid") != self.merchant.mchid:
            raise WechatFault(400, "PARAM_ERROR", "mchid 参数有误")
        trade = self._advance_codepay(self._trade(request.match_info["out_trade_no"]))
        return self.answer(200, self.trade_json(trade))

    async def query_by_id(self, request: web.Request, body: bytes) -> web.Response:
        if request.query.get("mchid") != self.merchant.mchid:
            raise WechatFault(400, "PARAM_ERROR", "mchid 参数有误")
        trade = self.ledger.trade_by_no(self.channel, self.merchant.mchid, request.match_info["transaction_id"])
        if trade is None:
            raise WechatFault(404, "ORDER_NOT_EXIST", "订单不存在")
        return self.answer(200, self.trade_json(self._advance_codepay(trade)))

    async def close(self, request: web.Request, body: bytes) -> web.Response:
        self._check_ids(self._json(body), appid=False)
        trade = self.ledger.trade(self.channel, self.merchant.mchid, request.match_info["out_trade_no"])
        if trade is None:
            return self.answer(204)
        if trade["state"] in ("SUCCESS", "REFUND"):
            raise WechatFault(400, "ORDERPAID", "订单已支付，不能关闭")
        if trade["state"] == "NOTPAY":
            self.ledger.update_trade(trade, state="CLOSED", closed_at=self.ledger.now().isoformat())
        return self.answer(204)

    async def reverse(self, request: web.Request, body: bytes) -> web.Response:
        self._check_ids(self._json(body))
        trade = self._trade(request.match_info["out_trade_no"])
        if trade["scene"] != "MICROPAY":
            raise WechatFault(400, "INVALID_REQUEST", "非付款码订单不能撤销")
        self.revoke(trade)
        return self.answer(
            200, {"appid": trade["appid"], "mchid": trade["merchant"], "out_trade_no": trade["out_trade_no"]}
        )

    def revoke(self, trade: dict[str, Any]) -> dict[str, Any]:
        """撤销: close an unpaid codepay trade, or give a paid one's money back."""
        now = self.ledger.now().isoformat()
        if trade["state"] in ("SUCCESS", "REFUND"):
            left = trade["amount_fen"] - trade["refunded_fen"]
            if left > 0:
                self.ledger.add_refund(
                    channel=self.channel,
                    merchant=trade["merchant"],
                    out_trade_no=trade["out_trade_no"],
                    out_refund_no=f"REVOKE{trade['out_trade_no']}"[:64],
                    refund_no=new_serial("5030", self.ledger.now()),
                    amount_fen=left,
                    total_fen=trade["amount_fen"],
                    state="SUCCESS",
                    reason="撤销",
                    succeeded_at=now,
                )
            return self.ledger.update_trade(trade, state="REVOKED", refunded_fen=trade["amount_fen"], closed_at=now)
        if trade["state"] in ("NOTPAY", "USERPAYING", "PAYERROR"):
            return self.ledger.update_trade(trade, state="REVOKED", closed_at=now)
        return trade

    def pay(self, trade: dict[str, Any], *, payer_id: str | None = None) -> dict[str, Any]:
        """The payer pays: SUCCESS now, and the payment callback for every product but codepay."""
        trade = self.ledger.update_trade(
            trade,
            state="SUCCESS",
            paid_at=self.ledger.now().isoformat(),
            payer_id=payer_id or trade["payer_id"] or "o" + secrets.token_urlsafe(20)[:27],
        )
        if trade["scene"] != "MICROPAY" and trade["notify_url"]:
            self._notify("payment", trade["out_trade_no"], trade["notify_url"], self.trade_json(trade))
        return trade

    def _notify(self, kind: str, ref: str, url: str, resource: dict[str, Any]) -> None:
        event = "TRANSACTION.SUCCESS" if kind == "payment" else f"REFUND.{resource['refund_status']}"
        original = "transaction" if kind == "payment" else "refund"
        notification_id = str(uuid.uuid4())
        plaintext = json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode()

        def build() -> tuple[dict[str, str], bytes]:
            envelope = {
                "id": notification_id,
                "create_time": self.ledger.now().isoformat(),
                "resource_type": "encrypt-resource",
                "event_type": event,
                "summary": "支付成功" if kind == "payment" else "退款成功",
                "resource": {"original_type": original, **crypto.seal(self.merchant.apiv3_key, original, plaintext)},
            }
            body = json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()
            headers = self.sign_headers(body)
            headers["Content-Type"] = "application/json"
            return headers, body

        self.notifier.send(
            channel=self.channel,
            merchant=self.merchant.mchid,
            kind=kind,
            ref=ref,
            notification_id=notification_id,
            url=url,
            build=build,
            accepted=lambda status, _answer: 200 <= status < 300,
        )

    async def refund(self, request: web.Request, body: bytes) -> web.Response:
        data = self._json(body)
        out_refund_no = data.get("out_refund_no")
        amount = data.get("amount") or {}
        refund_fen, total_fen = amount.get("refund"), amount.get("total")
        if not isinstance(out_refund_no, str) or not 1 <= len(out_refund_no) <= 64:
            raise WechatFault(400, "PARAM_ERROR", "out_refund_no 长度应为 1-64")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (refund_fen, total_fen)):
            raise WechatFault(400, "PARAM_ERROR", "amount.refund 与 amount.total 应为正整数（分）")
        assert isinstance(refund_fen, int) and isinstance(total_fen, int)
        if data.get("out_trade_no"):
            trade = self.ledger.trade(self.channel, self.merchant.mchid, data["out_trade_no"])
        else:
            trade = self.ledger.trade_by_no(self.channel, self.merchant.mchid, str(data.get("transaction_id")))
        if trade is None:
            raise WechatFault(404, "RESOURCE_NOT_EXISTS", "订单不存在")
        existing = self.ledger.refund(self.channel, self.merchant.mchid, out_refund_no)
        if existing is not None:
            if existing["out_trade_no"] != trade["out_trade_no"] or existing["amount_fen"] != refund_fen:
                raise WechatFault(400, "INVALID_REQUEST", "退款单号已存在，且与本次请求的订单或金额不一致")
            return self.answer(200, self.refund_json(existing, trade))
        if trade["state"] not in ("SUCCESS", "REFUND"):
            raise WechatFault(400, "INVALID_REQUEST", f"订单状态 {trade['state']} 不可退款")
        if total_fen != trade["amount_fen"]:
            raise WechatFault(400, "PARAM_ERROR", "订单金额 amount.total 与原订单不一致")
        if refund_fen > trade["amount_fen"] - trade["refunded_fen"]:
            raise WechatFault(400, "INVALID_REQUEST", "申请退款金额超过订单可退金额")
        held = self.refund_holds.take(trade["out_trade_no"])
        refund = self.ledger.add_refund(
            channel=self.channel,
            merchant=self.merchant.mchid,
            out_trade_no=trade["out_trade_no"],
            out_refund_no=out_refund_no,
            refund_no=new_serial("5030", self.ledger.now()),
            amount_fen=refund_fen,
            total_fen=total_fen,
            state="PROCESSING",
            reason=data.get("reason"),
            notify_url=data.get("notify_url"),
            held=int(held),
        )
        trade = self.ledger.update_trade(trade, state="REFUND", refunded_fen=trade["refunded_fen"] + refund_fen)
        if not held:
            self._later(self.refund_delay_s, out_refund_no)
        return self.answer(200, self.refund_json(refund, trade))

    def _later(self, delay: float, out_refund_no: str) -> None:
        async def finish() -> None:
            await clock.sleep(delay)
            self.finish_refund(out_refund_no)

        task = asyncio.get_running_loop().create_task(finish())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def finish_refund(self, out_refund_no: str, state: str = "SUCCESS") -> dict[str, Any] | None:
        """PROCESSING → SUCCESS (or ABNORMAL/CLOSED), with the refund callback when a notify_url was given."""
        refund = self.ledger.refund(self.channel, self.merchant.mchid, out_refund_no)
        if refund is None or refund["state"] != "PROCESSING":
            return refund
        values: dict[str, Any] = {"state": state, "held": 0}
        if state == "SUCCESS":
            values["succeeded_at"] = self.ledger.now().isoformat()
        refund = self.ledger.update_refund(refund, **values)
        trade = self._trade(refund["out_trade_no"])
        if state != "SUCCESS":
            self.ledger.update_trade(trade, refunded_fen=trade["refunded_fen"] - refund["amount_fen"])
        if refund["notify_url"]:
            resource = {
                "mchid": trade["merchant"],
                "out_trade_no": trade["out_trade_no"],
                "transaction_id": trade["trade_no"],
                "out_refund_no": refund["out_refund_no"],
                "refund_id": refund["refund_no"],
                "refund_status": state,
                "success_time": _bj(refund["succeeded_at"]),
                "user_received_account": "支付用户零钱",
                "amount": {
                    "total": refund["total_fen"],
                    "refund": refund["amount_fen"],
                    "payer_total": refund["total_fen"],
                    "payer_refund": refund["amount_fen"],
                },
            }
            self._notify("refund", refund["out_refund_no"], refund["notify_url"], resource)
        return refund

    async def get_refund(self, request: web.Request, body: bytes) -> web.Response:
        refund = self.ledger.refund(self.channel, self.merchant.mchid, request.match_info["out_refund_no"])
        if refund is None:
            raise WechatFault(404, "RESOURCE_NOT_EXISTS", "退款单不存在")
        return self.answer(200, self.refund_json(refund, self._trade(refund["out_trade_no"])))

    async def tradebill(self, request: web.Request, body: bytes) -> web.Response:
        try:
            day = dt.date.fromisoformat(request.query.get("bill_date", ""))
        except ValueError:
            raise WechatFault(400, "PARAM_ERROR", "bill_date 格式应为 YYYY-MM-DD") from None
        bill_type = request.query.get("bill_type", "ALL")
        if bill_type not in bills.WECHAT_COLUMNS:
            raise WechatFault(400, "PARAM_ERROR", "bill_type 应为 ALL、SUCCESS 或 REFUND")
        if day > self.ledger.now().date():
            raise WechatFault(400, "INVALID_REQUEST", "账单日期不能晚于今天")
        payments = self.ledger.paid_on(self.channel, self.merchant.mchid, day)
        refunds = self.ledger.refunded_on(self.channel, self.merchant.mchid, day)
        if not payments and not refunds:
            raise WechatFault(400, "NO_STATEMENT_EXIST", "账单文件不存在")
        bill = bills.wechat_tradebill(self.merchant.mchid, payments, refunds, bill_type=bill_type)
        served, digest = bills.wechat_package(bill, request.query.get("tar_type"))
        token = secrets.token_urlsafe(24)
        self._bill_files[token] = served
        url = f"{request.url.origin()}/v3/billdownload/file?token={token}"
        return self.answer(200, {"hash_type": "SHA1", "hash_value": digest, "download_url": url})

    async def billdownload(self, request: web.Request, body: bytes) -> web.Response:
        served = self._bill_files.get(request.query.get("token", ""))
        if served is None:
            raise WechatFault(400, "INVALID_REQUEST", "下载链接已失效")
        return web.Response(body=served, content_type="application/octet-stream")

    async def certificates(self, request: web.Request, body: bytes) -> web.Response:
        """Every unexpired platform certificate, sealed with the APIv3 key; the answer signed by the current
        signer (the public key in public-key mode), as every answer is."""
        cst = dt.timezone(dt.timedelta(hours=8))
        entries = []
        for cert in self.platform.certificates():
            sealed = crypto.seal(self.merchant.apiv3_key, "certificate", crypto.certificate_pem(cert))
            entries.append(
                {
                    "serial_no": f"{cert.serial_number:X}",
                    "effective_time": cert.not_valid_before_utc.astimezone(cst).isoformat(),
                    "expire_time": cert.not_valid_after_utc.astimezone(cst).isoformat(),
                    "encrypt_certificate": sealed,
                }
            )
        return self.answer(200, {"data": entries})
