"""The kiosk step of the demo: the hospital's own terminals pay and refund through the agent, intranet → cloud.

Before the agent starts, ``prepare`` gives it a second listener (the intranet one) with two terminals — a kiosk
and a cashier window, each with its own HMAC key made by ``his-bridge terminal-key`` — and an ``[egress]`` section
pointing at the gateway's mutual-TLS listener, signed as the hospital's agent app. The gateway half then
registers that app and opens that listener (``gateway_toml``), and ``run`` plays the terminals with
``his-sandbox kiosk``: the kiosk takes a 付款码 from the payer, then the window refunds part of it after booking
the refund in the HIS itself (窗口退费).
"""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import dataclass
from pathlib import Path

from demo_support import BIN, Processes, free_port, say, step

from bridge import protocol
from bridge.certs import DevCerts

AGENT_APP = "agent-H001"
KIOSK, WINDOW = "KIOSK-01", "WIN-01"


@dataclass(frozen=True)
class KioskSetup:
    work: Path
    certs: DevCerts
    his_url: str
    intranet_port: int
    gateway_mtls_port: int

    @property
    def intranet_url(self) -> str:
        return f"https://127.0.0.1:{self.intranet_port}"

    @property
    def keys(self) -> Path:
        return self.work / "terminals"


def prepare(work: Path, certs: DevCerts, his_url: str) -> tuple[KioskSetup, str]:
    """Keys for the terminals and the agent app; the agent config's intranet and egress sections."""
    setup = KioskSetup(work, certs, his_url, free_port(), free_port())
    setup.keys.mkdir(parents=True)
    for terminal in (KIOSK, WINDOW):
        out = setup.keys / f"{terminal}.key"
        subprocess.run([str(BIN / "his-bridge"), "terminal-key", "--out", str(out)], check=True, capture_output=True)
    app = protocol.generate_ed25519(AGENT_APP)
    (setup.keys / f"{AGENT_APP}.pem").write_bytes(protocol.private_pem(app))
    (setup.keys / f"{AGENT_APP}.pem").chmod(0o600)
    (setup.keys / f"{AGENT_APP}.pub").write_bytes(app.public().public_pem())
    gateway = protocol.generate_ed25519("gateway")  # the agent believes only answers signed by it
    (work / "keys").mkdir(exist_ok=True)
    (work / "keys" / "gateway-signing.pem").write_bytes(protocol.private_pem(gateway))
    (work / "keys" / "gateway-signing.pem").chmod(0o600)
    (work / "keys" / "gateway-signing.pub").write_bytes(gateway.public().public_pem())
    toml = f"""
# --- added by the demo: kiosks and windows pay through this agent (docs/OPERATIONS.md, "The intranet listener")
[intranet]
listen = "127.0.0.1:{setup.intranet_port}"

[intranet.tls]
cert = "certs/intranet-server.crt"
key = "certs/intranet-server.key"
terminal_ca = "certs/hospital-ca.crt"

[[intranet.terminals]]
id = "{KIOSK}"
kind = "kiosk"
operations = ["pay.codepay", "pay.qr", "pay.query", "pay.close", "transactions"]
auth = "hmac"
key_file = "terminals/{KIOSK}.key"
addresses = ["127.0.0.1"]
max_payment_fen = 500000
max_daily_fen = 5000000

[[intranet.terminals]]
id = "{WINDOW}"
kind = "window"
operations = ["pay.codepay", "pay.query", "refund", "refund.query", "transactions"]
auth = "hmac"
key_file = "terminals/{WINDOW}.key"
addresses = ["127.0.0.1"]
max_payment_fen = 2000000
max_daily_fen = 50000000

[egress]
gateway_url = "https://127.0.0.1:{setup.gateway_mtls_port}"
ca = "certs/platform-ca.crt"
client_cert = "certs/egress-client.crt"
client_key = "certs/egress-client.key"
gateway_public_key = "keys/gateway-signing.pub"
journal = "egress.sqlite3"

[[egress.apps]]
app_id = "{AGENT_APP}"
signing_key = "terminals/{AGENT_APP}.pem"
"""
    return setup, toml


def gateway_toml(setup: KioskSetup) -> str:
    """The gateway's side: its mutual-TLS listener, and the agent as an app of the hospital."""
    return f"""
[server.mtls]                                      # added by the demo: where the hospital's agent calls
listen = "127.0.0.1:{setup.gateway_mtls_port}"
cert = "certs/gateway-server.crt"
key = "certs/gateway-server.key"
client_ca = "certs/platform-ca.crt"

[[hospitals.apps]]                                 # added by the demo: H001's agent, for its kiosks and windows
app_id = "{AGENT_APP}"
public_key = "terminals/{AGENT_APP}.pub"
kind = "agent"
client_cert_cn = "his-bridge-H001-egress"
"""


async def run(setup: KioskSetup, procs: Processes, channels_admin: str, channel: str) -> None:
    step(
        f"his-sandbox kiosk — kiosk {KIOSK} takes a 付款码 and window {WINDOW} refunds half of it, through the"
        " agent's intranet listener"
    )
    say(f"intranet listener {setup.intranet_url} (HMAC per terminal, TLS from the hospital's CA)")
    argv = [
        str(BIN / "his-sandbox"), "kiosk", "--agent", setup.intranet_url,
        "--cacert", str(setup.certs.hospital_ca_cert),
        "--terminal", KIOSK, "--key-file", str(setup.keys / f"{KIOSK}.key"),
        "--window", WINDOW, "--window-key-file", str(setup.keys / f"{WINDOW}.key"),
        "--channels-admin", channels_admin, "--his", setup.his_url, "--channel", channel,
        "--amount", "5000", "--scenario", "codepay", "--scenario", "refund",
    ]  # fmt: skip
    done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=120)
    for line in done.stdout.strip().splitlines():
        say(line)
    if done.returncode != 0:
        raise SystemExit(f"the kiosk step failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    say("the kiosk's payment went out through the agent (journaled first), the HIS was told by the gateway; the")
    say("window's refund skipped refund.apply — the HIS had refunded already — and was capped by what was paid")
