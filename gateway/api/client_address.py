"""Who is calling: the caller's address as the gateway's reverse proxy saw it, believed only from that proxy.

The gateway listens on loopback or a private network behind an HTTPS proxy, so every connection comes from the
proxy. A request that arrives from one of ``server.trusted_proxies`` has its ``X-Forwarded-For`` (or RFC 7239
``Forwarded``) read from the right, skipping the trusted proxies, and the first other address is the caller;
a request from anywhere else is its connection's address, whatever headers it carries (anyone can write
them). The middleware hands every handler — the console's sign-in pause, an order's ``client_ip``,
``/metrics``'s allow-list — a request whose ``remote`` is that address and whose ``scheme`` is the proxy's.

aiohttp-remotes does this too, but wants one trusted list per hop of a fixed-depth chain and answers 400 to a
request whose chain does not match; a set of proxies and a caller who is simply not believed is what an
operator configures and expects, so it is written here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiohttp import web

from gateway.api.auth import SERVICES, Handler

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(values: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def parse_address(value: str | None) -> Address | None:
    """An address from a header element or a socket: ``1.2.3.4``, ``1.2.3.4:5678``, ``[::1]:80``, ``::1``."""
    if not value:
        return None
    text = value.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def within(address: Address | None, nets: tuple[Network, ...]) -> bool:
    return address is not None and any(address in net for net in nets)


def _hops(request: web.Request, header: str) -> list[tuple[str | None, str | None]]:
    """(for, proto) of each hop, oldest first."""
    if header == "forwarded":
        return [(element.get("for"), element.get("proto")) for element in request.forwarded]
    proto = request.headers.get("X-Forwarded-Proto")
    hops: list[tuple[str | None, str | None]] = [
        (part.strip(), None) for value in request.headers.getall("X-Forwarded-For", []) for part in value.split(",")
    ]
    if hops and proto:
        hops[-1] = (hops[-1][0], proto.split(",")[-1].strip())
    return hops


def caller(request: web.Request, trusted: tuple[Network, ...], header: str) -> tuple[str, str]:
    """The caller's address and the scheme it used (the connection's, unless a trusted proxy says)."""
    peer = parse_address(request.transport.get_extra_info("peername")[0] if request.transport else None)
    address, scheme = peer, request.scheme
    if not within(peer, trusted):
        return (str(peer) if peer is not None else (request.remote or "")), scheme
    for claimed, proto in reversed(_hops(request, header)):
        hop = parse_address(claimed)
        if hop is None:
            break  # a value no proxy of ours writes: believe nothing further left
        address = hop
        if proto in ("http", "https"):
            scheme = proto
        if not within(hop, trusted):
            break
    return str(address) if address is not None else (request.remote or ""), scheme


@web.middleware
async def client_address_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    svc = request.app[SERVICES]
    trusted = svc.trusted_proxies
    if not trusted:
        return await handler(request)
    remote, scheme = caller(request, trusted, svc.cfg.server.forwarded_header)
    if remote == request.remote and scheme == request.scheme:
        return await handler(request)
    return await handler(request.clone(remote=remote, scheme=scheme))
