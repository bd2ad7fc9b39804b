"""Where notifications may go: an order's ``notify_url`` is the caller's to choose, so it must never become a way
to make the gateway POST into its own network (SSRF).

Two rules, both checked when the order is created and again on every delivery and every redirect:

- **the host** must be one the app was configured with (``notify_hosts``, or the host of its own
  ``notify_url``): an app cannot send our signed events anywhere it likes;
- **the address** the host resolves to must be public. Loopback, private, link-local (cloud metadata at
  169.254.169.254), shared (100.64/10, Alibaba Cloud's 100.100.100.200), multicast, reserved and unspecified
  addresses are refused — every address a name resolves to, checked where the connection is made (a resolver
  of our own), so a name that resolves differently the second time (DNS rebinding) gains nothing — unless
  ``notifications.allow_addresses`` lists them.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

from aiohttp import ThreadedResolver
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class NotifyUrlRefused(Exception):
    """A notify URL or the address behind it is not one notifications may be sent to; says which and why."""


def networks(values: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def forbidden_reason(address: Address, allow: tuple[Network, ...]) -> str | None:
    """Why ``address`` may not be sent to, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in net for net in allow):
        return None
    for test, what in (
        ("is_loopback", "a loopback"),
        ("is_link_local", "a link-local (cloud metadata)"),
        ("is_private", "a private"),
        ("is_multicast", "a multicast"),
        ("is_unspecified", "an unspecified"),
        ("is_reserved", "a reserved"),
    ):
        if getattr(address, test):
            return f"{address} is {what} address"
    if not address.is_global:
        return f"{address} is not a public address"
    return None


def host_allowed(host: str, hosts: Iterable[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in hosts:
        pattern = pattern.lower().rstrip(".").strip("[]")
        if pattern.startswith("*.") and host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
            return True
        if host == pattern:
            return True
    return False


def app_hosts(notify_url: str | None, notify_hosts: Iterable[str] | None) -> list[str]:
    hosts = list(notify_hosts or [])
    if notify_url:
        host = URL(notify_url).host
        if host:
            hosts.append(host)
    return hosts


def check_url(url: str, hosts: Iterable[str], allow: tuple[Network, ...]) -> URL:
    """The URL, parsed, when its scheme and host may be sent to; a literal address is checked here too (it
    never reaches a resolver)."""
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise NotifyUrlRefused(f"{url[:200]!r} is not an http(s) URL")
    if parsed.user is not None or parsed.password is not None:
        raise NotifyUrlRefused("a notify URL may not carry a user name or password")
    hosts = list(hosts)
    if not host_allowed(parsed.host, hosts):
        allowed = ", ".join(hosts) or "none: configure the app's notify_url or notify_hosts"
        raise NotifyUrlRefused(f"host {parsed.host!r} is not one this app's notifications may go to ({allowed})")
    try:
        literal = ipaddress.ip_address(parsed.host.strip("[]"))
    except ValueError:
        return parsed
    reason = forbidden_reason(literal, allow)
    if reason is not None:
        raise NotifyUrlRefused(f"{reason}; notifications go to public addresses (notifications.allow_addresses)")
    return parsed


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp does, then refuses the name if any of its addresses is forbidden. aiohttp connects
    only to the addresses returned here, so the check and the connection cannot disagree."""

    def __init__(self, allow: tuple[Network, ...], inner: AbstractResolver | None = None) -> None:
        self.allow = allow
        self.inner = inner or ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> Any:
        results: list[ResolveResult] = await self.inner.resolve(host, port, family)
        for result in results:
            reason = forbidden_reason(ipaddress.ip_address(result["host"]), self.allow)
            if reason is not None:
                raise NotifyUrlRefused(
                    f"{host} resolves to {reason}; notifications go to public addresses (notifications.allow_addresses)"
                )
        return results

    async def close(self) -> None:
        await self.inner.close()
