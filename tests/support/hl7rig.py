"""HL7 test helpers: the shipped profile's adapter pointed at a port, calls as the bridge makes them, and a scripted
MLLP peer for the cases the sandbox HIS will not produce (bad bytes, huge frames, odd framing)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from adapters.hl7 import Hl7Adapter
from adapters.hl7_codec import decode
from adapters.mapping.hl7 import compile_path, parse_message
from adapters.mllp import read_frame
from adapters.profile import load_profile
from bridge import catalog
from sandbox.cli import SandboxHis
from sandbox.his.state import SHANGHAI
from tests.support.rig import REPO

HL7_PROFILE = REPO / "config" / "profiles" / "hl7-v24-gb18030.toml"
NOW = dt.datetime(2025, 3, 14, 9, 30, tzinfo=SHANGHAI)
Call = Callable[..., Awaitable[dict[str, Any]]]

MSH_10 = compile_path("MSH-10")
Answer = Callable[[str], bytes | None]
"""Given the request's MSH-10, the raw bytes to write back (framing included), or None for silence."""


def make_adapter(his: SandboxHis | None = None, *, port: int | None = None, **overrides: Any) -> Hl7Adapter:
    port = port if port is not None else his.mllp_address[1] if his is not None else 1
    profile = load_profile(
        HL7_PROFILE,
        catalog.OPERATIONS,
        read_operations=catalog.READ_OPERATIONS,
        overrides={"hl7.port": port, "hl7.ae_retry_delay_s": 0.05, **overrides},
        environ={},
    )
    adapter = profile.build_adapter()
    assert isinstance(adapter, Hl7Adapter)
    return adapter


def caller(adapter: Any) -> Call:
    async def call(name: str, /, **params: Any) -> dict[str, Any]:
        """As the bridge calls: validated input dumped to JSON, the output validated against the catalog."""
        op = catalog.OPERATIONS[name]
        result = await adapter.call(name, op.input.model_validate(params).model_dump(mode="json"))
        op.output.model_validate(result)
        return result

    return call


def paid(trade_no: str, amount_fen: int, **more: Any) -> dict[str, Any]:
    return {
        "request_id": f"request-{trade_no}",
        "trade_no": trade_no,
        "patient_id": "P0001",
        "amount_fen": amount_fen,
        "channel": "wechat",
        "channel_trade_no": f"wx{trade_no}",
        "paid_at": NOW,
        **more,
    }


def ack(control_id: str, *, code: str = "AA", charset: str = "GB 18030-2000", extra: str = "") -> str:
    """An ACK as text, segments ended by CR."""
    msh = f"MSH|^~\\&|HIS|HOSPITAL|HISBRIDGE|PAY|20250314092958||ACK^P03^ACK|A{control_id[:19]}|P|2.4|||||CHN|{charset}"
    return f"{msh}\rMSA|{code}|{control_id}|成功\r{extra}"


def framed(payload: bytes, *, end: bytes = b"\x1c\r") -> bytes:
    return b"\x0b" + payload + end


@dataclass
class ScriptedPeer:
    answer: Answer
    requests: list[str] = field(default_factory=list)
    closed_by_client: int = 0
    server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=4 * 1024 * 1024)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    frame = await read_frame(reader, 4 * 1024 * 1024)
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.closed_by_client += 1
                    return
                text, codec, _ = decode(frame, "GB18030")
                self.requests.append(text)
                control_id = parse_message(text, codec).value(MSH_10) or ""
                data = self.answer(control_id)
                if data is not None:
                    writer.write(data)
                    await writer.drain()
        finally:
            writer.transport.abort()
