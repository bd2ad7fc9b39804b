"""UnionPay online payment (全渠道, version 5.1.0) behind the ``Channel`` interface.

Products: QR consume (``Scene.native``: 申请消费二维码, txnType 01/07, the payer scans with 云闪付 or a bank app)
and consume by the payer's UnionPay payment code (``Scene.codepay``: 被扫, txnType 01/06 with ``qrNo``); query
(00); consume cancel (31, same day); refund (04, partial or full, several per trade); reversal (99) of a payment
code consume that never settles; and the daily reconciliation file (file transfer, txnType 76).

Money is ``txnAmt`` in fen. ``orderId`` is our out_trade_no / out_refund_no (8–40 letters and digits: the
gateway's numbers are); ``txnTime`` is Beijing time at first sending, kept in the channel state before the
request leaves and repeated on every retry and query. UnionPay's ``queryId`` is the channel trade number.

Every answer and back-notification is signature-checked with the ``signPubKeyCert`` it carries, and that
certificate against the configured chain (``unionpay_crypto``). A refund's original trade number rides in
``reqReserved``, which UnionPay echoes in the refund's notification.

Assumptions where the public material leaves room:
- a QR order nobody paid is unknown to a query (``respCode 34``), like Alipay's precreate; it cannot be closed
  through the API and ends at its ``payTimeout`` (the order's expiry), so ``close`` only refuses a paid trade;
- a full refund of a trade paid today, asked before ``cancel_before`` (22:30, ahead of the 23:00 cut-off), is a
  消费撤销; anything else is a 退货. Both are asynchronous: accepted (00) now, final in the back-notification;
- ``origRespCode`` 03/04/05 mean still in progress; any other non-00 is final failure;
- a file-transfer answer ``respCode 98`` means there is no file for the day.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import io
import re
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import parse_qsl

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge import clock as shared_clock
from gateway.channels import codepay, unionpay_crypto
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
from gateway.channels.config import UnionPayConfig
from gateway.channels.http import exchange, new_session
from gateway.channels.keys import KeyInfo, KeyRing, KeyRole, certificate_info, load_merchant_key
from gateway.channels.state import ChannelState, KeptCertificate, MemoryState
from gateway.channels.unionpay_crypto import UnionPaySignatureError

CST = dt.timezone(dt.timedelta(hours=8))
BACK = "/gateway/api/backTransReq.do"
QUERY = "/gateway/api/queryTrans.do"
ORDER_ID = re.compile(r"^[0-9A-Za-z]{8,40}$")
IN_PROGRESS = frozenset({"03", "04", "05"})
RETRYABLE = frozenset({"02", "06", "94", "96"})
NO_FILE = "98"
NOT_FOUND = "34"
DUPLICATE = "12"
_TXN_PAYMENT = "01"
_TXN_REFUND = frozenset({"04", "31"})


def _fen(value: str | None, field: str) -> int:
    if value is None or not value.isdigit() or len(value) > 12:
        raise ChannelError("BAD_RESPONSE", f"{field} {value!r} is not an amount in fen")
    return int(value)


def trace_time(fields: dict[str, str]) -> dt.datetime | None:
    """When UnionPay says the transaction happened: ``traceTime`` (MMDDhhmmss) in the year of ``txnTime``."""
    sent = fields.get("txnTime", "")
    trace = fields.get("traceTime", "")
    try:
        base = unionpay_crypto.parse_txn_time(sent)
    except ValueError:
        return None
    if len(trace) != 10 or not trace.isdigit():
        return base
    try:
        at = dt.datetime.strptime(f"{base.year}{trace}", "%Y%m%d%H%M%S").replace(tzinfo=CST)
    except ValueError:
        return base
    if at < base - dt.timedelta(days=180):
        at = at.replace(year=base.year + 1)
    return at


def check_fields(fields: dict[str, str], certificate: Callable[[str], x509.Certificate]) -> None:
    """Raise ``UnionPaySignatureError`` unless ``fields`` are signed by the certificate they carry, and that
    certificate passes ``certificate`` (the chain, validity and owner check)."""
    if fields.get("signMethod") != unionpay_crypto.SIGN_METHOD or fields.get("version") != unionpay_crypto.VERSION:
        raise UnionPaySignatureError(
            "malformed", f"signMethod {fields.get('signMethod')!r} / version {fields.get('version')!r} unsupported"
        )
    pem = fields.get("signPubKeyCert")
    if not pem or not fields.get("signature"):
        raise UnionPaySignatureError("malformed", "no signature or signPubKeyCert: not a signed UnionPay message")
    public_key = certificate(pem).public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    if not unionpay_crypto.verify(public_key, fields):
        raise UnionPaySignatureError("bad_signature", "signature does not verify with its signPubKeyCert")


def open_notification(
    body: bytes,
    *,
    certificate: Callable[[str], x509.Certificate],
    mer_id: str | None,
    at: dt.datetime,
    max_age_s: int,
) -> dict[str, str]:
    """A back-notification's fields once verified: form-encoded, signed (``check_fields``), for ``mer_id``, its
    ``txnTime`` within ``max_age_s``. Raises ``NotificationRejected`` with the first reason found."""
    try:
        fields = dict(parse_qsl(body.decode("ascii"), keep_blank_values=True, encoding="utf-8", errors="strict"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise NotificationRejected("malformed", f"not a form-encoded back-notification: {exc}") from None
    try:
        check_fields(fields, certificate)
    except UnionPaySignatureError as exc:
        raise NotificationRejected(exc.reason, exc.message) from None
    if mer_id is not None and fields.get("merId") != mer_id:
        raise NotificationRejected("wrong_merchant", f"merId {fields.get('merId')!r} is not {mer_id}")
    try:
        sent = unionpay_crypto.parse_txn_time(fields.get("txnTime", ""))
    except ValueError:
        raise NotificationRejected("malformed", f"txnTime {fields.get('txnTime')!r} is not a time") from None
    age = (at - sent).total_seconds()
    if age > max_age_s or age < -300:
        raise NotificationRejected("stale", f"txnTime {fields['txnTime']} is {int(age)} s from now")
    return fields


class UnionPayChannel(Channel):
    name = "unionpay"

    def __init__(
        self,
        config: UnionPayConfig,
        *,
        session: aiohttp.ClientSession | None = None,
        state: ChannelState | None = None,
    ) -> None:
        self.config = config
        self.keys = KeyRing([load_merchant_key(k, unionpay_crypto.cert_id) for k in config.signing_keys()])
        self.roots = x509.load_pem_x509_certificates(_pem_or_der(config.root_cert_file.read_bytes()))
        self.middles = x509.load_pem_x509_certificates(_pem_or_der(config.middle_cert_file.read_bytes()))
        self.state: ChannelState = state or MemoryState()
        self.clock: Callable[[], dt.datetime] = shared_clock.utcnow
        """Now, for txnTime, the cancel-or-refund choice and notification age (tests move it)."""
        self._checked: OrderedDict[str, x509.Certificate] = OrderedDict()
        self._seen_unsaved: dict[str, x509.Certificate] = {}
        self._seen: dict[str, x509.Certificate] = {}
        self._session = session
        self._own_session = session is None
        self._base = config.base_url.rstrip("/")

    async def aclose(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = new_session(self.config.timeouts.connect_s, self.config.timeouts.total_s)
            self._own_session = True
        return self._session

    # -- signing and verifying -------------------------------------------------------------------------------

    def signed(self, fields: dict[str, str]) -> dict[str, str]:
        key = self.keys.current()
        out = {
            "version": unionpay_crypto.VERSION,
            "encoding": "UTF-8",
            "signMethod": unionpay_crypto.SIGN_METHOD,
            "accessType": "0",
            "merId": self.config.mer_id,
            **fields,
            "certId": key.serial,
        }
        out = {k: v for k, v in out.items() if v != ""}
        out["signature"] = unionpay_crypto.sign(key.key, out)
        return out

    def signing_certificate(self, pem: str, *, now: dt.datetime | None = None) -> x509.Certificate:
        """``pem`` checked against the configured chain (cached per certificate; validity checked each time)."""
        at = now or shared_clock.utcnow()
        cert = self._checked.get(pem)
        if cert is None:
            cert = unionpay_crypto.check_signing_certificate(
                pem, roots=self.roots, middles=self.middles, owners=self.config.accepted_owners, at=at
            )
            self._checked[pem] = cert
            self._seen_unsaved[unionpay_crypto.cert_id(cert)] = cert
            self._seen[unionpay_crypto.cert_id(cert)] = cert
            while len(self._checked) > 16:
                self._checked.popitem(last=False)
        elif not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise UnionPaySignatureError("expired_certificate", f"signPubKeyCert expired {cert.not_valid_after_utc}")
        return cert

    def check(self, fields: dict[str, str], *, now: dt.datetime | None = None) -> None:
        """Raise ``UnionPaySignatureError`` unless ``fields`` are signed by a certificate UnionPay's SDKs accept."""
        check_fields(fields, lambda pem: self.signing_certificate(pem, now=now))

    async def _persist_seen(self) -> None:
        for serial, cert in list(self._seen_unsaved.items()):
            await self.state.keep_certificate(_kept(cert, serial, "seen"))
            self._seen_unsaved.pop(serial, None)

    async def _call(self, url: str, fields: dict[str, str], what: str) -> dict[str, str]:
        body = unionpay_crypto.form_body(self.signed(fields))
        reply = await exchange(
            self._http(),
            "POST",
            url,
            headers={"Content-Type": "application/x-www-form-urlencoded;charset=UTF-8"},
            data=body,
        )
        if reply.status != 200:
            raise ChannelError(
                f"HTTP_{reply.status}",
                f"{what}: UnionPay answered {reply.status}",
                retryable=True,
                in_doubt=reply.status >= 500,
            )
        try:
            answer = unionpay_crypto.parse_answer(reply.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ChannelError("BAD_RESPONSE", f"{what}: answer is not k=v fields: {exc}", in_doubt=True) from None
        try:
            self.check(answer)
        except UnionPaySignatureError as exc:
            raise ChannelError("BAD_RESPONSE_SIGNATURE", f"{what}: {exc}", retryable=True, in_doubt=True) from None
        if answer.get("merId", self.config.mer_id) != self.config.mer_id:
            raise ChannelError("WRONG_MERCHANT", f"{what}: answer names merchant {answer.get('merId')}")
        await self._persist_seen()
        return answer

    def _fail(self, answer: dict[str, str], what: str) -> ChannelError:
        code = answer.get("respCode", "")
        message = f"{what}: {code} {answer.get('respMsg', '')}".strip()
        if code in IN_PROGRESS:
            return ChannelError(f"UNIONPAY_{code}", message, retryable=True, in_doubt=True)
        if code == NOT_FOUND:
            return ChannelError("NOT_FOUND", message)
        return ChannelError(f"UNIONPAY_{code}", message, retryable=code in RETRYABLE)

    # -- the interface ---------------------------------------------------------------------------------------

    def _order_id(self, value: str) -> str:
        if not ORDER_ID.match(value):
            raise ChannelError("PARAM_ERROR", f"orderId {value!r}: UnionPay takes 8-40 letters and digits")
        return value

    async def _time_for(self, order_id: str, kind: str) -> tuple[str, str]:
        kept = await self.state.reserve_order_time(order_id, unionpay_crypto.txn_time(self.clock()), kind)
        return kept.txn_time, kept.kind

    async def create(self, request: PaymentRequest) -> PaymentStarted:
        order_id = self._order_id(request.out_trade_no)
        if request.scene not in (Scene.native, Scene.codepay):
            raise ChannelError(
                "PARAM_ERROR", f"UnionPay here takes QR (native) and payment-code payments, not {request.scene}"
            )
        if request.amount_fen <= 0:
            raise ChannelError("PARAM_ERROR", "txnAmt must be a positive number of fen")
        txn_time, _ = await self._time_for(order_id, "consume")
        fields = {
            "txnType": "01",
            "bizType": "000000",
            "channelType": self.config.channel_type,
            "orderId": order_id,
            "txnTime": txn_time,
            "txnAmt": str(request.amount_fen),
            "currencyCode": "156",
            "backUrl": request.notify_url,
        }
        if request.scene is Scene.native:
            fields["txnSubType"] = "07"
            if request.expires_at is not None:
                fields["payTimeout"] = unionpay_crypto.txn_time(request.expires_at)
            answer = await self._call(self._base + BACK, fields, "QR consume")
            if answer.get("respCode") != "00":
                raise self._fail(answer, "QR consume")
            if not answer.get("qrCode"):
                raise ChannelError("BAD_RESPONSE", "QR consume: no qrCode in the answer", in_doubt=True)
            return PaymentStarted(order_id, TradeState.notpay, {"qr_code": answer["qrCode"]})
        if not request.auth_code:
            raise ChannelError("PARAM_ERROR", "codepay needs the payer's payment code")
        fields.update(txnSubType="06", qrNo=request.auth_code)
        try:
            answer = await self._call(self._base + BACK, fields, "payment-code consume")
        except ChannelError as exc:
            if not exc.in_doubt:
                raise
            answer = {"respCode": "04"}
        code = answer.get("respCode")
        if code not in IN_PROGRESS and code != "00":
            raise self._fail(answer, "payment-code consume")
        status = await codepay.settle(order_id, self._waiting_as_userpaying, self.reverse, self.config.codepay)
        return PaymentStarted(order_id, status.state, channel_trade_no=status.channel_trade_no)

    async def _waiting_as_userpaying(self, out_trade_no: str) -> TradeStatus:
        status = await self.query(out_trade_no)
        if status.state is TradeState.notpay:
            return TradeStatus(out_trade_no, TradeState.userpaying, status.channel_trade_no, status.amount_fen)
        return status

    async def _query(self, order_id: str, txn_time: str, what: str) -> dict[str, str] | None:
        """The query answer for an order, or None if UnionPay does not know it."""
        answer = await self._call(
            self._base + QUERY,
            {"txnType": "00", "txnSubType": "00", "bizType": "000000", "orderId": order_id, "txnTime": txn_time},
            what,
        )
        code = answer.get("respCode")
        if code == NOT_FOUND:
            return None
        if code != "00":
            raise self._fail(answer, what)
        if answer.get("orderId", order_id) != order_id:
            raise ChannelError("WRONG_TRADE", f"{what}: answer is about order {answer.get('orderId')}")
        return answer

    async def query(self, out_trade_no: str) -> TradeStatus:
        kept = await self.state.order_time(out_trade_no)
        if kept is None:
            return TradeStatus(out_trade_no, TradeState.not_found)
        answer = await self._query(out_trade_no, kept.txn_time, f"query {out_trade_no}")
        if answer is None:
            return TradeStatus(out_trade_no, TradeState.not_found)
        orig = answer.get("origRespCode", "")
        if orig == "00":
            state = TradeState.success
        elif orig in IN_PROGRESS:
            state = TradeState.notpay
        else:
            state = TradeState.payerror
        return TradeStatus(
            out_trade_no=out_trade_no,
            state=state,
            channel_trade_no=answer.get("queryId"),
            amount_fen=_fen(answer.get("txnAmt"), "txnAmt") if state is TradeState.success else None,
            paid_at=trace_time(answer) if state is TradeState.success else None,
            merchant_id=answer.get("merId"),
        )

    async def close(self, out_trade_no: str) -> None:
        status = await self.query(out_trade_no)
        if status.state in (TradeState.success, TradeState.refund):
            raise ChannelError("ORDERPAID", f"{out_trade_no} was paid; it cannot be closed")

    async def reverse(self, out_trade_no: str) -> None:
        """冲正: void a payment-code consume whatever became of it (money taken is given back)."""
        kept = await self.state.order_time(out_trade_no)
        if kept is None:
            return
        fields = {
            "txnType": "99",
            "txnSubType": "01",
            "bizType": "000000",
            "channelType": self.config.channel_type,
            "orderId": out_trade_no,
            "txnTime": kept.txn_time,
        }
        answer = await self._call(self._base + BACK, fields, f"reversal of {out_trade_no}")
        if answer.get("respCode") not in ("00", NOT_FOUND):
            raise self._fail(answer, f"reversal of {out_trade_no}")

    def _cancellable(self, request: RefundRequest, paid_at: dt.datetime | None, now: dt.datetime) -> bool:
        if request.refund_fen != request.total_fen or paid_at is None:
            return False
        here, paid = now.astimezone(CST), paid_at.astimezone(CST)
        cut = self.config.cancel_before
        return here.date() == paid.date() and here.time() < cut and paid.time() < cut

    async def refund(self, request: RefundRequest) -> RefundStatus:
        order_id = self._order_id(request.out_refund_no)
        if not request.notify_url:
            raise ChannelError("PARAM_ERROR", "UnionPay refunds finish by back-notification: give notify_url")
        trade = await self.query(request.out_trade_no)
        if trade.state not in (TradeState.success, TradeState.refund) or not trade.channel_trade_no:
            raise ChannelError("TRADE_NOT_PAID", f"{request.out_trade_no} is {trade.state}: nothing to refund")
        kept = await self.state.order_time(order_id)
        kind = kept.kind if kept is not None else None
        if kind is None:
            kind = "cancel" if self._cancellable(request, trade.paid_at, self.clock()) else "refund"
        txn_time, kind = await self._time_for(order_id, kind)
        fields = {
            "txnType": "31" if kind == "cancel" else "04",
            "txnSubType": "00",
            "bizType": "000000",
            "channelType": self.config.channel_type,
            "orderId": order_id,
            "txnTime": txn_time,
            "origQryId": trade.channel_trade_no,
            "txnAmt": str(request.refund_fen),
            "backUrl": request.notify_url,
            "reqReserved": request.out_trade_no,
        }
        what = f"{'cancel' if kind == 'cancel' else 'refund'} {order_id}"
        answer = await self._call(self._base + BACK, fields, what)
        code = answer.get("respCode")
        if code == DUPLICATE:
            return await self.query_refund(request.out_trade_no, order_id)
        if code != "00" and code not in IN_PROGRESS:
            raise self._fail(answer, what)
        return RefundStatus(request.out_trade_no, order_id, RefundState.processing, request.refund_fen)

    async def query_refund(self, out_trade_no: str, out_refund_no: str) -> RefundStatus:
        kept = await self.state.order_time(out_refund_no)
        if kept is None:
            raise ChannelError("NOT_FOUND", f"refund {out_refund_no} was never sent to UnionPay")
        answer = await self._query(out_refund_no, kept.txn_time, f"refund query {out_refund_no}")
        if answer is None:
            raise ChannelError("NOT_FOUND", f"refund {out_refund_no} is unknown to UnionPay")
        if answer.get("txnType") not in (*_TXN_REFUND, None):
            raise ChannelError("WRONG_TRADE", f"{out_refund_no} is a txnType {answer.get('txnType')} order")
        orig = answer.get("origRespCode", "")
        if orig == "00":
            state = RefundState.success
        elif orig in IN_PROGRESS:
            state = RefundState.processing
        else:
            state = RefundState.closed
        return RefundStatus(
            out_trade_no,
            out_refund_no,
            state,
            _fen(answer.get("txnAmt"), "txnAmt"),
            answer.get("queryId"),
            trace_time(answer) if state is RefundState.success else None,
        )

    def verify_notification(self, headers: dict[str, str], body: bytes, *, now: float | None = None) -> Notification:
        at = dt.datetime.fromtimestamp(now, dt.UTC) if now is not None else self.clock()
        fields = open_notification(
            body,
            certificate=lambda pem: self.signing_certificate(pem, now=at),
            mer_id=self.config.mer_id,
            at=at,
            max_age_s=self.config.notify_max_age_s,
        )
        query_id, order_id = fields.get("queryId", ""), fields.get("orderId", "")
        if not query_id or not order_id:
            raise NotificationRejected("malformed", "no queryId or orderId")
        ok = fields.get("respCode") == "00"
        try:
            amount = _fen(fields.get("txnAmt"), "txnAmt")
        except ChannelError as exc:
            raise NotificationRejected("malformed", exc.message) from None
        txn_type = fields.get("txnType")
        notification_id = f"{txn_type}:{query_id}"
        if txn_type == _TXN_PAYMENT:
            trade = TradeStatus(
                out_trade_no=order_id,
                state=TradeState.success if ok else TradeState.payerror,
                channel_trade_no=query_id,
                amount_fen=amount if ok else None,
                paid_at=trace_time(fields) if ok else None,
                merchant_id=fields["merId"],
            )
            return Notification("payment", notification_id, trade=trade)
        if txn_type in _TXN_REFUND:
            refund = RefundStatus(
                out_trade_no=fields.get("reqReserved", ""),
                out_refund_no=order_id,
                state=RefundState.success if ok else RefundState.closed,
                refund_fen=amount,
                channel_refund_no=query_id,
                succeeded_at=trace_time(fields) if ok else None,
            )
            return Notification("refund", notification_id, refund=refund)
        raise NotificationRejected("malformed", f"txnType {txn_type!r} is not a consume, refund or cancel")

    def acknowledge(self, accepted: bool) -> Acknowledgement:
        """UnionPay resends a back-notification until it gets HTTP 200."""
        if accepted:
            return Acknowledgement(200, {"Content-Type": "text/plain"}, b"ok")
        return Acknowledgement(500, {"Content-Type": "text/plain"}, b"not processed, retry")

    async def download_bill(self, day: dt.date) -> bytes:
        """The day's reconciliation zip (its ZM file holds the trades), after its zip CRCs check out."""
        fields = {
            "txnType": "76",
            "txnSubType": "01",
            "bizType": "000000",
            "settleDate": day.strftime("%m%d"),
            "txnTime": unionpay_crypto.txn_time(self.clock()),
            "fileType": "00",
        }
        answer = await self._call(self.config.file_url, fields, f"file transfer {day}")
        code = answer.get("respCode")
        if code == NO_FILE:
            raise ChannelError("NO_STATEMENT_EXIST", f"no UnionPay reconciliation file for {day}")
        if code != "00":
            raise self._fail(answer, f"file transfer {day}")
        try:
            packed = base64.b64decode(answer.get("fileContent", ""), validate=True)
            data = zlib.decompress(packed)
        except (binascii.Error, ValueError, zlib.error) as exc:
            raise ChannelError(
                "BILL_CORRUPT", f"{day}: fileContent is not base64 deflate: {exc}", retryable=True
            ) from None
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                bad = archive.testzip()
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
            raise ChannelError("BILL_CORRUPT", f"{day}: the file is not a sound zip: {exc}", retryable=True) from None
        if bad is not None:
            raise ChannelError("BILL_CORRUPT", f"{day}: CRC error in {bad}", retryable=True)
        if not any("ZM_" in n and "ZME_" not in n for n in names):
            raise ChannelError("BILL_CORRUPT", f"{day}: no ZM file in the zip ({names})", retryable=True)
        return data

    # -- keys ------------------------------------------------------------------------------------------------

    async def load_trust(self) -> None:
        """Keep the signing certificates seen on notifications; learn those other instances saw (for the key
        inventory only: every message is checked against the chain on its own)."""
        await self._persist_seen()
        for kept in await self.state.certificates():
            if kept.serial not in self._seen:
                self._seen[kept.serial] = x509.load_pem_x509_certificate(kept.pem)

    def key_inventory(self, now: dt.datetime) -> list[KeyInfo]:
        out = self.keys.inventory(self.name, "signs requests (certId)", now)
        for cert in (*self.roots, *self.middles):
            role_name = "root" if cert.issuer == cert.subject else "intermediate"
            out.append(
                certificate_info(
                    cert,
                    channel=self.name,
                    role=KeyRole.anchors,
                    id=f"unionpay-{role_name}",
                    serial=format(cert.serial_number, "X"),
                    used_for="checks signPubKeyCert",
                    now=now,
                )
            )
        for cert in self._seen.values():
            out.append(
                certificate_info(
                    cert,
                    channel=self.name,
                    role=KeyRole.verifies,
                    id="signPubKeyCert",
                    serial=unionpay_crypto.cert_id(cert),
                    used_for="verifies answers and notifications (seen on them; UnionPay replaces it)",
                    now=now,
                    watched=False,
                )
            )
        return out


def _pem_or_der(data: bytes) -> bytes:
    """UnionPay hands its certificates out as ``.cer``: PEM, sometimes DER."""
    if b"-----BEGIN" in data:
        return data
    return x509.load_der_x509_certificate(data).public_bytes(serialization.Encoding.PEM)


def _kept(cert: x509.Certificate, serial: str, source: str) -> KeptCertificate:
    pem = cert.public_bytes(serialization.Encoding.PEM)
    return KeptCertificate(serial, pem, cert.not_valid_before_utc, cert.not_valid_after_utc, source)
