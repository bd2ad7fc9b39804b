"""Block and allow lists per hospital and purpose: numbers, number prefixes, addresses and networks.

A blocked number is answered as if sent (silent) so that the list cannot be probed; a blocked address is
refused openly, since it tells the caller only about itself.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from gateway.sms.config import Policy
from gateway.sms.layers import Layer, OtpRequest, Verdict


@lru_cache(maxsize=256)
def _networks(nets: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in nets)


def ip_in(ip: str | None, nets: list[str]) -> bool:
    if ip is None or not nets:
        return False
    address = ipaddress.ip_address(ip)
    return any(address in net for net in _networks(tuple(nets)))


def phone_allowed(req: OtpRequest, policy: Policy) -> bool:
    return req.phone in policy.lists.allow_phones


class ListsLayer(Layer):
    name = "lists"

    async def assess(self, req: OtpRequest, policy: Policy) -> list[Verdict]:
        lists = policy.lists
        if req.phone in lists.block_phones:
            return [Verdict(self.name, "blocked_phone", refusal="silent")]
        if any(req.phone.startswith(p) for p in lists.block_prefixes):
            return [Verdict(self.name, "blocked_prefix", refusal="silent")]
        if ip_in(req.ip, lists.block_ips):
            return [Verdict(self.name, "blocked_ip", refusal="refused")]
        return []
