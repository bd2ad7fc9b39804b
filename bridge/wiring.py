"""What the agent is built from, read from its config: the credentials it signs and verifies with, and the adapter
for the hospital's HIS. Start-up and a reload (SIGHUP) both build through here, so both refuse the same bad files."""

from __future__ import annotations

from adapters.base import Adapter
from adapters.profile import load_profile
from bridge import catalog, protocol, tls
from bridge.config import BridgeConfig


def load_credentials(
    cfg: BridgeConfig,
) -> tuple[protocol.SigningKey, dict[str, protocol.VerifyKey], tls.IdentityPolicy]:
    """Our response-signing key, the platform's verify keys and the allowed client identities."""
    signing_key = protocol.load_signing_key(cfg.signing.key_id, cfg.signing.key)
    client_keys = {c.key_id: protocol.load_verify_key(c.key_id, c.public_key) for c in cfg.signing.clients}
    policy = tls.IdentityPolicy.build(
        [
            tls.AllowedClient(c.cn, c.spki_sha256, frozenset(c.key_ids) if c.key_ids is not None else None)
            for c in cfg.tls.allowed_clients
        ]
    )
    return signing_key, client_keys, policy


def build_adapter(cfg: BridgeConfig) -> Adapter:
    profile = load_profile(
        cfg.his.profile,
        known_operations=frozenset(catalog.OPERATIONS),
        read_operations=catalog.READ_OPERATIONS,
        overrides=cfg.his.overrides,
    )
    return profile.build_adapter()
