"""What ``his-bridge check`` verifies of the second direction before the agent starts: every terminal's key,
the apps' signing keys, the gateway's public key, and the certificates on both sides."""

from __future__ import annotations

from pathlib import Path

from bridge import protocol, tls
from bridge.config import BridgeConfig
from bridge.intranet.terminals import TerminalRegistry


def _certificate(name: str, path: Path, problems: list[str], notes: list[str]) -> None:
    try:
        days = tls.days_to_expiry(tls.load_certificate(path))
    except (OSError, ValueError) as e:
        problems.append(f"{name} {path}: {e}")
        return
    (problems if days < 0 else notes).append(f"{name} {path}: {days:.0f} days to expiry")


def check_outbound(cfg: BridgeConfig, problems: list[str], notes: list[str]) -> None:
    if cfg.intranet is None or cfg.egress is None:
        return
    try:
        registry = TerminalRegistry.load(cfg.intranet, cfg.egress)
        kinds = sorted({t.cfg.kind.value for t in registry.by_id.values()})
        notes.append(f"intranet {cfg.intranet.listen}: {len(registry.by_id)} terminals ({', '.join(kinds)})")
    except (OSError, ValueError) as e:
        problems.append(f"terminal key: {e}")
    if cfg.intranet.tls is not None:
        _certificate("intranet certificate", cfg.intranet.tls.cert, problems, notes)
        if cfg.intranet.tls.terminal_ca is not None:
            _certificate("hospital terminal CA", cfg.intranet.tls.terminal_ca, problems, notes)
    else:
        notes.append("intranet listener speaks plain HTTP: only HMAC terminals can call, and their traffic is visible")
    egress = cfg.egress
    try:
        for app in egress.apps:
            protocol.load_signing_key(app.app_id, app.signing_key)
        protocol.load_verify_key(egress.gateway_key_id, egress.gateway_public_key)
        notes.append(f"egress to {egress.gateway_url} as {', '.join(a.app_id for a in egress.apps)}")
    except (OSError, ValueError) as e:
        problems.append(f"egress key: {e}")
    _certificate("egress client certificate", egress.client_cert, problems, notes)
    _certificate("gateway CA", egress.ca, problems, notes)
