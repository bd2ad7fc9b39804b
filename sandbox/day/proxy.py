"""A TCP proxy that can black-hole traffic: the network partition between the gateway and the bridge.

Bytes are passed through untouched (the mutual TLS runs end to end through it). While ``cut``, nothing gets
through in either direction: bytes on open connections are read and dropped, and new connections are accepted
and then never answered — as when packets vanish, the client learns of it only by its own timeouts, and cannot
tell whether its request reached the bridge. On ``heal``, connections that lost bytes are reset (their TLS
streams cannot continue), and traffic flows again.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

CHUNK = 65536


@dataclass
class _Pair:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    damaged: bool = False


@dataclass
class BlackholeProxy:
    target_host: str
    target_port: int
    cut_now: bool = False
    connections: int = 0
    dropped_bytes: int = 0
    reset_on_heal: int = 0
    _server: asyncio.Server | None = None
    _pairs: set[asyncio.Task[None]] = field(default_factory=set)
    _live: list[_Pair] = field(default_factory=list)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, host, port)
        address = self._server.sockets[0].getsockname()
        return str(address[0]), int(address[1])

    def cut(self) -> None:
        self.cut_now = True
        for pair in self._live:
            pair.damaged = True

    def heal(self) -> None:
        self.cut_now = False
        for pair in [p for p in self._live if p.damaged]:
            self.reset_on_heal += 1
            for writer in (pair.client, pair.upstream):
                if writer is not None:
                    writer.transport.abort()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pair in self._live:
            for writer in (pair.client, pair.upstream):
                if writer is not None:
                    writer.transport.abort()
        for task in list(self._pairs):
            task.cancel()
        await asyncio.gather(*self._pairs, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pairs.add(task)
        self.connections += 1
        pair = _Pair(writer, damaged=self.cut_now)
        self._live.append(pair)
        try:
            while self.cut_now:
                data = await reader.read(CHUNK)
                if not data:
                    return
                self.dropped_bytes += len(data)
            if pair.damaged:
                return
            try:
                up_reader, pair.upstream = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError:
                return
            await asyncio.gather(self._pump(reader, pair.upstream, pair), self._pump(up_reader, writer, pair))
        except asyncio.CancelledError:
            return  # the proxy is closing: the connection goes with it
        finally:
            self._live.remove(pair)
            for w in (writer, pair.upstream):
                if w is not None:
                    w.transport.abort()
            self._pairs.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pair: _Pair) -> None:
        try:
            while data := await reader.read(CHUNK):
                if self.cut_now or pair.damaged:
                    pair.damaged = True
                    self.dropped_bytes += len(data)
                    continue
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if not pair.damaged:
                with contextlib.suppress(Exception):
                    writer.write_eof()
