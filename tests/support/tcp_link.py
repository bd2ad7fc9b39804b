"""A TCP link a test can cut and restore: the network between the agent and the cloud.

Bytes are relayed as they come (TLS passes through untouched). ``cut`` closes every connection and stops
listening, so new connections are refused at once — what the agent sees when the hospital's line to the
internet is down; ``restore`` listens again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib


class TcpLink:
    def __init__(self, port: int, target_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.target_port = target_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    async def restore(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._relay, self.host, self.port, reuse_address=True)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._writers.discard(writer)
            self._writers.discard(up_writer)
