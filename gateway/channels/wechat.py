"""WeChat Pay API v3 (direct merchant) behind the ``Channel`` interface.

Products: JSAPI (公众号/小程序, the sign package for ``wx.requestPayment``), Native (``code_url``), H5 (``h5_url``),
App (the sign package for the app SDK) and 付款码 through the v3 ``POST /v3/pay/transactions/codepay`` with its
``/reverse`` (published 2024). A codepay answer of HTTP 202, or a body whose only word is ``trade_state:
USERPAYING``, both mean "the payer is entering a password"; there is no callback for codepay, so the trade is
polled and reversed (see ``codepay.settle``).

Every 2xx answer is signature-checked (a forged "SUCCESS" would be a loss), except the bill file itself, which
is checked against the SHA-1 given by the signed ``tradebill`` answer. Assumptions, where the public docs leave
room: ``hash_value`` is the SHA-1 of the uncompressed bill (as documented for GZIP); a refund unknown to WeChat
and a missing statement raise ``ChannelError`` with codes ``NOT_FOUND`` and ``NO_STATEMENT_EXIST``; ``ACCEPT``
(received, debit pending) is reported as USERPAYING; reversing a trade WeChat does not know succeeds.

Keys: requests are signed by the merchant key that is current (``keys.KeyRing``: rotation without downtime).
Platform certificates are downloaded from ``/v3/certificates`` (``refresh_trust``: on the shared schedule and when
a message names a serial not trusted yet), kept in the channel state for every instance, and trusted only within
their validity; the WeChat Pay public key (``PUB_KEY_ID_…``) may be trusted alongside.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import hashlib
import json
import zlib
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bridge import clock
from gateway.channels import codepay, wechat_crypto
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
from gateway.channels.config import WechatConfig
from gateway.channels.http import Reply, exchange, new_session
from gateway.channels.keys import KeyInfo, KeyRing, KeyRole, KeyStatus, certificate_info, load_merchant_key
from gateway.channels.replay import ReplayGuard
from gateway.channels.state import ChannelState, KeptCertificate, MemoryState
from gateway.channels.wechat_crypto import PlatformKey, WechatSignatureError, WechatVerifier

CST = dt.timezone(dt.timedelta(hours=8))
_CREATE_PATHS = {
    Scene.jsapi: "/v3/pay/transactions/jsapi",
    Scene.native: "/v3/pay/transactions/native",
    Scene.h5: "/v3/pay/transactions/h5",
    Scene.app: "/v3/pay/transactions/app",
    Scene.codepay: "/v3/pay/transactions/codepay",
}
_NOT_FOUND_CODES = frozenset({"ORDER_NOT_EXIST", "ORDERNOTEXIST", "RESOURCE_NOT_EXISTS", "NOT_FOUND"})
_RETRYABLE_CODES = frozenset({"SYSTEM_ERROR", "SYSTEMERROR", "FREQUENCY_LIMITED", "BANKERROR", "RULE_LIMIT"})


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def format_time(value: dt.datetime) -> str:
    """RFC 3339 in Beijing time, as WeChat writes it (``2018-06-08T10:34:56+08:00``)."""
    if value.tzinfo is None:
        raise ValueError("naive datetime: say which time zone")
    return value.astimezone(CST).isoformat(timespec="seconds")


def parse_time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def trade_status(data: dict[str, Any]) -> TradeStatus:
    raw = data.get("trade_state", "")
    try:
        state = TradeState.userpaying if raw == "ACCEPT" else TradeState(raw)
    except ValueError:
        raise ChannelError("BAD_RESPONSE", f"unknown trade_state {data.get('trade_state')!r}") from None
    amount = data.get("amount") or {}
    return TradeStatus(
        out_trade_no=data.get("out_trade_no", ""),
        state=state,
        channel_trade_no=data.get("transaction_id"),
        amount_fen=amount.get("total"),
        paid_at=parse_time(data.get("success_time")),
        payer_id=(data.get("payer") or {}).get("openid"),
        merchant_id=data.get("mchid"),
    )


def refund_status(data: dict[str, Any], *, out_trade_no: str = "") -> RefundStatus:
    raw = data.get("status") or data.get("refund_status") or ""
    try:
        state = RefundState(raw)
    except ValueError:
        raise ChannelError("BAD_RESPONSE", f"unknown refund status {raw!r}") from None
    return RefundStatus(
        out_trade_no=data.get("out_trade_no") or out_trade_no,
        out_refund_no=data.get("out_refund_no", ""),
        state=state,
        refund_fen=int((data.get("amount") or {}).get("refund", 0)),
        channel_refund_no=data.get("refund_id"),
        succeeded_at=parse_time(data.get("success_time")),
    )


def open_callback(
    verifier: WechatVerifier,
    apiv3_key: bytes,
    headers: dict[str, str],
    body: bytes,
    *,
    now: float | None = None,
    mchid: str | None = None,
    appid: str | None = None,
) -> tuple[str, str, dict[str, Any]]:
    """Verify a callback and decrypt its resource: (event_type, id, resource). Raises ``NotificationRejected``
    with the first reason found, in the order serial, signature, timestamp, envelope, AES tag, merchant. A
    payment callback must name ``appid`` when one is given (refund callbacks carry none)."""
    try:
        verifier.check(headers, body, now=now)
    except WechatSignatureError as exc:
        raise NotificationRejected(exc.reason, exc.message) from None
    try:
        envelope = json.loads(body)
        resource = envelope["resource"]
        event_type, notification_id = str(envelope["event_type"]), str(envelope["id"])
        if envelope.get("resource_type") != "encrypt-resource" or resource["algorithm"] != "AEAD_AES_256_GCM":
            raise ValueError(f"unsupported resource {envelope.get('resource_type')}/{resource.get('algorithm')}")
        nonce, associated, ciphertext = resource["nonce"], resource.get("associated_data", ""), resource["ciphertext"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise NotificationRejected("malformed", f"not a v3 callback envelope: {exc!r}") from None
    try:
        data = json.loads(wechat_crypto.aes_gcm_decrypt(apiv3_key, nonce, associated, ciphertext))
    except WechatSignatureError as exc:
        raise NotificationRejected(exc.reason, exc.message) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NotificationRejected("malformed", f"decrypted resource is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise NotificationRejected("malformed", "decrypted resource is not a JSON object")
    if mchid is not None and data.get("mchid") != mchid:
        raise NotificationRejected("wrong_merchant", f"mchid {data.get('mchid')!r} is not {mchid}")
    if appid is not None and (event_type.startswith("TRANSACTION.") or "appid" in data) and data.get("appid") != appid:
        raise NotificationRejected("wrong_merchant", f"appid {data.get('appid')!r} is not {appid}")
    return event_type, notification_id, data


class WechatPayChannel(Channel):
    name = "wechat"

    def __init__(
        self,
        config: WechatConfig,
        *,
        session: aiohttp.ClientSession | None = None,
        state: ChannelState | None = None,
    ) -> None:
        self.config = config
        self.keys = KeyRing([load_merchant_key(k, wechat_crypto.certificate_serial) for k in config.signing_keys()])
        apiv3 = config.apiv3_key.read().encode()
        if len(apiv3) != 32:
            raise ValueError("the APIv3 key is 32 characters")
        self._apiv3_key = apiv3
        self.verifier = WechatVerifier.from_files(
            list(config.platform_certificates),
            config.public_key_file,
            config.public_key_id,
            window_s=config.timestamp_window_s,
        )
        self.state: ChannelState = state or MemoryState()
        self._replays = ReplayGuard(ttl_s=2 * config.timestamp_window_s)
        self._refresh_lock = asyncio.Lock()
        self._last_fetch: float | None = None
        self._wanted: set[str] = set()
        """Serials seen on messages but not trusted: each may trigger one download per min_interval_s."""
        self._tried: dict[str, float] = {}
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

    async def _call(
        self, method: str, path_qs: str, body: dict[str, Any] | None = None, *, url: str | None = None
    ) -> Reply:
        data = _json(body) if body is not None else b""
        signing = self.keys.current()
        headers = {
            "Authorization": wechat_crypto.authorization(
                mchid=self.config.mchid,
                serial_no=signing.serial,
                key=signing.key,
                method=method,
                path_qs=path_qs,
                body=data,
            ),
            "Accept": "application/json",
            "User-Agent": "his-gateway",
        }
        if body is not None:
            headers["Content-Type"] = "application/json"
        return await exchange(self._http(), method, url or self._base + path_qs, headers=headers, data=data or None)

    async def _api(self, method: str, path_qs: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """A signed call whose 2xx answer is verified; errors become ``ChannelError`` with WeChat's code."""
        reply = await self._call(method, path_qs, body)
        if 200 <= reply.status < 300:
            try:
                await self.check_answer(reply)
            except WechatSignatureError as exc:
                raise ChannelError(
                    "BAD_RESPONSE_SIGNATURE", f"{method} {path_qs}: {exc}", retryable=True, in_doubt=True
                ) from None
            if not reply.body:
                return reply.status, {}
            try:
                return reply.status, json.loads(reply.body)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ChannelError("BAD_RESPONSE", f"{method} {path_qs}: answer is not JSON", in_doubt=True) from None
        try:
            error = json.loads(reply.body) if reply.body else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            error = {}
        code = str(error.get("code") or f"HTTP_{reply.status}")
        message = str(error.get("message") or reply.body[:200].decode(errors="replace"))
        if reply.status >= 500 or reply.status == 429 or code in _RETRYABLE_CODES:
            raise ChannelError(code, message, retryable=True, in_doubt=reply.status >= 500)
        raise ChannelError(code, message)

    async def create(self, request: PaymentRequest) -> PaymentStarted:
        body: dict[str, Any] = {
            "appid": self.config.appid,
            "mchid": self.config.mchid,
            "description": request.description,
            "out_trade_no": request.out_trade_no,
            "amount": {"total": request.amount_fen, "currency": "CNY"},
        }
        if request.attach:
            body["attach"] = request.attach
        if request.scene is Scene.codepay:
            if not request.auth_code:
                raise ChannelError("PARAM_ERROR", "codepay needs the payer's auth_code")
            body["payer"] = {"auth_code": request.auth_code}
            body["scene_info"] = {"store_info": {"out_id": self.config.store_id}}
            if request.client_ip:
                body["scene_info"]["device_ip"] = request.client_ip
            return await self._codepay(request, body)
        body["notify_url"] = request.notify_url
        if request.expires_at is not None:
            body["time_expire"] = format_time(request.expires_at)
        if request.scene is Scene.jsapi:
            if not request.payer_id:
                raise ChannelError("PARAM_ERROR", "JSAPI needs the payer's openid")
            body["payer"] = {"openid": request.payer_id}
        if request.scene is Scene.h5:
            body["scene_info"] = {"payer_client_ip": request.client_ip or "127.0.0.1", "h5_info": {"type": "Wap"}}
        elif request.client_ip:
            body["scene_info"] = {"payer_client_ip": request.client_ip}
        _, answer = await self._api("POST", _CREATE_PATHS[request.scene], body)
        return PaymentStarted(request.out_trade_no, TradeState.notpay, self._pay_params(request.scene, answer))

    def _pay_params(self, scene: Scene, answer: dict[str, Any]) -> dict[str, Any]:
        if scene is Scene.native:
            return {"code_url": answer["code_url"]}
        if scene is Scene.h5:
            return {"h5_url": answer["h5_url"]}
        prepay_id = answer["prepay_id"]
        key = self.keys.current().key
        timestamp, nonce = str(int(clock.now())), wechat_crypto.new_nonce()
        if scene is Scene.app:
            message = f"{self.config.appid}\n{timestamp}\n{nonce}\n{prepay_id}\n".encode()
            return {
                "appid": self.config.appid,
                "partnerid": self.config.mchid,
                "prepayid": prepay_id,
                "package": "Sign=WXPay",
                "noncestr": nonce,
                "timestamp": timestamp,
                "sign": wechat_crypto.sign(key, message),
            }
        package = f"prepay_id={prepay_id}"
        message = f"{self.config.appid}\n{timestamp}\n{nonce}\n{package}\n".encode()
        return {
            "appId": self.config.appid,
            "timeStamp": timestamp,
            "nonceStr": nonce,
            "package": package,
            "signType": "RSA",
            "paySign": wechat_crypto.sign(key, message),
        }

    async def _codepay(self, request: PaymentRequest, body: dict[str, Any]) -> PaymentStarted:
        try:
            status, answer = await self._api("POST", _CREATE_PATHS[Scene.codepay], body)
        except ChannelError as exc:
            if exc.code != "USERPAYING" and not exc.in_doubt:
                raise
            status, answer = 202, {}
        if status == 200 and answer.get("trade_state") == TradeState.success:
            trade = trade_status(answer)
        else:
            trade = await codepay.settle(request.out_trade_no, self.query, self.reverse, self.config.codepay)
        return PaymentStarted(request.out_trade_no, trade.state, channel_trade_no=trade.channel_trade_no)

    async def query(self, out_trade_no: str) -> TradeStatus:
        path = f"/v3/pay/transactions/out-trade-no/{quote(out_trade_no, safe='')}?mchid={self.config.mchid}"
        try:
            _, answer = await self._api("GET", path)
        except ChannelError as exc:
            if exc.code in _NOT_FOUND_CODES:
                return TradeStatus(out_trade_no=out_trade_no, state=TradeState.not_found)
            raise
        status = trade_status(answer)
        if status.merchant_id and status.merchant_id != self.config.mchid:
            raise ChannelError("WRONG_MERCHANT", f"{out_trade_no}: answer names merchant {status.merchant_id}")
        return status

    async def close(self, out_trade_no: str) -> None:
        path = f"/v3/pay/transactions/out-trade-no/{quote(out_trade_no, safe='')}/close"
        await self._api("POST", path, {"mchid": self.config.mchid})

    async def reverse(self, out_trade_no: str) -> None:
        """A trade WeChat never received has nothing to reverse: that counts as done."""
        path = f"/v3/pay/transactions/out-trade-no/{quote(out_trade_no, safe='')}/reverse"
        try:
            await self._api("POST", path, {"appid": self.config.appid, "mchid": self.config.mchid})
        except ChannelError as exc:
            if exc.code not in _NOT_FOUND_CODES:
                raise

    async def refund(self, request: RefundRequest) -> RefundStatus:
        body: dict[str, Any] = {
            "out_trade_no": request.out_trade_no,
            "out_refund_no": request.out_refund_no,
            "amount": {"refund": request.refund_fen, "total": request.total_fen, "currency": "CNY"},
        }
        if request.reason:
            body["reason"] = request.reason
        if request.notify_url:
            body["notify_url"] = request.notify_url
        _, answer = await self._api("POST", "/v3/refund/domestic/refunds", body)
        return refund_status(answer, out_trade_no=request.out_trade_no)

    async def query_refund(self, out_trade_no: str, out_refund_no: str) -> RefundStatus:
        try:
            _, answer = await self._api("GET", f"/v3/refund/domestic/refunds/{quote(out_refund_no, safe='')}")
        except ChannelError as exc:
            if exc.code in _NOT_FOUND_CODES:
                raise ChannelError("NOT_FOUND", f"refund {out_refund_no} is unknown to WeChat Pay") from None
            raise
        status = refund_status(answer, out_trade_no=out_trade_no)
        if status.out_trade_no != out_trade_no:
            raise ChannelError("WRONG_TRADE", f"refund {out_refund_no} belongs to trade {status.out_trade_no}")
        return status

    def verify_notification(self, headers: dict[str, str], body: bytes, *, now: float | None = None) -> Notification:
        try:
            event_type, notification_id, data = open_callback(
                self.verifier, self._apiv3_key, headers, body, now=now, mchid=self.config.mchid, appid=self.config.appid
            )
        except NotificationRejected as exc:
            if exc.reason == "unknown_serial":
                serial = {k.lower(): v for k, v in headers.items()}.get(wechat_crypto.HEADER_SERIAL.lower(), "")
                self._wanted.add(wechat_crypto.normalize_serial(serial))
            raise
        lower = {k.lower(): v for k, v in headers.items()}
        replay_key = "|".join(
            lower[h.lower()]
            for h in (wechat_crypto.HEADER_TIMESTAMP, wechat_crypto.HEADER_NONCE, wechat_crypto.HEADER_SIGNATURE)
        )
        if not self._replays.check_and_remember(replay_key, now=now):
            raise NotificationRejected(
                "replayed", f"callback {notification_id} was already received with this signature"
            )
        try:
            if event_type.startswith("REFUND."):
                return Notification("refund", notification_id, refund=refund_status(data))
            if event_type.startswith("TRANSACTION."):
                return Notification("payment", notification_id, trade=trade_status(data))
        except ChannelError as exc:
            raise NotificationRejected("malformed", exc.message) from None
        raise NotificationRejected("malformed", f"unknown event_type {event_type!r}")

    def acknowledge(self, accepted: bool) -> Acknowledgement:
        if accepted:
            return Acknowledgement(204, {}, b"")
        return Acknowledgement(
            500, {"Content-Type": "application/json"}, _json({"code": "FAIL", "message": "not processed, retry"})
        )

    async def download_bill(self, day: dt.date) -> bytes:
        path = f"/v3/bill/tradebill?bill_date={day.isoformat()}&bill_type=ALL&tar_type=GZIP"
        _, answer = await self._api("GET", path)
        try:
            url, hash_type, expected = answer["download_url"], answer["hash_type"], answer["hash_value"]
        except KeyError as exc:
            raise ChannelError("BAD_RESPONSE", f"tradebill answer lacks {exc}") from None
        if hash_type != "SHA1":
            raise ChannelError("BAD_RESPONSE", f"unsupported bill hash_type {hash_type}")
        parts, base = urlsplit(url), urlsplit(self._base)
        if (parts.scheme, parts.netloc) != (base.scheme, base.netloc):
            raise ChannelError("BAD_RESPONSE", f"download_url {url} is not on {self._base}: not sending credentials")
        reply = await self._call("GET", parts.path + (f"?{parts.query}" if parts.query else ""), url=url)
        if reply.status != 200:
            raise ChannelError(f"HTTP_{reply.status}", f"bill download failed: {reply.body[:200]!r}", retryable=True)
        try:
            plain = gzip.decompress(reply.body)
        except (OSError, EOFError, zlib.error) as exc:
            raise ChannelError("BILL_CORRUPT", f"{day}: bill is not gzip: {exc}", retryable=True) from None
        actual = hashlib.sha1(plain).hexdigest()
        if actual.lower() != str(expected).lower():
            raise ChannelError(
                "BILL_HASH_MISMATCH", f"{day}: SHA-1 {actual} is not the announced {expected}", retryable=True
            )
        return reply.body

    # -- platform keys ---------------------------------------------------------------------------------------

    async def check_answer(self, reply: Reply) -> str:
        """Verify a signed answer; a serial not trusted yet triggers one certificate refresh, then a retry."""
        try:
            return self.verifier.check(reply.headers, reply.body)
        except WechatSignatureError as exc:
            if exc.reason != "unknown_serial":
                raise
            self._wanted.add(wechat_crypto.normalize_serial(reply.headers.get(wechat_crypto.HEADER_SERIAL, "")))
            if not await self.refresh_trust():
                raise
        return self.verifier.check(reply.headers, reply.body)

    def _may_fetch(self, now: float) -> bool:
        """On demand, a download is allowed for a serial not asked about within ``min_interval_s`` (at most ten
        such serials per interval: a flood of forged serials cannot make us hammer WeChat), or when the last
        download is older than the interval."""
        interval = self.config.trust_refresh.min_interval_s
        fresh = [s for s in self._wanted if now - self._tried.get(s, -interval) >= interval]
        recent = sum(1 for t in self._tried.values() if now - t < interval)
        if fresh and recent < 10:
            self._tried.update((s, now) for s in fresh)
            return True
        return self._last_fetch is None or now - self._last_fetch >= interval

    def _trust(self, cert: x509.Certificate) -> bool:
        key = PlatformKey.of_certificate(cert)
        if self.verifier.knows(key.serial):
            return False
        self.verifier.add(key)
        return True

    async def load_trust(self) -> None:
        now = clock.now()
        for kept in await self.state.certificates():
            if kept.not_after.timestamp() > now and not self.verifier.knows(kept.serial):
                self._trust(x509.load_pem_x509_certificate(kept.pem))

    async def refresh_trust(self, *, force: bool = False) -> bool:
        """Download the platform certificates (``GET /v3/certificates``) and trust the new ones.

        The answer's signature is checked with a certificate already trusted. When WeChat has already moved to a
        certificate we have not seen, the answer is signed with that new one: it is accepted only if that
        certificate is among those the answer carries, which are sealed with the APIv3 key and so come from
        WeChat Pay. Rate-limited to one download per ``trust_refresh.min_interval_s`` unless ``force``."""
        if not self.config.download_certificates:
            await self.load_trust()
            return False
        async with self._refresh_lock:
            before = set(self.verifier.serials)
            await self.load_trust()
            if set(self.verifier.serials) != before:
                return True
            if not force and not self._may_fetch(clock.monotonic()):
                return False
            self._last_fetch = clock.monotonic()
            self._wanted.clear()
            reply = await self._call("GET", "/v3/certificates")
            if reply.status != 200:
                raise ChannelError(f"HTTP_{reply.status}", f"/v3/certificates: {reply.body[:200]!r}", retryable=True)
            try:
                certs = wechat_crypto.open_certificates(json.loads(reply.body), self._apiv3_key)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ChannelError("BAD_RESPONSE", "/v3/certificates: answer is not JSON") from None
            except WechatSignatureError as exc:
                raise ChannelError("BAD_RESPONSE", f"/v3/certificates: {exc}") from None
            try:
                self.verifier.check(reply.headers, reply.body)
            except WechatSignatureError as exc:
                if exc.reason != "unknown_serial":
                    raise ChannelError("BAD_RESPONSE_SIGNATURE", f"/v3/certificates: {exc}") from None
                WechatVerifier(
                    [PlatformKey.of_certificate(c) for c in certs], window_s=self.config.timestamp_window_s
                ).check(reply.headers, reply.body)
            added = False
            for cert in certs:
                serial = wechat_crypto.certificate_serial(cert)
                pem = cert.public_bytes(serialization.Encoding.PEM)
                await self.state.keep_certificate(
                    KeptCertificate(serial, pem, cert.not_valid_before_utc, cert.not_valid_after_utc, "downloaded")
                )
                added = self._trust(cert) or added
            return added

    def refresh_every_s(self) -> float | None:
        """The configured interval; one hour while the newest trusted certificate expires within
        ``before_expiry_s`` and no public key is trusted (WeChat publishes the next certificate ahead of the
        switch, so frequent fetching finds it before it signs)."""
        if not self.config.download_certificates:
            return None
        refresh = self.config.trust_refresh
        ends = [k.not_after for k in self.verifier.keys]
        if ends and all(e is not None for e in ends):
            last = max(e for e in ends if e is not None)
            if last - clock.now() < refresh.before_expiry_s:
                return min(refresh.interval_s, 3600.0)
        return refresh.interval_s

    def key_inventory(self, now: dt.datetime) -> list[KeyInfo]:
        out = self.keys.inventory(self.name, "signs requests (merchant API certificate)", now)
        for key in self.verifier.keys:
            if key.certificate is not None:
                out.append(
                    certificate_info(
                        key.certificate,
                        channel=self.name,
                        role=KeyRole.verifies,
                        id="platform-certificate",
                        serial=key.serial,
                        used_for="verifies answers and callbacks",
                        now=now,
                    )
                )
            else:
                out.append(
                    KeyInfo(
                        self.name,
                        KeyRole.verifies,
                        "wechatpay-public-key",
                        key.serial,
                        KeyStatus.active,
                        None,
                        "verifies answers and callbacks",
                    )
                )
        return out
