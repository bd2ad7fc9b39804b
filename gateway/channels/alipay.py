"""Alipay OpenAPI (RSA2; public-key mode or public-key-certificate mode) behind the ``Channel`` interface.

In certificate mode every request carries ``app_cert_sn`` (of the merchant key that signs it) and
``alipay_root_cert_sn``; an answer naming an Alipay certificate not yet trusted has it fetched
(``alipay.open.app.alipaycert.download``), chain-checked against the root bundle, kept in the channel state for
every instance, and used; the old one keeps verifying until it expires.

Products: precreate (QR, ``Scene.native``), wap pay (``Scene.h5``: the signed cashier URL), app pay (the signed
order string for the app SDK), trade.create (``Scene.jsapi``, 小程序/生活号 with the buyer id) and trade.pay
(付款码, ``Scene.codepay``) with its WAIT_BUYER_PAY (code 10003) polling and cancel. Amounts go out as yuan
strings converted exactly from fen.

Assumptions where the public docs leave room:
- ``close`` of a trade Alipay does not know (a QR never scanned) succeeds: nothing can be paid on it once its
  ``timeout_express`` passes, which every created trade carries;
- a refund query that names the request but has no ``refund_status`` is still PROCESSING; one that names nothing
  means the refund does not exist (``ChannelError('NOT_FOUND')``);
- a refund notification (``out_biz_no`` set) reports ``refund_fee`` — the trade's *cumulative* refunded amount —
  as ``refund_fen``; the gateway matches it by ``out_refund_no`` and keeps its own per-refund amount;
- a trade ``TRADE_CLOSED`` after being paid (``send_pay_date`` set) was fully refunded: ``REFUND``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import io
import json
import re
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge import clock
from gateway.channels import alipay_crypto, certchain, codepay
from gateway.channels.base import (
    Acknowledgement,
    Channel,
    ChannelError,
    Notification,
    NotificationRejected,
    PaymentRequest,
    PaymentStarted,
    RefundRequest,
    RefundState,
    RefundStatus,
    Scene,
    TradeState,
    TradeStatus,
)
from gateway.channels.config import AlipayConfig
from gateway.channels.http import exchange, new_session
from gateway.channels.keys import KeyInfo, KeyRing, KeyRole, KeyStatus, certificate_info, load_merchant_key
from gateway.channels.money import fen_to_yuan, yuan_to_fen
from gateway.channels.state import ChannelState, KeptCertificate, MemoryState

CST = dt.timezone(dt.timedelta(hours=8))
STAMP = "%Y-%m-%d %H:%M:%S"
_STATUS = {
    "WAIT_BUYER_PAY": TradeState.notpay,
    "TRADE_SUCCESS": TradeState.success,
    "TRADE_FINISHED": TradeState.success,
    "TRADE_CLOSED": TradeState.closed,
}
_RETRYABLE_SUB_CODES = frozenset({"ACQ.SYSTEM_ERROR", "aop.ACQ.SYSTEM_ERROR", "isp.unknow-error"})
PROBE_TRADE = "HISGW-CERT-PROBE-0000000000000001"
"""A trade number never used: querying it makes Alipay answer with the certificate it signs with now."""


def parse_stamp(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.strptime(value[:19], STAMP).replace(tzinfo=CST)


def _fen(value: Any) -> int | None:
    return yuan_to_fen(str(value)) if value not in (None, "") else None


def trade_status(data: dict[str, Any], *, merchant_id: str | None = None) -> TradeStatus:
    raw = data.get("trade_status", "")
    state = _STATUS.get(raw)
    if state is None:
        raise ChannelError("BAD_RESPONSE", f"unknown trade_status {raw!r}")
    paid_at = parse_stamp(data.get("send_pay_date") or data.get("gmt_payment"))
    if state is TradeState.closed and paid_at is not None:
        state = TradeState.refund
    if state is TradeState.success and data.get("refund_fee") not in (None, "", "0.00"):
        state = TradeState.refund
    return TradeStatus(
        out_trade_no=data.get("out_trade_no", ""),
        state=state,
        channel_trade_no=data.get("trade_no"),
        amount_fen=_fen(data.get("total_amount")),
        paid_at=paid_at,
        payer_id=data.get("buyer_user_id") or data.get("buyer_id") or data.get("buyer_open_id"),
        merchant_id=data.get("seller_id") or merchant_id,
    )


def open_notification(
    alipay_keys: rsa.RSAPublicKey | Sequence[rsa.RSAPublicKey],
    headers: dict[str, str],
    body: bytes,
    *,
    now: float | None = None,
    app_id: str | None = None,
    seller_id: str | None = None,
    max_age_s: int = 26 * 3600,
) -> dict[str, str]:
    """Verify an async notification (form POST) with any of ``alipay_keys`` (several while Alipay's certificate
    is being replaced); its fields. Raises ``NotificationRejected``: malformed, bad_signature, wrong_merchant
    (also when ``seller_id`` is expected and the notification names none), stale."""
    keys = [alipay_keys] if isinstance(alipay_keys, rsa.RSAPublicKey) else list(alipay_keys)
    content_type = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
    match = re.search(r"charset=([\w-]+)", content_type)
    try:
        probe = dict(parse_qsl(body.decode("ascii")))
        charset = probe.get("charset") or (match.group(1) if match else "utf-8")
        params = dict(parse_qsl(body.decode("ascii"), keep_blank_values=True, encoding=charset, errors="strict"))
    except (UnicodeDecodeError, LookupError) as exc:
        raise NotificationRejected("malformed", f"not a form-encoded notification: {exc}") from None
    signature = params.get("sign")
    if not signature or not params.get("notify_id"):
        raise NotificationRejected("malformed", "no sign or notify_id: not an Alipay notification")
    if params.get("sign_type", "RSA2") != "RSA2":
        raise NotificationRejected("malformed", f"sign_type {params.get('sign_type')} is not RSA2")
    content = alipay_crypto.notification_content(params)
    if not any(alipay_crypto.verify(key, content, signature) for key in keys):
        raise NotificationRejected("bad_signature", "signature does not verify with the Alipay public key")
    if app_id is not None and params.get("app_id") != app_id:
        raise NotificationRejected("wrong_merchant", f"app_id {params.get('app_id')!r} is not {app_id}")
    if seller_id is not None and params.get("seller_id") != seller_id:
        raise NotificationRejected("wrong_merchant", f"seller_id {params.get('seller_id')!r} is not {seller_id}")
    try:
        sent = parse_stamp(params.get("notify_time"))
    except ValueError:
        sent = None
    if sent is None:
        raise NotificationRejected("malformed", f"notify_time {params.get('notify_time')!r} is not a time")
    current = clock.now() if now is None else now
    age = current - sent.timestamp()
    if age > max_age_s or age < -300:
        raise NotificationRejected("stale", f"notify_time {params['notify_time']} is {int(age)} s from now")
    return params


def _zip_name(info: zipfile.ZipInfo) -> str:
    """Alipay names its CSVs in GBK without the zip UTF-8 flag; Python reads such names as cp437."""
    if info.flag_bits & 0x800:
        return info.filename
    try:
        return info.filename.encode("cp437").decode("gbk")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return info.filename


@dataclass(frozen=True)
class AlipayKey:
    """A key Alipay signs with: the public key (public-key mode, ``sn`` empty) or a certificate."""

    sn: str
    key: rsa.RSAPublicKey
    certificate: x509.Certificate | None = None

    def usable(self, at: dt.datetime) -> bool:
        c = self.certificate
        return c is None or c.not_valid_before_utc <= at <= c.not_valid_after_utc


class AlipayChannel(Channel):
    name = "alipay"

    def __init__(
        self,
        config: AlipayConfig,
        *,
        session: aiohttp.ClientSession | None = None,
        state: ChannelState | None = None,
    ) -> None:
        self.config = config
        self.state: ChannelState = state or MemoryState()
        self.keys = KeyRing(
            [load_merchant_key(k, alipay_crypto.cert_sn, default_serial=k.id) for k in config.signing_keys()]
        )
        self._alipay_keys: dict[str, AlipayKey] = {}
        self._intermediates: list[x509.Certificate] = []
        self._roots: list[x509.Certificate] = []
        self.root_cert_sn = ""
        if config.alipay_cert_file is not None and config.alipay_root_cert_file is not None:
            bundle = certchain.load_bundle(config.alipay_cert_file.read_bytes())
            self._intermediates = [c for c in bundle if c is not alipay_crypto.leaf(bundle)]
            root_bundle = config.alipay_root_cert_file.read_bytes()
            self._roots = certchain.load_bundle(root_bundle)
            self.root_cert_sn = alipay_crypto.root_cert_sn(root_bundle)
            self._trust(alipay_crypto.leaf(bundle))
        else:
            assert config.alipay_public_key_file is not None
            key = alipay_crypto.load_public_key(config.alipay_public_key_file.read_bytes())
            self._alipay_keys[""] = AlipayKey("", key)
        self._download_lock = asyncio.Lock()
        self._failed_download: dict[str, float] = {}
        self._last_probe = -60.0
        self._session = session
        self._own_session = session is None

    def _trust(self, cert: x509.Certificate) -> AlipayKey:
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError("the Alipay certificate must be RSA")
        trusted = AlipayKey(alipay_crypto.cert_sn(cert), key, cert)
        self._alipay_keys[trusted.sn] = trusted
        return trusted

    async def aclose(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = new_session(self.config.timeouts.connect_s, self.config.timeouts.total_s)
            self._own_session = True
        return self._session

    def signed_params(self, method: str, biz: dict[str, Any], **extra: str | None) -> dict[str, str]:
        key = self.keys.current()
        params = {
            "app_id": self.config.app_id,
            "method": method,
            "format": "JSON",
            "charset": "utf-8",
            "sign_type": "RSA2",
            "timestamp": clock.utcnow().astimezone(CST).strftime(STAMP),
            "version": "1.0",
            "biz_content": json.dumps(biz, ensure_ascii=False, separators=(",", ":")),
            **{k: v for k, v in extra.items() if v},
        }
        if self.config.certificate_mode:
            params["app_cert_sn"] = key.serial
            params["alipay_root_cert_sn"] = self.root_cert_sn
        params["sign"] = alipay_crypto.sign(key.key, alipay_crypto.request_content(params))
        return params

    def usable_keys(self, at: dt.datetime | None = None) -> list[AlipayKey]:
        now = at or clock.utcnow()
        return [k for k in self._alipay_keys.values() if k.usable(now)]

    async def _answer_key(self, method: str, cert_sn: str | None) -> AlipayKey:
        """The key an answer says it was signed with; in certificate mode an unknown SN is fetched from Alipay
        (alipay.open.app.alipaycert.download) and believed only if it chains to the configured root."""
        if not self.config.certificate_mode:
            return self._alipay_keys[""]
        if not cert_sn:
            raise ChannelError("BAD_RESPONSE", f"{method}: certificate mode, but the answer names no alipay_cert_sn")
        known = self._alipay_keys.get(cert_sn)
        if known is None:
            await self.load_trust()
            known = self._alipay_keys.get(cert_sn) or await self._fetch_once(cert_sn)
        if not known.usable(clock.utcnow()):
            raise ChannelError(
                "BAD_RESPONSE_SIGNATURE", f"{method}: Alipay certificate {cert_sn} has expired", in_doubt=True
            )
        return known

    async def _fetch_once(self, cert_sn: str) -> AlipayKey:
        """One download at a time; calls naming the same new SN meanwhile wait for it. A failed download is not
        tried again for that SN within a minute."""
        async with self._download_lock:
            known = self._alipay_keys.get(cert_sn)
            if known is not None:
                return known
            if time.monotonic() - self._failed_download.get(cert_sn, -60.0) < 60:
                raise ChannelError("UNKNOWN_ALIPAY_CERT", f"Alipay certificate {cert_sn} unknown", retryable=True)
            try:
                return await self._download_certificate(cert_sn)
            except ChannelError:
                self._failed_download[cert_sn] = time.monotonic()
                raise

    async def _download_certificate(self, cert_sn: str) -> AlipayKey:
        method = "alipay.open.app.alipaycert.download"
        text = await self._post(method, self.signed_params(method, {"alipay_cert_sn": cert_sn}))
        raw, signature = alipay_crypto.signed_part(text, method.replace(".", "_") + "_response")
        if raw is None or not signature:
            raise ChannelError("BAD_RESPONSE", f"{method}: no signed answer", retryable=True)
        data = json.loads(raw)
        if str(data.get("code")) != "10000":
            raise ChannelError(str(data.get("sub_code") or data.get("code")), f"{method}: {data.get('sub_msg', '')}")
        try:
            pem = base64.b64decode(str(data.get("alipay_cert_content", "")), validate=True)
            bundle = certchain.load_bundle(pem)
            cert = alipay_crypto.leaf(bundle)
        except (binascii.Error, ValueError) as exc:
            raise ChannelError("BAD_RESPONSE", f"{method}: alipay_cert_content is not a certificate: {exc}") from None
        if alipay_crypto.cert_sn(cert) != cert_sn:
            raise ChannelError("BAD_RESPONSE", f"{method}: asked for {cert_sn}, got {alipay_crypto.cert_sn(cert)}")
        try:
            certchain.verify_chain(cert, [*bundle, *self._intermediates], self._roots, at=clock.utcnow())
        except certchain.ChainError as exc:
            raise ChannelError("UNTRUSTED_ALIPAY_CERT", f"{method}: {exc.message}") from None
        key = cert.public_key()
        assert isinstance(key, rsa.RSAPublicKey)
        if not alipay_crypto.verify(key, raw.encode(), signature):
            raise ChannelError("BAD_RESPONSE_SIGNATURE", f"{method}: the answer is not signed by that certificate")
        self._intermediates.extend(c for c in bundle if c is not cert and c not in self._intermediates)
        await self.state.keep_certificate(
            KeptCertificate(cert_sn, pem, cert.not_valid_before_utc, cert.not_valid_after_utc, "downloaded")
        )
        return self._trust(cert)

    def may_learn_keys(self, reason: str) -> bool:
        """A notification carries no certificate SN: in certificate mode one that no trusted certificate verifies
        may be signed by the certificate Alipay has just switched to."""
        return self.config.certificate_mode and reason in ("unknown_serial", "bad_signature")

    async def refresh_trust(self, *, force: bool = False) -> bool:
        """Certificate mode: ask Alipay something (a query of a trade that does not exist) so that its answer names
        the certificate it signs with now; an unknown one is fetched and chain-checked (``_answer_key``). At most
        once a minute unless ``force``: a flood of forged notifications costs one query a minute."""
        if not self.config.certificate_mode:
            return False
        before = set(self._alipay_keys)
        await self.load_trust()
        if set(self._alipay_keys) != before:
            return True
        if not force and time.monotonic() - self._last_probe < 60:
            return False
        self._last_probe = time.monotonic()
        try:
            await self._call("alipay.trade.query", {"out_trade_no": PROBE_TRADE})
        except ChannelError as exc:
            if exc.code != "ACQ.TRADE_NOT_EXIST":
                raise
        return set(self._alipay_keys) != before

    async def load_trust(self) -> None:
        if not self.config.certificate_mode:
            return
        for kept in await self.state.certificates():
            if kept.serial not in self._alipay_keys:
                bundle = certchain.load_bundle(kept.pem)
                try:
                    cert = alipay_crypto.leaf(bundle)
                    certchain.verify_chain(cert, [*bundle, *self._intermediates], self._roots, at=clock.utcnow())
                except (ValueError, certchain.ChainError):
                    continue
                self._trust(cert)

    async def _post(self, method: str, params: dict[str, str]) -> str:
        reply = await exchange(
            self._http(),
            "POST",
            self.config.gateway_url + "?charset=utf-8",
            headers={"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"},
            data=urlencode(params).encode(),
        )
        if reply.status != 200:
            raise ChannelError(
                f"HTTP_{reply.status}",
                f"{method}: gateway answered {reply.status}",
                retryable=True,
                in_doubt=reply.status >= 500,
            )
        return reply.body.decode("utf-8", errors="replace")

    async def _call(self, method: str, biz: dict[str, Any], **extra: str | None) -> dict[str, Any]:
        """A gateway call whose answer is signature-checked; answers with code 10000 or 10003 are returned."""
        text = await self._post(method, self.signed_params(method, biz, **extra))
        key = method.replace(".", "_") + "_response"
        raw, signature = alipay_crypto.signed_part(text, key)
        if raw is None:
            raw, signature = alipay_crypto.signed_part(text, "error_response")
        if raw is None:
            raise ChannelError("BAD_RESPONSE", f"{method}: no {key} in the answer", in_doubt=True)
        trusted = await self._answer_key(method, alipay_crypto.answer_cert_sn(text))
        if not signature or not alipay_crypto.verify(trusted.key, raw.encode(), signature):
            raise ChannelError(
                "BAD_RESPONSE_SIGNATURE", f"{method}: answer signature does not verify", retryable=True, in_doubt=True
            )
        data = json.loads(raw)
        code = str(data.get("code", ""))
        if code in ("10000", "10003"):
            return data
        sub_code = str(data.get("sub_code") or code or "UNKNOWN")
        message = f"{data.get('msg', '')}: {data.get('sub_msg', '')}".strip(": ")
        if code == "20000" or sub_code in _RETRYABLE_SUB_CODES:
            raise ChannelError(sub_code, message, retryable=True, in_doubt=True)
        raise ChannelError(sub_code, message)

    def key_inventory(self, now: dt.datetime) -> list[KeyInfo]:
        out = self.keys.inventory(
            self.name, "signs requests" + (" (app_cert_sn)" if self.config.certificate_mode else ""), now
        )
        for trusted in self._alipay_keys.values():
            if trusted.certificate is None:
                out.append(
                    KeyInfo(
                        self.name,
                        KeyRole.verifies,
                        "alipay-public-key",
                        "-",
                        KeyStatus.active,
                        None,
                        "verifies answers and notifications",
                    )
                )
            else:
                out.append(
                    certificate_info(
                        trusted.certificate,
                        channel=self.name,
                        role=KeyRole.verifies,
                        id="alipay-cert",
                        serial=trusted.sn,
                        used_for="verifies answers and notifications",
                        now=now,
                    )
                )
        for cert in self._roots:
            if cert.signature_algorithm_oid in alipay_crypto.RSA_SIGNED:
                out.append(
                    certificate_info(
                        cert,
                        channel=self.name,
                        role=KeyRole.anchors,
                        id="alipay-root",
                        serial=alipay_crypto.cert_sn(cert),
                        used_for="checks Alipay certificates",
                        now=now,
                    )
                )
        return out

    def _trade_biz(self, request: PaymentRequest, product_code: str | None = None) -> dict[str, Any]:
        biz: dict[str, Any] = {
            "out_trade_no": request.out_trade_no,
            "total_amount": fen_to_yuan(request.amount_fen),
            "subject": request.description,
        }
        if product_code:
            biz["product_code"] = product_code
        if request.expires_at is not None:
            biz["time_expire"] = request.expires_at.astimezone(CST).strftime(STAMP)
        else:
            biz["timeout_express"] = self.config.trade_timeout
        if request.attach:
            biz["body"] = request.attach
        return biz

    async def create(self, request: PaymentRequest) -> PaymentStarted:
        no = request.out_trade_no
        if request.scene is Scene.native:
            answer = await self._call("alipay.trade.precreate", self._trade_biz(request), notify_url=request.notify_url)
            return PaymentStarted(no, TradeState.notpay, {"qr_code": answer["qr_code"]})
        if request.scene is Scene.h5:
            params = self.signed_params(
                "alipay.trade.wap.pay", self._trade_biz(request, "QUICK_WAP_WAY"), notify_url=request.notify_url
            )
            return PaymentStarted(no, TradeState.notpay, {"url": self.config.gateway_url + "?" + urlencode(params)})
        if request.scene is Scene.app:
            params = self.signed_params(
                "alipay.trade.app.pay", self._trade_biz(request, "QUICK_MSECURITY_PAY"), notify_url=request.notify_url
            )
            return PaymentStarted(no, TradeState.notpay, {"order_string": urlencode(params)})
        if request.scene is Scene.jsapi:
            if not request.payer_id:
                raise ChannelError("PARAM_ERROR", "Alipay JSAPI needs the buyer id")
            biz = self._trade_biz(request, "JSAPI_PAY") | {"buyer_id": request.payer_id}
            answer = await self._call("alipay.trade.create", biz, notify_url=request.notify_url)
            return PaymentStarted(no, TradeState.notpay, {"trade_no": answer["trade_no"]}, answer["trade_no"])
        if not request.auth_code:
            raise ChannelError("PARAM_ERROR", "codepay needs the payer's auth_code")
        biz = self._trade_biz(request) | {"scene": "bar_code", "auth_code": request.auth_code}
        try:
            answer = await self._call("alipay.trade.pay", biz, notify_url=request.notify_url)
        except ChannelError as exc:
            if not exc.in_doubt:
                raise
            answer = {"code": "10003"}
        if answer.get("code") == "10000" and answer.get("trade_status", "TRADE_SUCCESS") == "TRADE_SUCCESS":
            return PaymentStarted(no, TradeState.success, channel_trade_no=answer.get("trade_no"))
        status = await codepay.settle(no, self._query_waiting_as_userpaying, self.reverse, self.config.codepay)
        return PaymentStarted(no, status.state, channel_trade_no=status.channel_trade_no)

    async def _query_waiting_as_userpaying(self, out_trade_no: str) -> TradeStatus:
        status = await self.query(out_trade_no)
        if status.state is TradeState.notpay:
            return TradeStatus(out_trade_no, TradeState.userpaying, status.channel_trade_no, status.amount_fen)
        return status

    async def query(self, out_trade_no: str) -> TradeStatus:
        try:
            answer = await self._call("alipay.trade.query", {"out_trade_no": out_trade_no})
        except ChannelError as exc:
            if exc.code == "ACQ.TRADE_NOT_EXIST":
                return TradeStatus(out_trade_no=out_trade_no, state=TradeState.not_found)
            raise
        return trade_status(answer)

    async def close(self, out_trade_no: str) -> None:
        try:
            await self._call("alipay.trade.close", {"out_trade_no": out_trade_no})
        except ChannelError as exc:
            if exc.code == "ACQ.TRADE_NOT_EXIST":
                return
            if exc.code != "ACQ.TRADE_STATUS_ERROR":
                raise
            status = await self.query(out_trade_no)
            if status.state in (TradeState.success, TradeState.refund):
                raise ChannelError("ORDERPAID", f"{out_trade_no} was paid; it cannot be closed") from None
            if status.state is not TradeState.closed:
                raise

    async def reverse(self, out_trade_no: str) -> None:
        try:
            answer = await self._call("alipay.trade.cancel", {"out_trade_no": out_trade_no})
        except ChannelError as exc:
            if exc.code == "ACQ.TRADE_NOT_EXIST":
                return
            raise
        if answer.get("retry_flag") == "Y":
            raise ChannelError("RETRY", f"cancel of {out_trade_no} asks to be retried", retryable=True, in_doubt=True)

    async def refund(self, request: RefundRequest) -> RefundStatus:
        biz: dict[str, Any] = {
            "out_trade_no": request.out_trade_no,
            "refund_amount": fen_to_yuan(request.refund_fen),
            "out_request_no": request.out_refund_no,
        }
        if request.reason:
            biz["refund_reason"] = request.reason
        answer = await self._call("alipay.trade.refund", biz)
        if answer.get("fund_change") == "Y":
            return RefundStatus(
                request.out_trade_no,
                request.out_refund_no,
                RefundState.success,
                request.refund_fen,
                answer.get("trade_no"),
                parse_stamp(answer.get("gmt_refund_pay")),
            )
        try:
            return await self.query_refund(request.out_trade_no, request.out_refund_no)
        except ChannelError as exc:
            if exc.code != "NOT_FOUND":
                raise
        return RefundStatus(request.out_trade_no, request.out_refund_no, RefundState.processing, request.refund_fen)

    async def query_refund(self, out_trade_no: str, out_refund_no: str) -> RefundStatus:
        answer = await self._call(
            "alipay.trade.fastpay.refund.query",
            {"out_trade_no": out_trade_no, "out_request_no": out_refund_no, "query_options": ["gmt_refund_pay"]},
        )
        if not answer.get("refund_amount"):
            raise ChannelError("NOT_FOUND", f"refund {out_refund_no} of {out_trade_no} is unknown to Alipay")
        state = RefundState.success if answer.get("refund_status") == "REFUND_SUCCESS" else RefundState.processing
        return RefundStatus(
            out_trade_no,
            out_refund_no,
            state,
            yuan_to_fen(answer["refund_amount"]),
            answer.get("trade_no"),
            parse_stamp(answer.get("gmt_refund_pay")) if state is RefundState.success else None,
        )

    def verify_notification(self, headers: dict[str, str], body: bytes, *, now: float | None = None) -> Notification:
        params = open_notification(
            [k.key for k in self.usable_keys()],
            headers,
            body,
            now=now,
            app_id=self.config.app_id,
            seller_id=self.config.seller_id,
            max_age_s=self.config.notify_max_age_s,
        )
        try:
            trade = trade_status(params, merchant_id=params.get("seller_id"))
            if params.get("out_biz_no") and params.get("refund_fee"):
                refund = RefundStatus(
                    trade.out_trade_no,
                    params["out_biz_no"],
                    RefundState.success,
                    yuan_to_fen(params["refund_fee"]),
                    trade.channel_trade_no,
                    parse_stamp(params.get("gmt_refund")),
                    cumulative=True,
                )
                return Notification("refund", params["notify_id"], trade=trade, refund=refund)
        except (ChannelError, ValueError) as exc:
            raise NotificationRejected("malformed", str(exc)) from None
        return Notification("payment", params["notify_id"], trade=trade)

    def acknowledge(self, accepted: bool) -> Acknowledgement:
        return Acknowledgement(200, {"Content-Type": "text/plain"}, b"success" if accepted else b"fail")

    async def download_bill(self, day: dt.date) -> bytes:
        try:
            answer = await self._call(
                "alipay.data.dataservice.bill.downloadurl.query", {"bill_type": "trade", "bill_date": day.isoformat()}
            )
        except ChannelError as exc:
            if exc.code in ("isp.bill_not_exist", "ACQ.BILL_NOT_EXIST"):
                raise ChannelError("NO_STATEMENT_EXIST", f"no Alipay statement for {day}") from None
            raise
        url = answer.get("bill_download_url", "")
        if urlsplit(url).scheme not in ("http", "https"):
            raise ChannelError("BAD_RESPONSE", f"bill_download_url {url!r} is not an http(s) URL")
        reply = await exchange(self._http(), "GET", url)
        if reply.status != 200:
            raise ChannelError(f"HTTP_{reply.status}", f"bill download failed for {day}", retryable=True)
        try:
            with zipfile.ZipFile(io.BytesIO(reply.body)) as archive:
                bad = archive.testzip()
                names = [_zip_name(info) for info in archive.infolist()]
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ChannelError("BILL_CORRUPT", f"{day}: statement is not a sound zip: {exc}", retryable=True) from None
        if bad is not None:
            raise ChannelError("BILL_CORRUPT", f"{day}: CRC error in {bad}", retryable=True)
        if not any(n.endswith("业务明细.csv") for n in names):
            raise ChannelError("BILL_CORRUPT", f"{day}: no 业务明细.csv in the statement ({names})", retryable=True)
        return reply.body
