"""Who is calling on the intranet listener: the registered terminal, and whether it may.

A terminal is identified either by the certificate it presented (``auth = "mtls"``: the hospital CA's chain
was checked by TLS; its CN or key must be the one configured) or by the id it names in ``X-HBT-Terminal``
(``auth = "hmac"``: its HMAC is then checked with its own key). Either way the request must come from one of
the terminal's addresses.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from bridge import terminal_protocol, tls
from bridge.egress.config import EgressConfig
from bridge.errors import ApiError
from bridge.intranet.config import IntranetConfig, TerminalConfig, TerminalOperation

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TerminalRefused(ApiError):
    """The request is refused before anything is journaled; ``code`` is stable."""


@dataclass(frozen=True)
class Terminal:
    cfg: TerminalConfig
    key: bytes | None
    networks: tuple[Network, ...]
    pin: str | None
    app: str

    @property
    def id(self) -> str:
        return self.cfg.id

    def from_allowed_address(self, remote: str | None) -> bool:
        try:
            address = ipaddress.ip_address((remote or "").split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def may(self, operation: TerminalOperation) -> bool:
        return operation in self.cfg.operations

    def matches(self, identity: tls.PeerIdentity | None) -> bool:
        if identity is None:
            return False
        return (self.cfg.cert_cn is not None and identity.cn == self.cfg.cert_cn) or (
            self.pin is not None and identity.spki_sha256 == self.pin
        )


def _read_key(path: Path) -> bytes:
    if path.stat().st_mode & 0o077:
        raise ValueError(f"{path}: a terminal key file must not be readable by others (chmod 600)")
    try:
        return terminal_protocol.parse_key(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


class TerminalRegistry:
    def __init__(self, terminals: list[Terminal]) -> None:
        self.by_id = {t.id: t for t in terminals}

    @classmethod
    def load(cls, intranet: IntranetConfig, egress: EgressConfig) -> TerminalRegistry:
        """Read every terminal's key; a missing or loose key file stops the agent from starting."""
        default_app = egress.apps[0].app_id
        terminals = []
        for t in intranet.terminals:
            key = _read_key(t.key_file) if t.auth == "hmac" and t.key_file is not None else None
            pin = tls.normalize_pin(t.cert_spki_sha256) if t.cert_spki_sha256 else None
            networks = tuple(t.networks())
            terminals.append(Terminal(t, key, networks, pin, t.app or default_app))
        return cls(terminals)

    def by_certificate(self, identity: tls.PeerIdentity) -> Terminal | None:
        for terminal in self.by_id.values():
            if terminal.cfg.auth == "mtls" and terminal.matches(identity):
                return terminal
        return None

    def any_allows(self, remote: str | None) -> bool:
        return any(t.from_allowed_address(remote) for t in self.by_id.values())
