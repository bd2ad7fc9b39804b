"""One HTTP exchange with a channel, with transport failures sorted by what they mean for the money.

A refused or failed connection means the request never left: safe to retry. A timeout or a dropped connection
after the request was written means the channel may have acted on it: the caller must query before anything
else (``in_doubt``).
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDictProxy

from gateway.channels.base import ChannelError


@dataclass(frozen=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


def new_session(connect_s: float, total_s: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=total_s, sock_connect=connect_s))


async def exchange(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
    max_bytes: int = 64 * 1024 * 1024,
) -> Reply:
    try:
        async with session.request(method, url, headers=headers, data=data, allow_redirects=False) as resp:
            # ``content.read(n)`` answers with what has arrived so far, not the whole body: a statement larger
            # than one network read would be cut short. Read to the end, refusing more than ``max_bytes``.
            body = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > max_bytes:
                    raise ChannelError("TOO_LARGE", f"{method} {url}: answer over {max_bytes} bytes", retryable=True)
            return Reply(resp.status, resp.headers, bytes(body))
    except aiohttp.ClientConnectorError as exc:
        raise ChannelError("NETWORK", f"{method} {url}: cannot connect: {exc}", retryable=True) from exc
    except TimeoutError as exc:
        raise ChannelError("TIMEOUT", f"{method} {url}: no answer in time", retryable=True, in_doubt=True) from exc
    except aiohttp.ClientError as exc:
        raise ChannelError(
            "NETWORK", f"{method} {url}: connection lost: {exc!r}", retryable=True, in_doubt=True
        ) from exc
