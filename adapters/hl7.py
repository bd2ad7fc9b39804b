"""The HL7 v2 adapter: profile templates rendered into messages, sent over MLLP, ACKs read by the rules below.

Each call renders the operation's ``message`` template (one segment per line, joined with CR), with the MSH
values the adapter owns: ``{{ msh.control_id }}`` (MSH-10, new for every message) and ``{{ msh.timestamp }}``
(MSH-7, HIS local time), plus ``msh.sending_application``, ``msh.sending_facility``,
``msh.receiving_application``, ``msh.receiving_facility``, ``msh.version``, ``msh.processing_id`` and
``msh.charset`` (the table 0211 name of the configured encoding, for MSH-18). A rendered message must start
with ``MSH|^~\\&|``, carry the control id in MSH-10 and the binding's ``call`` (e.g. ``DFT^P03``) in MSH-9. It
is encoded with the character set its own MSH-18 names, or the configured ``encoding`` when MSH-18 is empty.

Replies are decoded the same way (:mod:`adapters.hl7_codec`) and classified — the question is always "could
the HIS have applied this message?":

- connection refused, connect timeout, every pooled connection busy → :class:`~adapters.base.RetryableError`
  (nothing was sent);
- no ACK within ``ack_timeout_s``, or the connection lost after the message was written →
  :class:`~adapters.base.InDoubtError`; the connection is closed, so a late ACK can never be read as the
  answer to the next message;
- an ACK whose MSA-2 is not the MSH-10 just sent → the connection is closed; in doubt for a write (our own
  answer may be in flight), retryable for a read;
- a frame over ``max_frame_bytes``, bytes invalid in the message's character set, no MSA, an unknown MSA-1 →
  the connection is closed; in doubt for a write, permanent for a read (it would read the same way again);
- MSA-1 ``AA``/``CA`` → the operation's reply rule decides (``success``, ``answers``, fields and lists);
- ``AE``/``CE`` (application error: by contract the receiver did *not* apply the message) → the message is
  sent again, with a new control id, up to ``ae_retries`` more times ``ae_retry_delay_s`` apart, inside this
  call; still ``AE`` → :class:`~adapters.base.RetryableError`, so the bridge's own backoff, circuit breaker
  and quarantine bound it further. Retrying here first keeps a short-lived "busy" from costing a journal round
  trip, and retrying there afterwards is safe because nothing was applied;
- ``AR``/``CR`` → :class:`~adapters.base.PermanentError` with the HIS code (the profile's ``error_code``) and
  message, unless that code is one of the operation's ``answers`` (e.g. "patient not found").

Events (``ack`` with the code, ``ae_retry``, ``ack_timeout``, ``ack_mismatch``, ``connection_lost``,
``connect_failed``, ``undecodable`` with the character set, ``frame_too_large``, ``bad_frame``,
``unreadable``) are counted in :attr:`Hl7Adapter.counters` and passed to :attr:`Hl7Adapter.on_event`, a hook
the bridge can point at its metrics (``adapters`` never imports ``bridge``).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import logging
import re
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from adapters.base import Adapter, AdapterError, InDoubtError, PermanentError, RetryableError, WirePreview
from adapters.hl7_codec import CharsetError, UndecodableMessage, codec_for, declared_charset, decode, hl7_name
from adapters.mapping.binding import OperationBinding
from adapters.mapping.errors import MappingError
from adapters.mapping.hl7 import Hl7Extractor, Hl7Record, compile_path, parse_message
from adapters.mllp import FrameError, FrameTooLarge, MllpConnection, MllpPool, PoolBusy
from adapters.profile import ProfileError

if TYPE_CHECKING:
    from adapters.profile import Profile

log = logging.getLogger(__name__)

MESSAGE = "message"
"""The one request parameter of an HL7 operation: the message template."""
ACCEPTED = frozenset({"AA", "CA"})
ERRORS = frozenset({"AE", "CE"})
REJECTED = frozenset({"AR", "CR"})
HEADER = "MSH|^~\\&|"
_MSA_1, _MSA_2, _MSA_3 = (compile_path(p) for p in ("MSA-1", "MSA-2", "MSA-3"))
_LINES = re.compile(r"\r\n|\r|\n")

EventHook = Callable[[str, str], None]


class Hl7Settings(BaseModel):
    """The ``[hl7]`` section of a profile."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    encoding: str = "GB18030"
    """Used to encode messages whose MSH-18 is empty and to decode replies whose MSH-18 is empty."""
    ack_timeout_s: float = Field(10.0, gt=0, le=600)
    connect_timeout_s: float = Field(3.0, gt=0, le=120)
    pool_size: int = Field(2, ge=1, le=32)
    idle_timeout_s: float = Field(30.0, gt=0, le=3600)
    max_frame_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    sending_application: str = "HISBRIDGE"
    sending_facility: str = ""
    receiving_application: str = "HIS"
    receiving_facility: str = ""
    version: str = "2.4"
    processing_id: str = "P"
    ae_retries: int = Field(2, ge=0, le=10)
    ae_retry_delay_s: float = Field(0.5, ge=0, le=60)

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        codec_for(value)
        return value

    @property
    def codec(self) -> str:
        return codec_for(self.encoding)

    @property
    def charset(self) -> str:
        """What ``{{ msh.charset }}`` renders: the table 0211 name, else the configured name as written."""
        return hl7_name(self.codec) or self.encoding


@dataclasses.dataclass(frozen=True)
class Outgoing:
    """One rendered message, ready for the wire."""

    segments: list[str]
    control_id: str
    codec: str
    charset: str | None
    payload: bytes


class Hl7Adapter(Adapter):
    """One HL7 v2 peer over MLLP driven by one profile."""

    protocol = "hl7"

    def __init__(self, profile: Profile) -> None:
        settings = profile.settings
        if not isinstance(settings, Hl7Settings):
            raise ProfileError(profile.path.name, ["hl7: the profile has no valid [hl7] section"])
        self.profile = profile
        self.settings = settings
        super().__init__(f"mllp://{settings.host}:{settings.port}")
        self._check_bindings()
        self.on_event: EventHook | None = None
        """Called with (event, detail) for every counted event; the bridge may point it at its metrics."""
        self.counters: collections.Counter[str] = collections.Counter()
        self._pool: MllpPool | None = None

    def _check_bindings(self) -> None:
        problems = []
        for name, binding in sorted(self.profile.bindings.items()):
            where = f'operations."{name}"'
            if set(binding.request.templates) != {MESSAGE}:
                problems.append(f"{where}.request: an HL7 operation has exactly one template, {MESSAGE!r}")
            if not isinstance(binding.extractor, Hl7Extractor):
                problems.append(f'{where}.response.format: HL7 replies are read as "hl7"')
            if not re.fullmatch(r"[A-Z0-9]{3}\^[A-Z0-9]{3}", binding.call):
                problems.append(f"{where}.call: {binding.call!r} is not a message type such as DFT^P03 (MSH-9)")
        if problems:
            raise ProfileError(self.profile.path.name, problems)

    def operations(self) -> frozenset[str]:
        return self.profile.operations

    # --- lifecycle -----------------------------------------------------------------------------------------

    def _get_pool(self) -> MllpPool:
        if self._pool is None:
            s = self.settings
            self._pool = MllpPool(
                s.host,
                s.port,
                size=s.pool_size,
                connect_timeout_s=s.connect_timeout_s,
                idle_timeout_s=s.idle_timeout_s,
                max_frame_bytes=s.max_frame_bytes,
            )
        return self._pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    # --- rendering -----------------------------------------------------------------------------------------

    def _bound(self, operation: str) -> OperationBinding:
        binding = self.profile.bindings.get(operation)
        if binding is None:
            raise PermanentError("unknown_operation", f"profile {self.profile.name!r} does not bind {operation}")
        return binding

    def _msh(self, control_id: str) -> dict[str, str]:
        s = self.settings
        now = dt.datetime.now(self.profile.filters.tz)
        return {
            "control_id": control_id,
            "timestamp": now.strftime("%Y%m%d%H%M%S"),
            "sending_application": s.sending_application,
            "sending_facility": s.sending_facility,
            "receiving_application": s.receiving_application,
            "receiving_facility": s.receiving_facility,
            "version": s.version,
            "processing_id": s.processing_id,
            "charset": s.charset,
        }

    def render(self, operation: str, params: dict[str, Any]) -> Outgoing:
        """The message for one call, checked and encoded; a failure is a :class:`MappingError` (not sent)."""
        binding = self._bound(operation)
        control_id = secrets.token_hex(10).upper()
        source = binding.render({**params, "msh": self._msh(control_id)})[MESSAGE]
        where = f"{operation} ({binding.call})"
        segments = [line.strip() for line in _LINES.split(source) if line.strip()]
        if not segments or not segments[0].startswith(HEADER):
            message = f"the message must start with {HEADER!r}, the encoding characters escape() assumes"
            raise MappingError(f"{where}: {message}")
        text = "\r".join(segments) + "\r"
        # Every templated value is escaped, so the header's own separators are the only | and ^ in MSH: a plain
        # split reads MSH-9 and MSH-10 exactly, at a fraction of a parse's cost. MSH-1 is the | itself, so
        # field n sits at index n - 1.
        msh = segments[0].split("|")
        if len(msh) < 10 or msh[9].strip() != control_id:
            raise MappingError(f"{where}: MSH-10 must be {{{{ msh.control_id }}}}, which the adapter generates")
        message_type = "^".join(msh[8].split("^")[:2])
        if message_type != binding.call:
            raise MappingError(f"{where}: MSH-9 is {message_type}, but the operation's call is {binding.call}")
        charset = declared_charset(segments[0])
        try:
            codec = codec_for(charset) if charset else self.settings.codec
            payload = text.encode(codec)
        except CharsetError as exc:
            raise MappingError(f"{where}: MSH-18: {exc}") from None
        except UnicodeEncodeError as exc:
            raise MappingError(f"{where}: {exc.object[exc.start : exc.end]!r} cannot be encoded in {codec}") from None
        return Outgoing(segments, control_id, codec, charset, payload)

    async def preview(self, operation: str, params: dict[str, Any]) -> WirePreview:
        out = self.render(operation, params)
        return WirePreview(
            protocol=self.protocol,
            target=self.endpoint,
            payload="\n".join(f"{segment}<CR>" for segment in out.segments),
            details={
                "call": self._bound(operation).call,
                "control_id": out.control_id,
                "encoding": out.codec,
                "msh_18": out.charset,
                "bytes": len(out.payload),
                "framing": "<VT 0x0B> message <FS 0x1C><CR 0x0D>",
            },
        )

    # --- calls ---------------------------------------------------------------------------------------------

    async def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        result, _ = await self.call_raw(operation, params)
        return result

    async def call_raw(self, operation: str, params: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """The raw reply is the decoded ACK or response the paths read, segments ended by CR."""
        binding = self._bound(operation)
        attempts = 1 + self.settings.ae_retries
        for attempt in range(1, attempts + 1):
            out = self.render(operation, params)
            text, record = await self._exchange(binding, out)
            ack = record.value(_MSA_1) or ""
            self._event("ack", ack)
            if ack in ACCEPTED:
                return binding.reply_parsed(record, text), text  # parsed once, by _send_and_read
            if ack in REJECTED:
                return self._rejected(binding, record, ack, text), text
            if ack not in ERRORS:
                raise binding.unmappable(f"MSA-1 is {ack!r}, not an acknowledgment code (AA, AE, AR, CA, CE, CR)")
            if attempt < attempts:
                self._event("ae_retry", ack)
                log.info("%s: %s from %s, sending again (%d/%d)", operation, ack, self.endpoint, attempt, attempts)
                await asyncio.sleep(self.settings.ae_retry_delay_s)
        message = record.value(_MSA_3) or "application error"
        code = self._his_code(binding, record) or f"hl7_{ack}"
        raise RetryableError(code, f"{operation}: {ack} {attempts} times: {message}", raw=text)

    def _his_code(self, binding: OperationBinding, record: Hl7Record) -> str | None:
        rule = binding.reply_rule
        return record.value(rule.error_code) if rule.error_code is not None else None

    def _rejected(self, binding: OperationBinding, record: Hl7Record, ack: str, text: str) -> dict[str, Any]:
        rule = binding.reply_rule
        code = self._his_code(binding, record)
        if code is not None and code in rule.answers:
            return dict(rule.answers[code])
        message = (record.value(rule.error_message) if rule.error_message is not None else None) or record.value(_MSA_3)
        raise PermanentError(code or f"hl7_{ack}", message or f"the HIS rejected the message ({ack})", raw=text)

    async def _exchange(self, binding: OperationBinding, out: Outgoing) -> tuple[str, Hl7Record]:
        """Send one message on a connection of its own and read its ACK; see the module docstring."""
        s = self.settings
        where = f"{binding.operation} ({binding.call} to {self.endpoint})"
        pool = self._get_pool()
        try:
            connection = await pool.acquire(s.connect_timeout_s + s.ack_timeout_s)
        except PoolBusy as exc:
            raise RetryableError("pool_busy", f"{where}: {exc}") from None
        except TimeoutError:
            self._event("connect_failed", "timeout")
            message = f"{where}: no connection within {s.connect_timeout_s:g} s"
            raise RetryableError("connect_timeout", message) from None
        except OSError as exc:
            self._event("connect_failed", type(exc).__name__)
            raise RetryableError("connect_failed", f"{where}: {exc.strerror or exc}") from None
        reusable = False
        try:
            text, record = await self._send_and_read(binding, out, connection, where)
            reusable = True
            return text, record
        finally:
            pool.release(connection, reusable=reusable)

    async def _send_and_read(
        self, binding: OperationBinding, out: Outgoing, connection: MllpConnection, where: str
    ) -> tuple[str, Hl7Record]:
        try:
            async with asyncio.timeout(self.settings.ack_timeout_s):
                await connection.send(out.payload)
                frame = await connection.receive()
        except TimeoutError:
            self._event("ack_timeout")
            raise InDoubtError(
                "ack_timeout", f"{where}: no ACK within {self.settings.ack_timeout_s:g} s; connection closed"
            ) from None
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            self._event("connection_lost", type(exc).__name__)
            raise InDoubtError("connection_lost", f"{where}: connection lost before the ACK: {exc!r}") from None
        except FrameTooLarge as exc:
            self._event("frame_too_large")
            raise self._unreadable(binding, "frame_too_large", f"{where}: {exc}; connection closed") from None
        except FrameError as exc:
            self._event("bad_frame")
            raise self._unreadable(binding, "bad_frame", f"{where}: {exc}; connection closed") from None
        try:
            text, codec, _ = decode(frame, self.settings.encoding)
        except UndecodableMessage as exc:
            self._event("undecodable", exc.charset or "")
            raise self._unreadable(binding, "undecodable", f"{where}: {exc}") from None
        try:
            record = parse_message(text, codec)
        except MappingError as exc:
            self._event("unreadable")
            raise self._unreadable(binding, "unreadable", f"{where}: {exc.message}", text) from None
        answered = record.value(_MSA_2)
        if answered != out.control_id:
            self._event("ack_mismatch")
            message = f"{where}: MSA-2 is {answered!r}, not the MSH-10 sent ({out.control_id}); connection closed"
            if binding.write:
                raise InDoubtError("ack_mismatch", message, raw=text)
            raise RetryableError("ack_mismatch", message, raw=text)
        return text, record

    def _unreadable(self, binding: OperationBinding, code: str, message: str, raw: str | None = None) -> AdapterError:
        if binding.write:
            return InDoubtError(code, message, raw=raw)
        return PermanentError(code, message, raw=raw)

    def _event(self, event: str, detail: str = "") -> None:
        self.counters[event] += 1
        if self.on_event is not None:
            try:
                self.on_event(event, detail)
            except Exception:
                log.exception("HL7 event hook failed on %s", event)
