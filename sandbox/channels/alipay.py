"""An Alipay OpenAPI gateway (``/gateway.do``, RSA2; public-key or public-key-certificate mode) for one app,
over the sandbox ledger.

Requests come as GET query or form POST; the signature is checked over every parameter but ``sign`` and the empty
ones, sorted, ``k=v`` joined by ``&``, with the app public key. Answers are
``{"<method>_response": {...}, "sign": "..."}`` signed over the exact JSON text of the inner object with the
"Alipay" key. In certificate mode requests must name a registered app certificate (``app_cert_sn``) and the
root bundle (``alipay_root_cert_sn``); answers name the Alipay certificate that signed them (``alipay_cert_sn``),
which ``alipay.open.app.alipaycert.download`` hands out. Async notifications are form POSTs signed over every
field but ``sign``/``sign_type``, re-sent unchanged until the merchant answers exactly ``success``.

Modelled behaviour: a precreate (QR) trade does not exist for query/close until the payer scans it (closing it
before makes any later scan fail, as the real one's ``timeout_express`` would); ``trade.pay`` answers 10003 while a
scripted payer enters a password; a repeated refund with the same ``out_request_no`` answers ``fund_change=N``;
a refund query for an unknown request answers 10000 with no refund fields; a held refund answers ``fund_change=N``
and shows no ``refund_status`` until released. The request ``timestamp`` must be well formed and within a day:
SDKs write it in the host's local time, which on a UTC host is 8 h off Beijing.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import json
import secrets
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl, urlencode

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge import clock
from sandbox.channels import bills, crypto, pki
from sandbox.channels.faults import FaultBook, RefundHolds, Rule
from sandbox.channels.ledger import CST, Ledger, new_serial
from sandbox.channels.notifier import Notifier
from sandbox.channels.payer import CodepayScript
from sandbox.channels.wire import with_faults

GATEWAY = "/gateway.do"
BILLS = "/_bills/alipay/{token}"
CLIENT_SIDE = ("alipay.trade.wap.pay", "alipay.trade.app.pay", "alipay.trade.page.pay")


class AlipayFault(Exception):
    def __init__(self, code: str, msg: str, sub_code: str, sub_msg: str) -> None:
        super().__init__(f"{code} {sub_code}: {sub_msg}")
        self.code, self.msg, self.sub_code, self.sub_msg = code, msg, sub_code, sub_msg


def business(sub_code: str, sub_msg: str) -> AlipayFault:
    return AlipayFault("40004", "Business Failed", sub_code, sub_msg)


def invalid(sub_code: str, sub_msg: str) -> AlipayFault:
    return AlipayFault("40002", "Invalid Arguments", sub_code, sub_msg)


def yuan(fen: int) -> str:
    return bills.yuan(fen)


def fen(value: Any) -> int:
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise invalid("isv.invalid-parameter", f"金额格式错误: {value!r}") from None
    if amount <= 0 or amount != amount.quantize(Decimal("0.01")):
        raise invalid("isv.invalid-parameter", f"金额应为正数且至多两位小数: {value!r}")
    return int(amount * 100)


def signing_content(params: dict[str, str], exclude: tuple[str, ...]) -> bytes:
    return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in exclude and v != "").encode()


def _stamp(value: str | None) -> str:
    return dt.datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S") if value else ""


@dataclass
class AlipayApp:
    app_id: str
    app_public_key: rsa.RSAPublicKey
    seller_id: str
    other_public_keys: list[rsa.RSAPublicKey] = field(default_factory=list)
    """Further app keys the app registered (public-key mode; a rotation has two for a while)."""
    app_certs: dict[str, rsa.RSAPublicKey] = field(default_factory=dict)
    """App public-key certificates by SN (certificate mode)."""
    issued: list[x509.Certificate] = field(default_factory=list)
    """The app certificates the sandbox issued (what the merchant downloads from the console)."""


def cert_sn(cert: x509.Certificate) -> str:
    """Alipay's certificate SN: md5 of the issuer (RFC 2253, as Java writes it) and the decimal serial."""
    return hashlib.md5((cert.issuer.rfc4514_string() + str(cert.serial_number)).encode()).hexdigest()


@dataclass
class AlipayCertificates:
    """Public-key-certificate mode: the sandbox's Ant-Financial-shaped CA (a root and a "Class 2" intermediate),
    the Alipay certificate that signs answers (replaced by ``rotate``; the old ones stay downloadable), and the
    app certificates it issues for the apps' public keys. The root bundle carries a second, unrelated root, as
    Alipay's does, so ``alipay_root_cert_sn`` joins two SNs."""

    root: pki.Authority
    other_root: pki.Authority
    class2: pki.Authority
    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    previous: list[x509.Certificate] = field(default_factory=list)

    @classmethod
    def generate(cls, pid: str) -> AlipayCertificates:
        org = "Sandbox Ant Financial"
        root = pki.Authority.root(
            pki.name(cn="Ant Financial Certification Authority R1", o=org, ou="Certification Authority")
        )
        other = pki.Authority.root(
            pki.name(cn="iTrusChina Class 2 Root CA - G3", o="iTrusChina", ou="China Trust Network")
        )
        class2 = root.intermediate(
            pki.name(cn="Ant Financial Certification Authority Class 2 R1", o=org, ou="Certification Authority")
        )
        made = cls(root, other, class2, crypto.new_rsa_key(), root.cert)
        made.rotate(pid)
        made.previous.clear()
        return made

    def rotate(self, pid: str) -> x509.Certificate:
        key = crypto.new_rsa_key()
        subject = pki.name(cn=f"支付宝(中国)网络技术有限公司-{pid}", o="Sandbox Alipay", ou="Alipay")
        self.previous.append(self.cert)
        self.key, self.cert = key, self.class2.issue(subject, key.public_key(), days=365)
        return self.cert

    def issue_app_cert(self, app_id: str, public_key: rsa.RSAPublicKey) -> x509.Certificate:
        return self.class2.issue(pki.name(cn=app_id, o="Sandbox app", ou="Alipay"), public_key, days=365)

    @property
    def sn(self) -> str:
        return cert_sn(self.cert)

    @property
    def root_bundle(self) -> bytes:
        return crypto.certificate_pem(self.root.cert) + b"\n" + crypto.certificate_pem(self.other_root.cert)

    @property
    def root_sn(self) -> str:
        return f"{cert_sn(self.root.cert)}_{cert_sn(self.other_root.cert)}"

    def chain_pem(self, cert: x509.Certificate) -> bytes:
        """An Alipay certificate as Alipay hands it out: the certificate, then its intermediate."""
        return crypto.certificate_pem(cert) + crypto.certificate_pem(self.class2.cert)

    def by_sn(self, sn: str) -> x509.Certificate | None:
        return next((c for c in (self.cert, *self.previous) if cert_sn(c) == sn), None)


@dataclass
class AlipaySandbox:
    ledger: Ledger
    faults: FaultBook
    notifier: Notifier
    app: AlipayApp
    alipay_key: rsa.RSAPrivateKey
    certificates: AlipayCertificates | None = None
    codepay_scripts: dict[str, CodepayScript] = field(default_factory=dict)
    refund_holds: RefundHolds = field(default_factory=RefundHolds)
    signed_with: Counter[str] = field(default_factory=Counter)
    """How many requests each app key signed (by app_cert_sn, or by key number in public-key mode)."""
    _bill_files: dict[str, bytes] = field(default_factory=dict)

    channel = "alipay"

    def setup(self, app: web.Application) -> None:
        app.router.add_route("*", GATEWAY, self.gateway)
        app.router.add_get(BILLS, self.bill_file)

    @property
    def merchant(self) -> str:
        return self.app.app_id

    @property
    def merchant_id(self) -> str:
        return self.app.app_id

    @property
    def signing_key(self) -> rsa.RSAPrivateKey:
        return self.certificates.key if self.certificates is not None else self.alipay_key

    def answer(self, method: str, data: dict[str, Any], *, spoil: bool = False) -> web.Response:
        inner = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        signature = crypto.rsa_sign(self.signing_key, b"spoiled" if spoil else inner.encode())
        key = method.replace(".", "_") + "_response"
        named = f'"alipay_cert_sn":"{self.certificates.sn}",' if self.certificates is not None else ""
        text = f'{{"{key}":{inner},{named}"sign":"{signature}"}}'
        return web.Response(text=text, content_type="application/json", charset="utf-8")

    @staticmethod
    def _fault_body(fault: AlipayFault) -> dict[str, Any]:
        return {"code": fault.code, "msg": fault.msg, "sub_code": fault.sub_code, "sub_msg": fault.sub_msg}

    async def read_params(self, request: web.Request) -> dict[str, str]:
        raw_query = request.rel_url.raw_query_string
        body = await request.read() if request.method == "POST" else b""
        probe = dict(parse_qsl(raw_query, encoding="latin-1")) | dict(parse_qsl(body.decode("latin-1")))
        charset = probe.get("charset", "utf-8")
        try:
            params = dict(parse_qsl(raw_query, encoding=charset, errors="strict"))
            params.update(parse_qsl(body.decode("ascii", errors="strict"), encoding=charset, errors="strict"))
        except (LookupError, UnicodeDecodeError):
            raise invalid("isv.invalid-charset", f"无法按 {charset} 解码请求") from None
        return params

    def authenticate(self, params: dict[str, str]) -> dict[str, Any]:
        for name in ("app_id", "method", "sign", "sign_type", "timestamp", "charset", "version"):
            if not params.get(name):
                raise invalid(f"isv.missing-{name.replace('_', '-')}", f"缺少参数 {name}")
        if params["app_id"] != self.app.app_id:
            raise invalid("isv.invalid-app-id", "无效的AppID参数")
        if params["sign_type"] != "RSA2":
            raise invalid("isv.invalid-signature-type", "签名类型仅支持 RSA2")
        try:
            sent = dt.datetime.strptime(params["timestamp"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=CST)
        except ValueError:
            raise invalid("isv.invalid-timestamp", "timestamp 格式应为 yyyy-MM-dd HH:mm:ss") from None
        if abs(clock.now() - sent.timestamp()) > 86400:
            raise invalid("isv.invalid-timestamp", "请求时间与支付宝服务器时间相差超过一天")
        content = signing_content(params, ("sign",))
        if self.certificates is not None:
            app_sn = params.get("app_cert_sn", "")
            if app_sn not in self.app.app_certs:
                raise invalid("isv.app-cert-sn-not-match", f"应用公钥证书SN {app_sn!r} 不匹配")
            if params.get("alipay_root_cert_sn") != self.certificates.root_sn:
                raise invalid("isv.alipay-root-cert-sn-not-match", "支付宝根证书SN不匹配")
            keys = {app_sn: self.app.app_certs[app_sn]}
        else:
            keys = {f"key{i}": k for i, k in enumerate([self.app.app_public_key, *self.app.other_public_keys])}
        signer = next((name for name, k in keys.items() if crypto.rsa_verify(k, content, params["sign"])), None)
        if signer is None:
            raise invalid("isv.invalid-signature", "验签出错，请确认charset、sign_type与私钥是否匹配")
        self.signed_with[signer] += 1
        try:
            biz = json.loads(params.get("biz_content") or "{}")
        except json.JSONDecodeError:
            raise invalid("isv.invalid-biz-content", "biz_content 不是合法的 JSON") from None
        if not isinstance(biz, dict):
            raise invalid("isv.invalid-biz-content", "biz_content 应为 JSON 对象")
        return biz

    async def gateway(self, request: web.Request) -> web.StreamResponse:
        method = "alipay.error"
        try:
            params = await self.read_params(request)
            method = params.get("method") or method
            biz = self.authenticate(params)
        except AlipayFault as exc:
            return self.answer(method, self._fault_body(exc))
        if method in CLIENT_SIDE:
            return self._cashier(params, biz)
        handler: Callable[[dict[str, str], dict[str, Any], web.Request], dict[str, Any]] | None = {
            "alipay.trade.precreate": self.precreate,
            "alipay.trade.create": self.create,
            "alipay.trade.pay": self.pay_barcode,
            "alipay.trade.query": self.query,
            "alipay.trade.close": self.close,
            "alipay.trade.cancel": self.cancel,
            "alipay.trade.refund": self.refund,
            "alipay.trade.fastpay.refund.query": self.refund_query,
            "alipay.data.dataservice.bill.downloadurl.query": self.bill_url,
            "alipay.open.app.alipaycert.download": self.certificate_download,
        }.get(method)
        if handler is None:
            return self.answer(method, self._fault_body(invalid("isv.invalid-method", f"不存在的方法名 {method}")))

        async def apply() -> web.StreamResponse:
            assert handler is not None
            try:
                result = handler(params, biz, request)
            except AlipayFault as exc:
                return self.answer(method, self._fault_body(exc))
            return self.answer(
                method, {"code": result.pop("code", "10000"), "msg": result.pop("msg", "Success"), **result}
            )

        def error(rule: Rule) -> web.StreamResponse:
            code = rule.code if rule.code.isdigit() else "20000"
            return self.answer(
                method,
                {
                    "code": code,
                    "msg": "Service Currently Unavailable",
                    "sub_code": "isp.unknow-error",
                    "sub_msg": rule.message,
                },
            )

        def corrupt(response: web.StreamResponse, rule: Rule) -> web.StreamResponse:
            if rule.mode == "tamper":
                return response
            assert isinstance(response, web.Response) and response.text is not None
            document = json.loads(response.text)
            key = method.replace(".", "_") + "_response"
            return self.answer(method, document[key], spoil=True)

        return await with_faults(request, self.faults, method, apply, error, corrupt)

    def _trade(self, biz: dict[str, Any], *, visible: bool = True) -> dict[str, Any]:
        trade = None
        if biz.get("out_trade_no"):
            trade = self.ledger.trade(self.channel, self.merchant, str(biz["out_trade_no"]))
        elif biz.get("trade_no"):
            trade = self.ledger.trade_by_no(self.channel, self.merchant, str(biz["trade_no"]))
        else:
            raise invalid("isv.missing-parameter", "out_trade_no 与 trade_no 不能同时为空")
        if trade is None or (visible and not trade["scanned"]):
            raise business("ACQ.TRADE_NOT_EXIST", "交易不存在")
        return trade

    def _new_trade(self, params: dict[str, str], biz: dict[str, Any], scene: str, *, scanned: bool) -> dict[str, Any]:
        out_trade_no = biz.get("out_trade_no")
        if not isinstance(out_trade_no, str) or not 1 <= len(out_trade_no) <= 64:
            raise invalid("isv.invalid-parameter", "out_trade_no 长度应为 1-64")
        amount = fen(biz.get("total_amount"))
        if not biz.get("subject"):
            raise invalid("isv.missing-parameter", "缺少参数 subject")
        existing = self.ledger.trade(self.channel, self.merchant, out_trade_no)
        if existing is not None:
            if existing["state"] in ("SUCCESS", "REFUND"):
                raise business("ACQ.TRADE_HAS_SUCCESS", "交易已被支付")
            if existing["state"] in ("CLOSED", "REVOKED"):
                raise business("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")
            if existing["amount_fen"] != amount or existing["scene"] != scene:
                raise business("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改")
            return existing
        return self.ledger.add_trade(
            channel=self.channel,
            merchant=self.merchant,
            out_trade_no=out_trade_no,
            trade_no=new_serial("2025", self.ledger.now())[:28],
            appid=self.app.app_id,
            scene=scene,
            amount_fen=amount,
            description=biz["subject"],
            notify_url=params.get("notify_url"),
            attach=biz.get("body"),
            payer_id=biz.get("buyer_id") or biz.get("buyer_open_id"),
            auth_code=biz.get("auth_code"),
            state="NOTPAY",
            scanned=int(scanned),
        )

    def precreate(self, params: dict[str, str], biz: dict[str, Any], request: web.Request) -> dict[str, Any]:
        trade = self._new_trade(params, biz, "PRECREATE", scanned=False)
        return {"out_trade_no": trade["out_trade_no"], "qr_code": f"https://qr.alipay.com/bax{trade['trade_no'][-16:]}"}

    def create(self, params: dict[str, str], biz: dict[str, Any], request: web.Request) -> dict[str, Any]:
        if not (biz.get("buyer_id") or biz.get("buyer_open_id")):
            raise invalid("isv.missing-parameter", "JSAPI 支付需要 buyer_id 或 buyer_open_id")
        trade = self._new_trade(params, biz, "JSAPI", scanned=True)
        return {"out_trade_no": trade["out_trade_no"], "trade_no": trade["trade_no"]}

    def _cashier(self, params: dict[str, str], biz: dict[str, Any]) -> web.Response:
        """wap/page pay open Alipay's cashier in the browser: the sandbox registers the trade and shows a stub."""
        scene = "WAP" if params["method"] == "alipay.trade.wap.pay" else "APP"
        try:
            trade = self._new_trade(params, biz, scene, scanned=True)
        except AlipayFault as exc:
            return web.Response(status=400, text=f"{exc.sub_code}: {exc.sub_msg}")
        page = (
            "<!doctype html><meta charset=utf-8><title>支付宝 sandbox cashier</title>"
            f"<p>Trade {html.escape(trade['out_trade_no'])}: {yuan(trade['amount_fen'])} 元"
            f" ({html.escape(trade['description'] or '')}). Use the sandbox admin API to pay it.</p>"
        )
        return web.Response(text=page, content_type="text/html")

    def register_order_string(self, order_string: str) -> dict[str, Any]:
        """What the Alipay app does with an ``alipay.trade.app.pay`` order string: check it and open the trade."""
        params = dict(parse_qsl(order_string, keep_blank_values=True))
        biz = self.authenticate(params)
        if params.get("method") != "alipay.trade.app.pay":
            raise invalid("isv.invalid-method", "不是 alipay.trade.app.pay 的订单串")
        return self._new_trade(params, biz, "APP", scanned=True)

    def pay_barcode(self, params: dict[str, str], biz: dict[str, Any], request: web.Request) -> dict[str, Any]:
        if biz.get("scene") not in ("bar_code", "wave_code") or not biz.get("auth_code"):
            raise invalid("isv.invalid-parameter", "scene 应为 bar_code/wave_code，且需 auth_code")
        trade = self._new_trade(params, biz, "BARCODE", scanned=True)
        if trade["state"] != "NOTPAY":
            return self.trade_json(trade)
        script = self.codepay_scripts.get(str(biz["auth_code"]), CodepayScript())
        if script.outcome == "error":
            self.ledger.update_trade(trade, state="PAYERROR")
            raise business(
                script.code if script.code.startswith("ACQ.") else "ACQ.PAYMENT_AUTH_CODE_INVALID", script.message
            )
        if script.outcome == "userpaying":
            trade = self.ledger.update_trade(trade, state="USERPAYING")
            return {"code": "10003", "msg": "Waiting Payment", **self.trade_json(trade)}
        return self.trade_json(self.pay(trade))

    @staticmethod
    def trade_status(trade: dict[str, Any]) -> str:
        state = trade["state"]
        if state in ("NOTPAY", "USERPAYING"):
            return "WAIT_BUYER_PAY"
        if state == "SUCCESS" or (state == "REFUND" and trade["refunded_fen"] < trade["amount_fen"]):
            return "TRADE_SUCCESS"
        return "TRADE_CLOSED"

    def trade_json(self, trade: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "trade_no": trade["trade_no"],
            "out_trade_no": trade["out_trade_no"],
            "trade_status": self.trade_status(trade),
            "total_amount": yuan(trade["amount_fen"]),
        }
        if trade["paid_at"]:
            out.update(
                buyer_logon_id="sandbox***@alipay.com",
                buyer_user_id=trade["payer_id"],
                receipt_amount=yuan(trade["amount_fen"]),
                buyer_pay_amount=yuan(trade["amount_fen"]),
                send_pay_date=_stamp(trade["paid_at"]),
                gmt_payment=_stamp(trade["paid_at"]),
                fund_bill_list=[{"fund_channel": "ALIPAYACCOUNT", "amount": yuan(trade["amount_fen"])}],
            )
        return out

    def query(self, params: dict[str, str], biz: dict[str, Any], request: web.Request) -> dict[str, Any]:
        trade = self._trade(biz)
        trade = self.ledger.update_trade(trade, queries=trade["queries"] + 1)
        if trade["state"] == "USERPAYING":
            script = self.codepay_scripts.get(trade["auth_code"] or "", CodepayScript())
            if script.decided(trade, self.ledger.now()):
                if script.then == "paid":
                    trade = self.pay(trade)
                elif script.then == "payerror":
                    trade = self.ledger.update_trade(trade, state="PAYERROR")
        return self.trade_json(trade)

    def close(self, params: dict[str, str], biz: dict[str, Any], request: web.Request) -> dict[str, Any]:
        trade = self._trade(biz, visible=False)
        if not trade["scanned"]:
            self.ledger.update_trade(trade, state="CLOSED", closed_at=self.ledger.now().isoformat())
            raise business("ACQ.TRADE_NOT_EXIST", "交易不存在")
        if trade["state"] in ("SUCCESS", "REFUND"):
            raise business("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
        if trade["state"] in ("NOTPAY", "USERPAYING"):
            trade = self.ledger.update_trade(trade, state="CLOSED", closed_at=self.ledger.now().isoformat())
        return {"trade_no": trade["trade_no"], "out_trade_no": trade["out_trade_no"]}

    def cancel(self, params: dict[str, str], biz: dict[str, Any], request: web.Request) -> dict[str, Any]:
        trade = self._trade(biz)
        now = self.ledger.now().isoformat()
        action = "close"
        if trade["state"] in ("SUCCESS", "REFUND"):
            action = "refund"
            left = trade["amount_fen"] - trade["refunded_fen"]
            if left > 0:
                self.ledger.add_refund(
                    channel=self.channel,
                    merchant=self.merchant,
                    out_trade_no=trade["out_trade_no"],
                    out_refund_no=f"CANCEL{trade['out_trade_no']}"[:64],
                    refund_no=new_serial("2025", self.ledger.now()),
                    amount_fen=left,
                    total_fen=trade["amount_fen"],
                    state="SUCCESS",
                    reason="撤销",
                    succeeded_at=now,
                )
            self.ledger.update_trade(trade, state="REVOKED", refunded_fen=trade["amount_fen"], closed_at=now)
        elif trade["state"] in ("NOTPAY", "USERPAYING", "PAYERROR"):
            self.ledger.update_trade(trade, state="REVOKED", closed_at=now)
        return {
            "trade_no": trade["trade_no"],
            "out_trade_no": trade["out_trade_no"],
            "retry_flag": "N",
            "action": action,
        }

    def pay(self, trade: dict[str, Any], *, payer_id: str | None = None) -> dict[str, Any]:
        trade = self.ledger.update_trade(
            trade,
            state="SUCCESS",
            scanned=1,
            paid_at=self.ledger.now().isoformat(),
            payer_id=payer_id or trade["payer_id"] or "2088" + "".join(secrets.choice("0123456789") for _ in range(12)),
        )
        self._notify(trade, "payment", trade["out_trade_no"])
        return trade

    def scan(self, trade: dict[str, Any]) -> dict[str, Any]:
        if trade["state"] != "NOTPAY":
            raise business("ACQ.TRADE_STATUS_ERROR", f"交易状态 {trade['state']} 不可扫码")
        return self.ledger.update_trade(trade, scanned=1)

    def refund(self, params: dict[str, str], biz: dict[str, Any], request: web.Request) -> dict[str, Any]:
        trade = self._trade(biz)
        amount = fen(biz.get("refund_amount"))
        out_request_no = str(biz.get("out_request_no") or trade["out_trade_no"])
        existing = self.ledger.refund(self.channel, self.merchant, out_request_no, trade["out_trade_no"])
        if existing is not None:
            if existing["amount_fen"] != amount:
                raise business("ACQ.DISCORDANT_REPEAT_REQUEST", "退款请求号对应的退款金额与本次不一致")
            return self._refund_answer(trade, fund_change="N")
        if trade["state"] not in ("SUCCESS", "REFUND"):
            raise business("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
        if amount > trade["amount_fen"] - trade["refunded_fen"]:
            raise business("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限")
        held = self.refund_holds.take(trade["out_trade_no"])
        now = self.ledger.now().isoformat()
        self.ledger.add_refund(
            channel=self.channel,
            merchant=self.merchant,
            out_trade_no=trade["out_trade_no"],
            out_refund_no=out_request_no,
            refund_no=new_serial("2025", self.ledger.now()),
            amount_fen=amount,
            total_fen=trade["amount_fen"],
            state="PROCESSING" if held else "SUCCESS",
            reason=biz.get("refund_reason"),
            held=int(held),
            succeeded_at=None if held else now,
        )
        trade = self.ledger.update_trade(trade, state="REFUND", refunded_fen=trade["refunded_fen"] + amount)
        if not held:
            self._notify(trade, "refund", out_request_no, refund_fen=amount)
        return self._refund_answer(trade, fund_change="N" if held else "Y")

    def _refund_answer(self, trade: dict[str, Any], *, fund_change: str) -> dict[str, Any]:
        return {
            "trade_no": trade["trade_no"],
            "out_trade_no": trade["out_trade_no"],
            "buyer_logon_id": "sandbox***@alipay.com",
            "buyer_user_id": trade["payer_id"],
            "fund_change": fund_change,
            "refund_fee": yuan(trade["refunded_fen"]),
            "gmt_refund_pay": _stamp(self.ledger.now().isoformat()),
        }

    def finish_refund(self, out_request_no: str) -> dict[str, Any] | None:
        refund = self.ledger.refund(self.channel, self.merchant, out_request_no)
        if refund is None or refund["state"] != "PROCESSING":
            return refund
        refund = self.ledger.update_refund(refund, state="SUCCESS", held=0, succeeded_at=self.ledger.now().isoformat())
        trade = self.ledger.trade(self.channel, self.merchant, refund["out_trade_no"])
        assert trade is not None
        self._notify(trade, "refund", out_request_no, refund_fen=refund["amount_fen"])
        return refund

    def refund_query(self, params: dict[str, str], biz: dict[str, Any], request: web.Request) -> dict[str, Any]:
        trade = self._trade(biz)
        out_request_no = str(biz.get("out_request_no") or "")
        refund = self.ledger.refund(self.channel, self.merchant, out_request_no, trade["out_trade_no"])
        if refund is None:
            return {"trade_no": trade["trade_no"], "out_trade_no": trade["out_trade_no"]}
        out = {
            "trade_no": trade["trade_no"],
            "out_trade_no": trade["out_trade_no"],
            "out_request_no": out_request_no,
            "total_amount": yuan(trade["amount_fen"]),
            "refund_amount": yuan(refund["amount_fen"]),
        }
        if refund["state"] == "SUCCESS":
            out["refund_status"] = "REFUND_SUCCESS"
            out["gmt_refund_pay"] = _stamp(refund["succeeded_at"])
        return out

    def _notify(self, trade: dict[str, Any], kind: str, ref: str, *, refund_fen: int | None = None) -> None:
        if not trade["notify_url"]:
            return
        notification_id = uuid.uuid4().hex
        fields = {
            "notify_time": _stamp(self.ledger.now().isoformat()),
            "notify_type": "trade_status_sync",
            "notify_id": notification_id,
            "app_id": self.app.app_id,
            "charset": "utf-8",
            "version": "1.0",
            "trade_no": trade["trade_no"],
            "out_trade_no": trade["out_trade_no"],
            "buyer_id": trade["payer_id"] or "",
            "seller_id": self.app.seller_id,
            "trade_status": self.trade_status(trade),
            "total_amount": yuan(trade["amount_fen"]),
            "receipt_amount": yuan(trade["amount_fen"]),
            "buyer_pay_amount": yuan(trade["amount_fen"]),
            "subject": trade["description"] or "",
            "gmt_create": _stamp(trade["created_at"]),
            "gmt_payment": _stamp(trade["paid_at"]),
            "fund_bill_list": json.dumps(
                [{"amount": yuan(trade["amount_fen"]), "fundChannel": "ALIPAYACCOUNT"}], separators=(",", ":")
            ),
        }
        if kind == "refund":
            fields.update(
                out_biz_no=ref,
                refund_fee=yuan(trade["refunded_fen"]),
                gmt_refund=_stamp(self.ledger.now().isoformat()) + ".000",
            )
        fields = {k: v for k, v in fields.items() if v != ""}
        fields["sign"] = crypto.rsa_sign(self.signing_key, signing_content(fields, ("sign", "sign_type")))
        fields["sign_type"] = "RSA2"
        body = urlencode(fields).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
        self.notifier.send(
            channel=self.channel,
            merchant=self.merchant,
            kind=kind,
            ref=ref,
            notification_id=notification_id,
            url=trade["notify_url"],
            build=lambda: (dict(headers), body),
            accepted=lambda status, answer: status == 200 and answer.strip() == b"success",
        )

    def certificate_download(self, params: dict[str, str], biz: dict[str, Any], request: web.Request) -> dict[str, Any]:
        """An Alipay certificate by its SN (certificate mode), base64 of its PEM with the intermediate."""
        if self.certificates is None:
            raise invalid("isv.invalid-method", "公钥模式不提供支付宝公钥证书下载")
        cert = self.certificates.by_sn(str(biz.get("alipay_cert_sn", "")))
        if cert is None:
            raise business("isv.cert-not-exist", "证书不存在")
        return {"alipay_cert_content": base64.b64encode(self.certificates.chain_pem(cert)).decode("ascii")}

    def bill_url(self, params: dict[str, str], biz: dict[str, Any], request: web.Request) -> dict[str, Any]:
        if biz.get("bill_type") not in ("trade", "signcustomer"):
            raise invalid("isv.invalid-parameter", "bill_type 应为 trade 或 signcustomer")
        try:
            day = dt.date.fromisoformat(str(biz.get("bill_date")))
        except ValueError:
            raise invalid("isv.invalid-parameter", "bill_date 只支持按日的 yyyy-MM-dd") from None
        payments = self.ledger.paid_on(self.channel, self.merchant, day)
        refunds = self.ledger.refunded_on(self.channel, self.merchant, day)
        if not payments and not refunds:
            raise business("isp.bill_not_exist", "账单不存在")
        token = secrets.token_urlsafe(24)
        self._bill_files[token] = bills.alipay_tradebill(
            self.app.seller_id, day, payments, refunds, generated=self.ledger.now()
        )
        return {"bill_download_url": f"{request.url.origin()}{BILLS.format(token=token)}?fileType=csv.zip"}

    async def bill_file(self, request: web.Request) -> web.StreamResponse:
        served = self._bill_files.get(request.match_info["token"])
        if served is None:
            return web.Response(status=404, text="链接已失效")
        rule = self.faults.take("call", "alipay.billdownload")
        if rule is not None and rule.mode == "tamper":
            served = served[:-30] + bytes(30)
        return web.Response(body=served, content_type="application/octet-stream")
