"""A UnionPay online-payment gateway (全渠道, version 5.1.0) for one merchant, over the sandbox ledger.

It checks what the real one checks on every request: ``version``/``signMethod``, that ``certId`` names one of the
merchant's registered signing certificates and the signature (SHA-256 hex digest, SHA256withRSA) verifies with
it, ``merId``, the ``orderId``/``txnTime``/``txnAmt`` formats. It signs every answer and back-notification with its
own signing certificate, issued under its own root and intermediate (``UnionPayIdentity``), and sends that
certificate along as ``signPubKeyCert``. Answers are raw ``k=v&k=v``; back-notifications are form posts re-sent
until the merchant answers HTTP 200.

Modelled behaviour: a QR order (01/07) stays unknown to queries until the payer pays it and cannot be paid after
its ``payTimeout``; a payment-code consume (01/06) answers 00 when the scripted payer pays at once and 05 while
they enter a password; refunds (04) and same-day cancels (31) answer 00 (accepted) and finish later — or when
released, if held — with their back-notification; a reversal (99) voids a payment-code consume and gives any
money back. A settlement day runs from 23:00 the day before to 23:00: the reconciliation file (76) of a day lists
what settled in it, as a zip whose ``…ZM_<merId>`` file has UnionPay's fixed-width records (GBK).

Response codes the real gateway documents and the sandbox uses: 00 success, 05 accepted (in progress), 12
duplicate, 34 no such transaction, 98 no file. Where the sandbox refuses for its own reasons it answers the
codes below (``RESP``), with a message saying why.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import io
import json
import re
import secrets
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import parse_qsl, urlencode

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from sandbox.channels import crypto, pki
from sandbox.channels.faults import FaultBook, RefundHolds, Rule
from sandbox.channels.ledger import CST, Ledger
from sandbox.channels.notifier import Notifier
from sandbox.channels.payer import CodepayScript
from sandbox.channels.wire import with_faults

BACK = "/gateway/api/backTransReq.do"
QUERY = "/gateway/api/queryTrans.do"
FILE = "/unionpay/filedownload/"
OWNER = "中国银联股份有限公司"
ORDER_ID = re.compile(r"^[0-9A-Za-z]{8,40}$")
RESP = {
    "format": ("30", "报文格式错误"),
    "signature": ("11", "验证签名失败"),
    "merchant": ("31", "商户状态不正确"),
    "state": ("35", "原交易状态不正确"),
    "amount": ("36", "交易金额超限"),
    "cancel": ("37", "原交易不允许撤销"),
    "expired": ("38", "订单已过期"),
}
SETTLE_CUTOFF = dt.time(23, 0)
FEE_RATE = Decimal("0.0030")
ZM_FIELDS = (
    ("交易代码", 3), ("代理机构标识码", 11), ("发送机构标识码", 11), ("系统跟踪号", 6), ("交易传输时间", 10),
    ("帐号", 19), ("交易金额", 12), ("商户类别", 4), ("终端类型", 2), ("查询流水号", 21), ("支付方式（旧）", 2),
    ("商户订单号", 32), ("支付卡类型", 2), ("原始交易的系统跟踪号", 6), ("原始交易日期时间", 10), ("商户手续费", 13),
    ("结算金额", 13), ("支付方式", 4), ("集团商户代码", 15), ("交易类型", 2), ("交易子类", 2), ("业务类型", 6),
    ("帐号类型", 2), ("账单类型", 4), ("账单号码", 32), ("交互方式", 1), ("原交易查询流水号", 21), ("商户代码", 15),
    ("分账入账方式", 1), ("二级商户代码", 15), ("二级商户简称", 32), ("二级商户分账入账金额", 13), ("清算净额", 13),
    ("终端号", 8), ("商户自定义域", 32), ("优惠金额", 13), ("发票金额", 13), ("分期付款附加手续费", 12),
    ("分期付款期数", 2), ("交易介质", 1), ("原始交易订单号", 32), ("保留使用", 98),
)  # fmt: skip
"""The ZM record (全渠道商户对账文件, 一般交易流水): fields and their widths in bytes, one space between
fields, as UnionPay's SDK demo (``parseZMFile``) reads it. Signed amounts are ``C``/``D`` and 12 digits of fen."""


class UnionPayFault(Exception):
    def __init__(self, kind: str, detail: str = "") -> None:
        code, message = RESP.get(kind, (kind, detail))
        super().__init__(f"{code} {message} {detail}".strip())
        self.code = code
        self.message = f"{message}{'：' + detail if detail and kind in RESP else ''}"


def sign_digest(fields: dict[str, str]) -> bytes:
    text = "&".join(f"{k}={v}" for k, v in sorted(fields.items()) if k != "signature")
    return hashlib.sha256(text.encode("utf-8")).hexdigest().encode("ascii")


def sign(key: rsa.RSAPrivateKey, fields: dict[str, str]) -> str:
    return crypto.rsa_sign(key, sign_digest(fields))


def verify(key: rsa.RSAPublicKey, fields: dict[str, str]) -> bool:
    return crypto.rsa_verify(key, sign_digest(fields), fields.get("signature", ""))


def txn_time(at: dt.datetime) -> str:
    return at.astimezone(CST).strftime("%Y%m%d%H%M%S")


def settle_day(at: dt.datetime) -> dt.date:
    local = at.astimezone(CST)
    return local.date() + dt.timedelta(days=1) if local.time() >= SETTLE_CUTOFF else local.date()


@dataclass
class UnionPayIdentity:
    """UnionPay's side of the PKI: root → intermediate → the certificate that signs (its CN names UnionPay
    as UnionPay's SDKs expect). ``rotate`` issues a new signing certificate under the same intermediate."""

    root: pki.Authority
    middle: pki.Authority
    sign_key: rsa.RSAPrivateKey
    sign_cert: x509.Certificate
    retired: list[x509.Certificate] = field(default_factory=list)

    @classmethod
    def generate(cls) -> UnionPayIdentity:
        root = pki.Authority.root(pki.name(cn="Sandbox CFCA CS CA", o="China Financial Certification Authority"))
        middle = root.intermediate(pki.name(cn="Sandbox CFCA OCA1", o="China Financial Certification Authority"))
        identity = cls(root, middle, crypto.new_rsa_key(), root.cert)
        identity.rotate()
        identity.retired.clear()
        return identity

    def rotate(self, *, owner: str = OWNER) -> x509.Certificate:
        key = crypto.new_rsa_key()
        subject = pki.name(
            cn=f"041@8310000000083040@{owner}@{secrets.randbelow(10**8):08d}", o="CFCA OCA1", ou="Enterprises", c="cn"
        )
        self.retired.append(self.sign_cert)
        self.sign_key, self.sign_cert = key, self.middle.issue(subject, key.public_key())
        return self.sign_cert

    @property
    def sign_pem(self) -> str:
        return crypto.certificate_pem(self.sign_cert).decode()

    def issue_merchant(self, mer_id: str, *, days: int = 1825) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
        """A merchant signing certificate, as CFCA issues one when UnionPay enrols a merchant."""
        key = crypto.new_rsa_key()
        subject = pki.name(
            cn=f"041@Z{secrets.randbelow(10**8):08d}@{mer_id}:SIGN@{secrets.randbelow(10**8):08d}",
            o="CFCA OCA1",
            ou="Enterprises",
            c="cn",
        )
        return key, self.middle.issue(subject, key.public_key(), days=days)


def merchant_pfx(key: rsa.RSAPrivateKey, cert: x509.Certificate, password: str) -> bytes:
    """The PKCS#12 file a merchant downloads (UnionPay's ``.pfx``)."""
    return pkcs12.serialize_key_and_certificates(
        b"unionpay-sign", key, cert, None, serialization.BestAvailableEncryption(password.encode())
    )


@dataclass
class UnionPayMerchant:
    mer_id: str
    certificates: dict[str, rsa.RSAPublicKey]
    """The merchant's registered signing certificates by certId (several during a rotation)."""

    @staticmethod
    def cert_id(cert: x509.Certificate) -> str:
        return str(cert.serial_number)


def _fen(value: str | None) -> int:
    if not value or not value.isdigit() or len(value) > 12 or int(value) <= 0:
        raise UnionPayFault("format", f"txnAmt {value!r} 应为正整数（分）")
    return int(value)


def _bj(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value).astimezone(CST) if value else None


@dataclass
class UnionPaySandbox:
    ledger: Ledger
    faults: FaultBook
    notifier: Notifier
    merchant: UnionPayMerchant
    identity: UnionPayIdentity
    refund_delay_s: float = 0.05
    codepay_scripts: dict[str, CodepayScript] = field(default_factory=dict)
    refund_holds: RefundHolds = field(default_factory=RefundHolds)
    signed_with: Counter[str] = field(default_factory=Counter)
    """How many requests each merchant certId signed (rotation tests read it)."""
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    channel = "unionpay"

    @property
    def merchant_id(self) -> str:
        return self.merchant.mer_id

    def setup(self, app: web.Application) -> None:
        app.router.add_post(BACK, self._handler("back"))
        app.router.add_post(QUERY, self._handler("query"))
        app.router.add_post(FILE, self._handler("file"))

    async def close_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- the wire ----------------------------------------------------------------------------------------------

    def signed(self, fields: dict[str, str], *, spoil: bool = False) -> dict[str, str]:
        out = {k: v for k, v in fields.items() if v not in ("", None)}
        out["signPubKeyCert"] = self.identity.sign_pem
        out["signature"] = sign(self.identity.sign_key, out)
        if spoil:
            out["signature"] = crypto.rsa_sign(self.identity.sign_key, b"not this message")
        return out

    def answer(self, fields: dict[str, str], *, spoil: bool = False) -> web.Response:
        text = "&".join(f"{k}={v}" for k, v in self.signed(fields, spoil=spoil).items())
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    def _base(self, request_fields: dict[str, str]) -> dict[str, str]:
        keep = ("version", "encoding", "signMethod", "txnType", "txnSubType", "bizType", "accessType", "merId")
        out = {k: request_fields[k] for k in keep if request_fields.get(k)}
        for k in ("orderId", "txnTime", "reqReserved"):
            if request_fields.get(k):
                out[k] = request_fields[k]
        return out

    def authenticate(self, fields: dict[str, str]) -> None:
        if fields.get("version") != "5.1.0" or fields.get("signMethod") != "01":
            raise UnionPayFault("format", "version 应为 5.1.0，signMethod 应为 01")
        key = self.merchant.certificates.get(fields.get("certId", ""))
        if key is None or not fields.get("signature") or not verify(key, fields):
            raise UnionPayFault("signature", f"certId {fields.get('certId')}")
        self.signed_with[fields["certId"]] += 1
        if fields.get("merId") != self.merchant.mer_id:
            raise UnionPayFault("merchant", f"merId {fields.get('merId')}")
        if fields.get("accessType") != "0":
            raise UnionPayFault("format", "accessType 应为 0")
        if not re.fullmatch(r"\d{14}", fields.get("txnTime", "")):
            raise UnionPayFault("format", "txnTime 应为 YYYYMMDDhhmmss")

    def _handler(self, endpoint: str) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            try:
                fields = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True))
            except (UnicodeDecodeError, ValueError):
                return self.answer({"version": "5.1.0", **self._fault(UnionPayFault("format", "不是表单"))})
            name = self._api_name(endpoint, fields)

            async def apply() -> web.StreamResponse:
                try:
                    self.authenticate(fields)
                    result = self._dispatch(endpoint, fields, request)
                except UnionPayFault as exc:
                    return self.answer({**self._base(fields), **self._fault(exc)})
                return self.answer({**self._base(fields), **result})

            def error(rule: Rule) -> web.StreamResponse:
                code = rule.code if rule.code.isdigit() else "06"
                return self.answer({**self._base(fields), "respCode": code, "respMsg": rule.message})

            def corrupt(response: web.StreamResponse, rule: Rule) -> web.StreamResponse:
                """``bad_signature`` spoils the signature; ``tamper`` serves a reconciliation file damaged before
                it was signed (the zip's CRCs are what catch it)."""
                assert isinstance(response, web.Response) and response.text is not None
                answered = dict(part.split("=", 1) for part in response.text.split("&") if "=" in part)
                answered.pop("signature", None)
                answered.pop("signPubKeyCert", None)
                if rule.mode == "tamper" and answered.get("fileContent"):
                    answered["fileContent"] = _damaged(answered["fileContent"])
                    return self.answer(answered)
                return self.answer(answered, spoil=True)

            return await with_faults(request, self.faults, name, apply, error, corrupt)

        return handle

    @staticmethod
    def _fault(exc: UnionPayFault) -> dict[str, str]:
        return {"respCode": exc.code, "respMsg": exc.message}

    @staticmethod
    def _api_name(endpoint: str, fields: dict[str, str]) -> str:
        if endpoint != "back":
            return {"query": "unionpay.query", "file": "unionpay.file"}[endpoint]
        return {
            ("01", "07"): "unionpay.qr",
            ("01", "06"): "unionpay.paycode",
            ("04", "00"): "unionpay.refund",
            ("31", "00"): "unionpay.cancel",
            ("99", "01"): "unionpay.reversal",
        }.get((fields.get("txnType", ""), fields.get("txnSubType", "")), "unionpay.back")

    def _dispatch(self, endpoint: str, fields: dict[str, str], request: web.Request) -> dict[str, str]:
        kind = (fields.get("txnType"), fields.get("txnSubType"))
        if endpoint == "query":
            if kind != ("00", "00"):
                raise UnionPayFault("format", "查询交易 txnType/txnSubType 应为 00/00")
            return self.query(fields)
        if endpoint == "file":
            if kind != ("76", "01"):
                raise UnionPayFault("format", "文件传输 txnType/txnSubType 应为 76/01")
            return self.file_transfer(fields)
        handler = {
            ("01", "07"): self.consume_qr,
            ("01", "06"): self.consume_paycode,
            ("04", "00"): self.refund,
            ("31", "00"): self.refund,
            ("99", "01"): self.reversal,
        }.get(kind)
        if handler is None:
            raise UnionPayFault("format", f"不支持的交易 {kind}")
        return handler(fields)

    # -- consume -----------------------------------------------------------------------------------------------

    def _order(self, fields: dict[str, str]) -> str:
        order_id = fields.get("orderId", "")
        if not ORDER_ID.match(order_id):
            raise UnionPayFault("format", "orderId 应为 8-40 位字母或数字")
        return order_id

    def _new_consume(self, fields: dict[str, str], scene: str) -> tuple[dict[str, Any], bool]:
        order_id = self._order(fields)
        amount = _fen(fields.get("txnAmt"))
        if fields.get("currencyCode") != "156":
            raise UnionPayFault("format", "currencyCode 应为 156")
        if not str(fields.get("backUrl", "")).startswith(("http://", "https://")):
            raise UnionPayFault("format", "backUrl 应为 http(s) 地址")
        fingerprint = json.dumps({k: fields.get(k) for k in ("txnAmt", "txnSubType", "qrNo", "txnTime")})
        existing = self.ledger.trade(self.channel, self.merchant_id, order_id)
        if existing is not None:
            if existing["request"] != fingerprint:
                raise UnionPayFault("12", "重复交易")
            return existing, False
        self.ledger.add_order_time(self.channel, self.merchant_id, order_id, fields["txnTime"], "consume")
        expires = None
        if fields.get("payTimeout"):
            try:
                expires = dt.datetime.strptime(fields["payTimeout"], "%Y%m%d%H%M%S").replace(tzinfo=CST).isoformat()
            except ValueError:
                raise UnionPayFault("format", "payTimeout 应为 YYYYMMDDhhmmss") from None
        trade = self.ledger.add_trade(
            channel=self.channel,
            merchant=self.merchant_id,
            out_trade_no=order_id,
            trade_no=self._query_id(),
            appid=None,
            scene=scene,
            amount_fen=amount,
            description=None,
            notify_url=fields.get("backUrl"),
            attach=fields.get("reqReserved"),
            auth_code=fields.get("qrNo"),
            state="NOTPAY",
            scanned=0 if scene == "QR" else 1,
            request=fingerprint,
            expires_at=expires,
        )
        return trade, True

    def _query_id(self) -> str:
        return self.ledger.now().strftime("%m%d%H%M%S") + "".join(secrets.choice("0123456789") for _ in range(11))

    def consume_qr(self, fields: dict[str, str]) -> dict[str, str]:
        trade, _ = self._new_consume(fields, "QR")
        return {
            "respCode": "00",
            "respMsg": "成功[0000000]",
            "qrCode": f"https://qr.95516.com/00010000/{trade['trade_no']}",
        }

    def consume_paycode(self, fields: dict[str, str]) -> dict[str, str]:
        if not fields.get("qrNo"):
            raise UnionPayFault("format", "缺少 qrNo（付款码）")
        trade, new = self._new_consume(fields, "PAYCODE")
        if not new:
            return self._consume_answer(trade)
        script = self.codepay_scripts.get(fields["qrNo"], CodepayScript())
        if script.outcome == "error":
            self.ledger.update_trade(trade, state="PAYERROR")
            raise UnionPayFault("01", script.message)
        if script.outcome == "userpaying":
            self.ledger.update_trade(trade, state="USERPAYING")
            return {"respCode": "05", "respMsg": "交易已受理，请稍后查询交易结果"}
        return self._consume_answer(self.pay(trade))

    def _consume_answer(self, trade: dict[str, Any]) -> dict[str, str]:
        if trade["state"] in ("SUCCESS", "REFUND"):
            return {"respCode": "00", "respMsg": "成功[0000000]", "queryId": trade["trade_no"]}
        if trade["state"] == "USERPAYING":
            return {"respCode": "05", "respMsg": "交易已受理，请稍后查询交易结果"}
        raise UnionPayFault("state", trade["state"])

    def pay(self, trade: dict[str, Any], *, payer_id: str | None = None) -> dict[str, Any]:
        """The payer pays: SUCCESS, and the back-notification."""
        trade = self.ledger.update_trade(
            trade,
            state="SUCCESS",
            scanned=1,
            paid_at=self.ledger.now().isoformat(),
            payer_id=payer_id
            or trade["payer_id"]
            or "6216****" + "".join(secrets.choice("0123456789") for _ in range(4)),
        )
        self._notify_consume(trade)
        return trade

    def _trace(self, at: str | None) -> dict[str, str]:
        when = _bj(at) or self.ledger.now()
        return {
            "traceNo": f"{secrets.randbelow(10**6):06d}",
            "traceTime": when.strftime("%m%d%H%M%S"),
            "settleDate": settle_day(when).strftime("%m%d"),
        }

    def _notify_consume(self, trade: dict[str, Any]) -> None:
        kept = self.ledger.order_time(self.channel, self.merchant_id, trade["out_trade_no"])
        sub = "07" if trade["scene"] == "QR" else "06"
        fields = {
            "version": "5.1.0",
            "encoding": "UTF-8",
            "signMethod": "01",
            "txnType": "01",
            "txnSubType": sub,
            "bizType": "000000",
            "accessType": "0",
            "merId": self.merchant_id,
            "orderId": trade["out_trade_no"],
            "txnTime": kept["txn_time"] if kept else txn_time(self.ledger.now()),
            "txnAmt": str(trade["amount_fen"]),
            "currencyCode": "156",
            "settleAmt": str(trade["amount_fen"]),
            "settleCurrencyCode": "156",
            "queryId": trade["trade_no"],
            "respCode": "00",
            "respMsg": "成功[0000000]",
            "accNo": trade["payer_id"] or "",
            "payCardType": "01",
            "reqReserved": trade["attach"] or "",
            **self._trace(trade["paid_at"]),
        }
        self._notify("payment", trade["out_trade_no"], trade["notify_url"], fields)

    def _notify(self, kind: str, ref: str, url: str | None, fields: dict[str, str]) -> None:
        if not url:
            return
        body = urlencode(self.signed(fields)).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"}
        self.notifier.send(
            channel=self.channel,
            merchant=self.merchant_id,
            kind=kind,
            ref=ref,
            notification_id=fields["queryId"],
            url=url,
            build=lambda: (dict(headers), body),
            accepted=lambda status, _answer: status == 200,
        )

    # -- query, refund, cancel, reversal -----------------------------------------------------------------------

    def _kept(self, fields: dict[str, str]) -> dict[str, Any] | None:
        kept = self.ledger.order_time(self.channel, self.merchant_id, self._order(fields))
        return kept if kept is not None and kept["txn_time"] == fields.get("txnTime") else None

    def query(self, fields: dict[str, str]) -> dict[str, str]:
        kept = self._kept(fields)
        if kept is None:
            raise UnionPayFault("34", "查无此交易")
        order_id = fields["orderId"]
        if kept["kind"] == "consume":
            trade = self.ledger.trade(self.channel, self.merchant_id, order_id)
            assert trade is not None
            trade = self._advance_codepay(trade)
            if not trade["scanned"]:
                raise UnionPayFault("34", "查无此交易")
            sub = "07" if trade["scene"] == "QR" else "06"
            out = {
                "respCode": "00",
                "respMsg": "成功[0000000]",
                "txnType": "01",
                "txnSubType": sub,
                "queryId": trade["trade_no"],
                "txnAmt": str(trade["amount_fen"]),
            }
            state = trade["state"]
            if state in ("SUCCESS", "REFUND"):
                out.update(origRespCode="00", origRespMsg="成功[0000000]", **self._trace(trade["paid_at"]))
            elif state in ("NOTPAY", "USERPAYING"):
                out.update(origRespCode="05", origRespMsg="交易已受理，请稍后查询交易结果")
            else:
                out.update(origRespCode="01", origRespMsg=f"交易失败（{state}）")
            return out
        refund = self.ledger.refund(self.channel, self.merchant_id, order_id)
        assert refund is not None
        out = {
            "respCode": "00",
            "respMsg": "成功[0000000]",
            "txnType": "31" if kept["kind"] == "cancel" else "04",
            "txnSubType": "00",
            "queryId": refund["refund_no"],
            "txnAmt": str(refund["amount_fen"]),
        }
        if refund["state"] == "SUCCESS":
            out.update(origRespCode="00", origRespMsg="成功[0000000]", **self._trace(refund["succeeded_at"]))
        elif refund["state"] == "PROCESSING":
            out.update(origRespCode="05", origRespMsg="交易已受理，请稍后查询交易结果")
        else:
            out.update(origRespCode="01", origRespMsg="交易失败")
        return out

    def _advance_codepay(self, trade: dict[str, Any]) -> dict[str, Any]:
        trade = self.ledger.update_trade(trade, queries=trade["queries"] + 1)
        if trade["state"] != "USERPAYING":
            return trade
        script = self.codepay_scripts.get(trade["auth_code"] or "", CodepayScript())
        if trade["queries"] < script.after_queries:
            return trade
        if script.then == "paid":
            return self.pay(trade)
        if script.then == "payerror":
            return self.ledger.update_trade(trade, state="PAYERROR")
        return trade

    def refund(self, fields: dict[str, str]) -> dict[str, str]:
        order_id = self._order(fields)
        cancel = fields.get("txnType") == "31"
        amount = _fen(fields.get("txnAmt"))
        trade = self.ledger.trade_by_no(self.channel, self.merchant_id, fields.get("origQryId", ""))
        if trade is None:
            raise UnionPayFault("34", "原交易不存在")
        if not str(fields.get("backUrl", "")).startswith(("http://", "https://")):
            raise UnionPayFault("format", "backUrl 应为 http(s) 地址")
        existing = self.ledger.refund(self.channel, self.merchant_id, order_id)
        if existing is not None:
            if existing["out_trade_no"] != trade["out_trade_no"] or existing["amount_fen"] != amount:
                raise UnionPayFault("12", "重复交易，且与原请求不一致")
            return {"respCode": "00", "respMsg": "成功[0000000]", "queryId": existing["refund_no"]}
        if trade["state"] not in ("SUCCESS", "REFUND"):
            raise UnionPayFault("state", trade["state"])
        left = trade["amount_fen"] - trade["refunded_fen"]
        if amount > left:
            raise UnionPayFault("amount", f"可退 {left} 分")
        if cancel:
            paid = _bj(trade["paid_at"])
            now = self.ledger.now()
            if (
                amount != trade["amount_fen"]
                or trade["refunded_fen"]
                or paid is None
                or settle_day(paid) != settle_day(now)
            ):
                raise UnionPayFault("cancel", "撤销仅限当日全额")
        self.ledger.add_order_time(
            self.channel, self.merchant_id, order_id, fields["txnTime"], "cancel" if cancel else "refund"
        )
        held = self.refund_holds.take(trade["out_trade_no"])
        refund = self.ledger.add_refund(
            channel=self.channel,
            merchant=self.merchant_id,
            out_trade_no=trade["out_trade_no"],
            out_refund_no=order_id,
            refund_no=self._query_id(),
            amount_fen=amount,
            total_fen=trade["amount_fen"],
            state="PROCESSING",
            reason=fields.get("reqReserved"),
            notify_url=fields.get("backUrl"),
            held=int(held),
        )
        self.ledger.update_trade(trade, state="REFUND", refunded_fen=trade["refunded_fen"] + amount)
        if not held:
            self._later(self.refund_delay_s, order_id)
        return {"respCode": "00", "respMsg": "成功[0000000]", "queryId": refund["refund_no"]}

    def _later(self, delay: float, order_id: str) -> None:
        async def finish() -> None:
            await asyncio.sleep(delay)
            self.finish_refund(order_id)

        task = asyncio.get_running_loop().create_task(finish())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def finish_refund(self, out_refund_no: str, state: str = "SUCCESS") -> dict[str, Any] | None:
        """PROCESSING → SUCCESS (or CLOSED: the bank refused), with the back-notification."""
        refund = self.ledger.refund(self.channel, self.merchant_id, out_refund_no)
        if refund is None or refund["state"] != "PROCESSING":
            return refund
        values: dict[str, Any] = {"state": "SUCCESS" if state == "SUCCESS" else "CLOSED", "held": 0}
        if state == "SUCCESS":
            values["succeeded_at"] = self.ledger.now().isoformat()
        refund = self.ledger.update_refund(refund, **values)
        trade = self.ledger.trade(self.channel, self.merchant_id, refund["out_trade_no"])
        assert trade is not None
        if state != "SUCCESS":
            self.ledger.update_trade(trade, refunded_fen=trade["refunded_fen"] - refund["amount_fen"])
        kept = self.ledger.order_time(self.channel, self.merchant_id, out_refund_no)
        assert kept is not None
        fields = {
            "version": "5.1.0",
            "encoding": "UTF-8",
            "signMethod": "01",
            "txnType": "31" if kept["kind"] == "cancel" else "04",
            "txnSubType": "00",
            "bizType": "000000",
            "accessType": "0",
            "merId": self.merchant_id,
            "orderId": out_refund_no,
            "txnTime": kept["txn_time"],
            "txnAmt": str(refund["amount_fen"]),
            "currencyCode": "156",
            "queryId": refund["refund_no"],
            "origQryId": trade["trade_no"],
            "respCode": "00" if state == "SUCCESS" else "01",
            "respMsg": "成功[0000000]" if state == "SUCCESS" else "交易失败",
            "reqReserved": refund["reason"] or "",
            **self._trace(refund["succeeded_at"]),
        }
        self._notify("refund", out_refund_no, refund["notify_url"], fields)
        return refund

    def reversal(self, fields: dict[str, str]) -> dict[str, str]:
        kept = self._kept(fields)
        if kept is None or kept["kind"] != "consume":
            raise UnionPayFault("34", "查无此交易")
        trade = self.ledger.trade(self.channel, self.merchant_id, fields["orderId"])
        assert trade is not None
        if trade["scene"] != "PAYCODE":
            raise UnionPayFault("format", "仅付款码消费可冲正")
        self.revoke(trade)
        return {"respCode": "00", "respMsg": "成功[0000000]"}

    def revoke(self, trade: dict[str, Any]) -> dict[str, Any]:
        now = self.ledger.now().isoformat()
        if trade["state"] in ("SUCCESS", "REFUND"):
            left = trade["amount_fen"] - trade["refunded_fen"]
            if left > 0:
                self.ledger.add_refund(
                    channel=self.channel,
                    merchant=self.merchant_id,
                    out_trade_no=trade["out_trade_no"],
                    out_refund_no=f"REVERSE{trade['out_trade_no']}"[:40],
                    refund_no=self._query_id(),
                    amount_fen=left,
                    total_fen=trade["amount_fen"],
                    state="SUCCESS",
                    reason="冲正",
                    succeeded_at=now,
                )
            return self.ledger.update_trade(trade, state="REVOKED", refunded_fen=trade["amount_fen"], closed_at=now)
        if trade["state"] in ("NOTPAY", "USERPAYING", "PAYERROR"):
            return self.ledger.update_trade(trade, state="REVOKED", closed_at=now)
        return trade

    # -- the reconciliation file -------------------------------------------------------------------------------

    def file_transfer(self, fields: dict[str, str]) -> dict[str, str]:
        mmdd = fields.get("settleDate", "")
        if fields.get("fileType") != "00" or not re.fullmatch(r"\d{4}", mmdd):
            raise UnionPayFault("format", "fileType 应为 00，settleDate 应为 MMDD")
        today = settle_day(self.ledger.now())
        try:
            day = dt.date(today.year, int(mmdd[:2]), int(mmdd[2:]))
        except ValueError:
            raise UnionPayFault("format", "settleDate 不是日期") from None
        if day > today:
            day = day.replace(year=day.year - 1)
        data = reconciliation_zip(self.ledger, self.merchant_id, day)
        if data is None:
            raise UnionPayFault("98", "文件不存在")
        return {
            "respCode": "00",
            "respMsg": "成功[0000000]",
            "settleDate": mmdd,
            "fileType": "00",
            "fileName": f"{self.merchant_id}_{day:%Y%m%d}.zip",
            "fileContent": base64.b64encode(zlib.compress(data)).decode("ascii"),
        }


def _damaged(file_content: str) -> str:
    """The same zip with one byte of its compressed ZM data changed."""
    data = bytearray(zlib.decompress(base64.b64decode(file_content)))
    start = 30 + int.from_bytes(data[26:28], "little") + int.from_bytes(data[28:30], "little")
    data[start + 2] ^= 0x01
    return base64.b64encode(zlib.compress(bytes(data))).decode("ascii")


def _fee(fen: int) -> int:
    return int((Decimal(fen) * FEE_RATE).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _signed(direction: str, fen: int) -> str:
    return f"{direction}{fen:012d}"


def zm_record(values: dict[str, str]) -> bytes:
    """One ZM line: every field GBK-encoded, padded or cut to its width in bytes, one space between."""
    out = []
    for name, width in ZM_FIELDS:
        raw = values.get(name, "").encode("gbk")[:width]
        out.append(raw + b" " * (width - len(raw)))
    return b" ".join(out)


def _zm_entry(
    mer_id: str,
    *,
    code: str,
    at: dt.datetime,
    amount: int,
    fee: int,
    credit: bool,
    **fields: str,
) -> dict[str, str]:
    """A record's fields; ``credit``: money to the merchant (a consume), else from it (refund, cancel)."""
    settle, fee_direction = ("C", "D") if credit else ("D", "C")
    return {
        "交易代码": code,
        "代理机构标识码": "00010000",
        "发送机构标识码": "00010000",
        "系统跟踪号": f"{secrets.randbelow(10**6):06d}",
        "交易传输时间": at.strftime("%m%d%H%M%S"),
        "交易金额": f"{amount:012d}",
        "商户类别": "8062",
        "终端类型": "08",
        "支付卡类型": "01",
        "商户手续费": _signed(fee_direction, fee),
        "结算金额": _signed(settle, amount),
        "支付方式": "0001",
        "业务类型": "000000",
        "帐号类型": "01",
        "交互方式": "1",
        "商户代码": mer_id,
        "二级商户分账入账金额": _signed("C", 0),
        "清算净额": _signed(settle, amount - fee),
        "优惠金额": _signed("C", 0),
        "发票金额": _signed("C", 0),
        "分期付款附加手续费": f"{0:012d}",
        "交易介质": "1",
        **fields,
    }


def reconciliation_zip(ledger: Ledger, mer_id: str, day: dt.date) -> bytes | None:
    """The settlement day's zip (``INN<yymmdd>88ZM_<merId>`` and its ZME companion), or None if nothing settled."""
    end = dt.datetime.combine(day, SETTLE_CUTOFF, CST)
    payments, refunds = ledger.settled_between("unionpay", mer_id, end - dt.timedelta(days=1), end)
    if not payments and not refunds:
        return None
    lines = []
    for t in payments:
        paid = _bj(t["paid_at"])
        assert paid is not None
        entry = _zm_entry(
            mer_id,
            code="S22",
            at=paid,
            amount=t["amount_fen"],
            fee=_fee(t["amount_fen"]),
            credit=True,
            **{
                "帐号": t["payer_id"] or "",
                "查询流水号": t["trade_no"],
                "商户订单号": t["out_trade_no"],
                "交易类型": "01",
                "交易子类": "07" if t["scene"] == "QR" else "06",
                "商户自定义域": t["attach"] or "",
            },
        )
        lines.append(zm_record(entry))
    for r in refunds:
        done = _bj(r["succeeded_at"])
        assert done is not None
        kept = ledger.order_time("unionpay", mer_id, r["out_refund_no"])
        cancel = kept is not None and kept["kind"] == "cancel"
        whole = cancel or r["reason"] == "冲正"
        entry = _zm_entry(
            mer_id,
            code="S31" if whole else "S30",
            at=done,
            amount=r["amount_fen"],
            fee=_fee(r["total_fen"]) if whole else _fee(r["amount_fen"]),
            credit=False,
            **{
                "帐号": r["payer_id"] or "",
                "查询流水号": r["refund_no"],
                "商户订单号": r["out_refund_no"],
                "交易类型": "31" if whole else "04",
                "交易子类": "00",
                "原交易查询流水号": r["trade_no"],
                "原始交易订单号": r["out_trade_no"],
                "商户自定义域": r["reason"] or "",
            },
        )
        lines.append(zm_record(entry))
    stamp = day.strftime("%y%m%d")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"INN{stamp}88ZM_{mer_id}", b"\r\n".join(lines) + b"\r\n")
        archive.writestr(f"INN{stamp}88ZME_{mer_id}", b"")
    return out.getvalue()
