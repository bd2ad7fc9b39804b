"""MLLP connections to one HL7 peer: byte framing with a size cap, and a small pool of kept-alive connections.

A frame is ``<VT 0x0B> message <FS 0x1C><CR 0x0D>``, found on bytes: 0x0B and 0x1C never occur inside a GB18030
or UTF-8 character, so the frame can be cut before the message is decoded. Writing uses python-hl7's
:class:`hl7.mllp.MLLPStreamWriter`; reading is ours, because python-hl7's readers do not fit:
``HL7StreamReader`` decodes every block with one encoding fixed per connection (no MSH-18), and
``MLLPStreamReader`` insists on ``FS CR`` back to back, fails on the stray CR/LF some peers leave between frames,
and caps frames only through the stream's 64 KiB default limit. Here a frame ends at FS, any CR/LF/whitespace
before the next VT is skipped, and a frame longer than ``max_frame_bytes`` raises :class:`FrameTooLarge` as soon
as that many bytes are buffered (the caller closes the connection; the rest of the frame is never read).

One message is in flight per connection at a time: a connection is taken from the pool for one exchange and
given back only when that exchange ended cleanly, so an answer can never be read by the wrong caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from hl7.mllp import MLLPStreamWriter

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
_BETWEEN_FRAMES = frozenset(b"\r\n \t")


class FrameError(Exception):
    """The peer's bytes are not MLLP framing (the connection can no longer be trusted)."""


class FrameTooLarge(FrameError):
    """A frame is longer than the configured cap."""


class PoolBusy(Exception):
    """Every pooled connection stayed busy for the whole wait."""


async def read_frame(reader: asyncio.StreamReader, max_bytes: int) -> bytes:
    """The next frame's content. Raises :class:`FrameError`, :class:`FrameTooLarge`, or
    :class:`asyncio.IncompleteReadError` when the peer closes."""
    while True:
        byte = await reader.readexactly(1)
        if byte == START_BLOCK:
            break
        if byte[0] not in _BETWEEN_FRAMES:
            raise FrameError(f"expected <VT> (0x0B) to start a frame, got 0x{byte[0]:02X}")
    try:
        data = await reader.readuntil(END_BLOCK)
    except asyncio.LimitOverrunError:
        raise FrameTooLarge(f"the frame is longer than {max_bytes} bytes (hl7.max_frame_bytes)") from None
    if len(data) - 1 > max_bytes:
        raise FrameTooLarge(f"the frame is longer than {max_bytes} bytes (hl7.max_frame_bytes)")
    return data[:-1]


@dataclass
class MllpConnection:
    reader: asyncio.StreamReader
    writer: MLLPStreamWriter
    max_frame_bytes: int
    last_used: float = field(default_factory=time.monotonic)

    async def send(self, payload: bytes) -> None:
        self.writer.writeblock(payload)
        await self.writer.drain()

    async def receive(self) -> bytes:
        return await read_frame(self.reader, self.max_frame_bytes)

    def reusable(self, idle_timeout_s: float) -> bool:
        """Still open, not closed by the peer while idle, and not idle for so long that the peer may have."""
        return (
            not self.writer.transport.is_closing()
            and not self.reader.at_eof()
            and time.monotonic() - self.last_used < idle_timeout_s
        )

    def abort(self) -> None:
        """Close at once, discarding anything unread, so a late answer is never read as the next one."""
        self.writer.transport.abort()


async def open_connection(host: str, port: int, *, max_frame_bytes: int, timeout_s: float) -> MllpConnection:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=max_frame_bytes + 1, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    async with asyncio.timeout(timeout_s):
        transport, _ = await loop.create_connection(lambda: protocol, host, port)
    writer = MLLPStreamWriter(transport, protocol, reader, loop)
    return MllpConnection(reader, writer, max_frame_bytes)


class MllpPool:
    """At most ``size`` connections to one peer; idle ones are kept for reuse until ``idle_timeout_s``."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        size: int,
        connect_timeout_s: float,
        idle_timeout_s: float,
        max_frame_bytes: int,
    ) -> None:
        self.host = host
        self.port = port
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_frame_bytes = max_frame_bytes
        self._slots = asyncio.Semaphore(size)
        self._idle: list[MllpConnection] = []
        self._closed = False

    async def acquire(self, wait_s: float) -> MllpConnection:
        """A connection of one's own; raises :class:`PoolBusy`, or ``OSError``/``TimeoutError`` on connect."""
        try:
            async with asyncio.timeout(wait_s):
                await self._slots.acquire()
        except TimeoutError:
            raise PoolBusy(f"all connections to {self.host}:{self.port} stayed busy for {wait_s:g} s") from None
        try:
            while self._idle:
                connection = self._idle.pop()
                if connection.reusable(self.idle_timeout_s):
                    return connection
                connection.abort()
            return await open_connection(
                self.host, self.port, max_frame_bytes=self.max_frame_bytes, timeout_s=self.connect_timeout_s
            )
        except BaseException:
            self._slots.release()
            raise

    def release(self, connection: MllpConnection, *, reusable: bool) -> None:
        """Give a connection back after a clean exchange, or close it after anything else."""
        if reusable and not self._closed:
            connection.last_used = time.monotonic()
            self._idle.append(connection)
        else:
            connection.abort()
        self._slots.release()

    async def close(self) -> None:
        """Close the idle connections; those in use are closed when given back."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.writer.close()
        for connection in idle:
            with contextlib.suppress(OSError):
                await connection.writer.wait_closed()
