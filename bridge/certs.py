"""Development certificates and signing keys (``his-bridge certs dev``).

Real deployments get their server certificate from the platform's CA through a CSR; this makes a complete,
self-consistent set for a laptop, the demo and the tests: a platform CA, the bridge's server certificate, the
platform's client certificate, a second unrelated CA with its own client (to prove it is refused), and the two
Ed25519 signing key pairs of the envelope. For the outbound path (kiosks and windows paying through the agent):
the gateway's mutual-TLS server certificate and the agent's egress client certificate (both from the platform
CA), a hospital-local CA with the agent's intranet server certificate and one terminal's client certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bridge import protocol


@dataclass(frozen=True)
class DevCerts:
    dir: Path

    def __getattr__(self, name: str) -> Path:
        files = {
            "ca_cert": "platform-ca.crt",
            "server_cert": "server.crt",
            "server_key": "server.key",
            "client_cert": "client.crt",
            "client_key": "client.key",
            "other_ca_cert": "other-ca.crt",
            "other_client_cert": "other-client.crt",
            "other_client_key": "other-client.key",
            "rogue_client_cert": "rogue-client.crt",
            "rogue_client_key": "rogue-client.key",
            "bridge_signing_key": "bridge-signing.pem",
            "bridge_signing_pub": "bridge-signing.pub",
            "platform_signing_key": "platform-signing.pem",
            "platform_signing_pub": "platform-signing.pub",
            "gateway_server_cert": "gateway-server.crt",
            "gateway_server_key": "gateway-server.key",
            "egress_client_cert": "egress-client.crt",
            "egress_client_key": "egress-client.key",
            "hospital_ca_cert": "hospital-ca.crt",
            "intranet_server_cert": "intranet-server.crt",
            "intranet_server_key": "intranet-server.key",
            "terminal_cert": "terminal.crt",
            "terminal_key": "terminal.key",
        }
        if name not in files:
            raise AttributeError(name)
        return self.dir / files[name]


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "HIS Bridge dev"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, data: bytes, private: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    days: int,
    ca: bool = False,
    server_hosts: tuple[str, ...] = (),
    client: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    issuer_name, issuer_key = issuer or (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if server_hosts:
        sans: list[x509.GeneralName] = []
        for host in server_hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    if client:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_dev_certs(
    out: Path,
    *,
    hospital: str = "H001",
    client_cn: str = "platform-gateway",
    hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
    days: int = 825,
) -> DevCerts:
    """Write a full dev set into ``out``; refuses to overwrite any existing file."""
    out.mkdir(parents=True, exist_ok=True)
    certs = DevCerts(out)
    pem = serialization.Encoding.PEM

    ca_key = _key()
    ca = _cert("HIS Bridge Dev Platform CA", ca_key, None, days=days * 2, ca=True)
    server_key, client_key = _key(), _key()
    server = _cert(f"his-bridge-{hospital}", server_key, (ca.subject, ca_key), days=days, server_hosts=hosts)
    client = _cert(client_cn, client_key, (ca.subject, ca_key), days=days, client=True)
    rogue_key = _key()
    rogue = _cert("someone-else", rogue_key, (ca.subject, ca_key), days=days, client=True)
    other_ca_key, other_client_key = _key(), _key()
    other_ca = _cert("Unrelated CA", other_ca_key, None, days=days, ca=True)
    other_client = _cert(client_cn, other_client_key, (other_ca.subject, other_ca_key), days=days, client=True)

    gateway_key, egress_key = _key(), _key()
    gateway_server = _cert("platform-gateway-api", gateway_key, (ca.subject, ca_key), days=days, server_hosts=hosts)
    egress = _cert(f"his-bridge-{hospital}-egress", egress_key, (ca.subject, ca_key), days=days, client=True)
    hospital_ca_key, intranet_key, terminal_key = _key(), _key(), _key()
    hospital_ca = _cert(f"{hospital} Hospital Dev CA", hospital_ca_key, None, days=days * 2, ca=True)
    intranet = _cert(
        f"his-bridge-{hospital}-intranet", intranet_key, (hospital_ca.subject, hospital_ca_key), days=days,
        server_hosts=hosts,
    )  # fmt: skip
    terminal = _cert("KIOSK-CERT", terminal_key, (hospital_ca.subject, hospital_ca_key), days=days, client=True)

    bridge_sign = protocol.generate_ed25519(f"bridge-{hospital}")
    platform_sign = protocol.generate_ed25519("platform")

    _write(certs.ca_cert, ca.public_bytes(pem), False)
    _write(certs.server_cert, server.public_bytes(pem) + ca.public_bytes(pem), False)
    _write(certs.server_key, _key_pem(server_key), True)
    _write(certs.client_cert, client.public_bytes(pem), False)
    _write(certs.client_key, _key_pem(client_key), True)
    _write(certs.rogue_client_cert, rogue.public_bytes(pem), False)
    _write(certs.rogue_client_key, _key_pem(rogue_key), True)
    _write(certs.other_ca_cert, other_ca.public_bytes(pem), False)
    _write(certs.other_client_cert, other_client.public_bytes(pem), False)
    _write(certs.other_client_key, _key_pem(other_client_key), True)
    _write(certs.bridge_signing_key, protocol.private_pem(bridge_sign), True)
    _write(certs.bridge_signing_pub, bridge_sign.public().public_pem(), False)
    _write(certs.platform_signing_key, protocol.private_pem(platform_sign), True)
    _write(certs.platform_signing_pub, platform_sign.public().public_pem(), False)
    _write(certs.gateway_server_cert, gateway_server.public_bytes(pem) + ca.public_bytes(pem), False)
    _write(certs.gateway_server_key, _key_pem(gateway_key), True)
    _write(certs.egress_client_cert, egress.public_bytes(pem), False)
    _write(certs.egress_client_key, _key_pem(egress_key), True)
    _write(certs.hospital_ca_cert, hospital_ca.public_bytes(pem), False)
    _write(certs.intranet_server_cert, intranet.public_bytes(pem) + hospital_ca.public_bytes(pem), False)
    _write(certs.intranet_server_key, _key_pem(intranet_key), True)
    _write(certs.terminal_cert, terminal.public_bytes(pem), False)
    _write(certs.terminal_key, _key_pem(terminal_key), True)
    return certs
