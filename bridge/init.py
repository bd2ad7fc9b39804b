"""``his-bridge init`` and ``his-bridge csr``: set up one hospital's agent, as an implementer would by hand.

``init`` writes a config folder: the config (0600), the chosen profile, the agent's Ed25519 signing key and a TLS
key with a CSR for the platform's CA. Private keys live in ``keys/`` (0700, files 0600) and HIS credentials in
``secrets/his.env`` (0600, read by the systemd unit), never in the config itself. It refuses to overwrite
anything, so running it twice cannot destroy a key the platform already trusts. ``csr`` makes the next TLS key
and CSR beside the current ones, for a certificate renewal without downtime.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bridge import protocol, tls
from bridge.config import load_config
from bridge.settings import parse_host_port

PROTOCOLS = ("soap", "hl7", "dbproc")
DEFAULT_PROFILES = {"soap": "soap-asmx-xml.toml", "hl7": "hl7-v24-gb18030.toml", "dbproc": "dbproc-postgresql.toml"}
HOSPITAL_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class InitError(Exception):
    pass


@dataclass
class InitOptions:
    hospital: str
    protocol: str
    endpoint: str
    """SOAP: the HIS base URL or its full service URL (…/HisService.asmx, ``?wsdl`` or not); HL7: HOST:PORT of
    its MLLP listener; stored procedures: an ODBC connection string (a secret: it goes to secrets/his.env, not
    into the config)."""
    out: Path
    listen: str = "0.0.0.0:8443"
    ops_listen: str = "127.0.0.1:9109"
    journal: Path = Path("/var/lib/his-bridge/journal.sqlite3")
    profile: Path | None = None
    platform_cn: str = "platform-gateway"
    hosts: list[str] = field(default_factory=list)
    """Names and addresses the platform reaches this agent by (the CSR's subjectAltName)."""


def profiles_dir() -> Path:
    """Where the shipped profiles are: beside an installed venv (the bundle's install.sh puts them there), or
    in the source tree."""
    env = os.environ.get("HIS_BRIDGE_PROFILES")
    candidates = [Path(env)] if env else []
    candidates += [
        Path(sys.prefix) / "share" / "his-bridge" / "profiles",
        Path(__file__).parents[1] / "config" / "profiles",
    ]
    for folder in candidates:
        if folder.is_dir():
            return folder
    raise InitError("no profiles found; pass --profile FILE (or set HIS_BRIDGE_PROFILES)")


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:  # the mode is set at creation; a umask can only narrow it
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_csr(key: ec.EllipticCurvePrivateKey, hospital: str, hosts: list[str]) -> x509.CertificateSigningRequest:
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, hospital),
            x509.NameAttribute(NameOID.COMMON_NAME, f"his-bridge-{hospital}"),
        ]
    )
    builder = x509.CertificateSigningRequestBuilder().subject_name(name)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256())


_SERVICE_PAGE = re.compile(r"\.(asmx|svc|php|jws|ashx|aspx)$", re.IGNORECASE)


def soap_overrides(endpoint: str) -> dict[str, str]:
    """The base URL, or the full service URL a HIS vendor hands out (``http://10.9.9.9:8080/HisService.asmx``,
    with or without ``?wsdl``): the latter names the service itself, so its path becomes the profile's
    ``endpoint`` and ``wsdl`` instead of being put in front of the profile's own paths."""
    parts = urlsplit(endpoint.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InitError(
            f"--endpoint for soap must be the HIS's http(s) base URL or its service URL "
            f"(http://10.9.9.9:8080/HisService.asmx), got {endpoint!r}"
        )
    base = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.rstrip("/")
    asks_wsdl = parts.query.lower() in ("wsdl", "singlewsdl") or parts.query.lower().startswith("wsdl=")
    if not asks_wsdl and not _SERVICE_PAGE.search(path):
        return {"soap.base_url": base + path}
    if not path:
        raise InitError(f"--endpoint {endpoint!r} asks for a WSDL but names no service path")
    return {"soap.base_url": base, "soap.endpoint": path, "soap.wsdl": f"{path}?{parts.query or 'wsdl'}"}


def _his_overrides(protocol_name: str, endpoint: str) -> tuple[dict[str, str], str | None]:
    """The config's ``[his] overrides`` for the endpoint, and the secrets file's text when it is a secret."""
    if protocol_name == "soap":
        return soap_overrides(endpoint), None
    if protocol_name == "hl7":
        try:
            host, port = parse_host_port(endpoint)
        except ValueError:
            raise InitError(
                f"--endpoint for hl7 must be HOST:PORT of the HIS's MLLP listener, got {endpoint!r}"
            ) from None
        return {"hl7.host": host, "hl7.port": str(port)}, None
    if "=" not in endpoint:
        raise InitError("--endpoint for dbproc must be an ODBC connection string (Driver=...;Server=...;...)")
    return {"dbproc.connection": "${env:HIS_DBPROC_CONNECTION}"}, f"HIS_DBPROC_CONNECTION={endpoint}\n"


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_text(opts: InitOptions, profile_name: str, overrides: dict[str, str]) -> str:
    his = ", ".join(f"{_toml_str(k)} = {_toml_str(v)}" for k, v in overrides.items())
    return f"""# HIS Bridge agent for hospital {opts.hospital}, written by `his-bridge init`.
# Relative paths are resolved against this folder. Private keys are in keys/, HIS credentials in
# secrets/his.env (loaded by the systemd unit); neither belongs in this file.
# Before the first start: put the files named below under certs/ (see README.txt), then
#   his-bridge doctor --config {opts.out / "bridge.toml"}

hospital = {_toml_str(opts.hospital)}

[server]
listen = {_toml_str(opts.listen)}
ops_listen = {_toml_str(opts.ops_listen)}

[tls]
cert = "certs/server.crt"              # issued by the platform CA for keys/server.key (send it certs/server.csr)
key = "keys/server.key"
client_ca = "certs/platform-ca.crt"    # the platform CA's certificate
allowed_clients = [{{ cn = {_toml_str(opts.platform_cn)} }}]

[signing]
key_id = "bridge-{opts.hospital}"
key = "keys/bridge-signing.pem"        # give the platform certs/bridge-signing.pub
clients = [{{ key_id = "platform", public_key = "certs/platform-signing.pub" }}]

[journal]
path = {_toml_str(str(opts.journal))}

[his]
profile = "profiles/{profile_name}"
overrides = {{ {his} }}

[logging]
level = "info"
format = "json"
"""


def _readme(opts: InitOptions) -> str:
    return f"""Hospital {opts.hospital}: what to exchange with the platform before the first start.

Send to the platform:
  certs/server.csr          the agent's TLS certificate request, for the platform CA to sign
  certs/bridge-signing.pub  the key the agent signs its answers with (key id bridge-{opts.hospital})

Put here what the platform sends back:
  certs/server.crt          the signed certificate (PEM, with any intermediate after it)
  certs/platform-ca.crt     the platform CA's certificate
  certs/platform-signing.pub  the platform's request-signing public key (key id "platform")

Then: his-bridge doctor --config {opts.out / "bridge.toml"} --platform-url https://<platform host>/
"""


def init(opts: InitOptions) -> list[Path]:
    """Write the config folder; returns the files written. Nothing is written if any target already exists."""
    if not HOSPITAL_RE.match(opts.hospital):
        raise InitError(f"hospital code {opts.hospital!r}: 1-32 letters, digits, '-' or '_'")
    if opts.protocol not in PROTOCOLS:
        raise InitError(f"protocol {opts.protocol!r}: one of {', '.join(PROTOCOLS)}")
    for name, value in (("--listen", opts.listen), ("--ops-listen", opts.ops_listen)):
        try:
            parse_host_port(value)
        except ValueError:
            raise InitError(f"{name} must be HOST:PORT, got {value!r}") from None
    overrides, secrets = _his_overrides(opts.protocol, opts.endpoint)
    profile = opts.profile or profiles_dir() / DEFAULT_PROFILES[opts.protocol]
    if not profile.is_file():
        raise InitError(f"profile {profile}: no such file")

    out = opts.out
    files = {
        "config": out / "bridge.toml",
        "profile": out / "profiles" / profile.name,
        "signing_key": out / "keys" / "bridge-signing.pem",
        "signing_pub": out / "certs" / "bridge-signing.pub",
        "tls_key": out / "keys" / "server.key",
        "csr": out / "certs" / "server.csr",
        "readme": out / "README.txt",
    }
    if secrets is not None:
        files["secrets"] = out / "secrets" / "his.env"
    existing = [str(p) for p in files.values() if p.exists()]
    if existing:
        raise InitError(f"refusing to overwrite {', '.join(existing)}")

    hosts = opts.hosts or _default_hosts(opts.listen)
    signing = protocol.generate_ed25519(f"bridge-{opts.hospital}")
    tls_key = ec.generate_private_key(ec.SECP256R1())
    csr = make_csr(tls_key, opts.hospital, hosts)

    out.mkdir(parents=True, exist_ok=True)
    for sub, mode in (("keys", 0o700), ("secrets", 0o700), ("certs", 0o755), ("profiles", 0o755)):
        (out / sub).mkdir(mode=mode, exist_ok=True)
        os.chmod(out / sub, mode)
    _write(files["signing_key"], protocol.private_pem(signing), 0o600)
    _write(files["signing_pub"], signing.public().public_pem(), 0o644)
    _write(files["tls_key"], _key_pem(tls_key), 0o600)
    _write(files["csr"], csr.public_bytes(serialization.Encoding.PEM), 0o644)
    if secrets is not None:
        _write(files["secrets"], secrets.encode(), 0o600)
    _write(files["profile"], profile.read_bytes(), 0o644)
    _write(files["config"], config_text(opts, profile.name, overrides).encode(), 0o600)
    _write(files["readme"], _readme(opts).encode(), 0o644)
    _hand_to_service_user(out)
    return list(files.values())


def _default_hosts(listen: str) -> list[str]:
    host = parse_host_port(listen)[0]
    hosts = [socket.getfqdn()]
    if host not in ("0.0.0.0", "::", ""):
        hosts.append(host)
    return hosts


def _hand_to_service_user(out: Path, user: str = "his-bridge") -> None:
    """As root, with the service user present (the bundle's install.sh creates it), give the folder to that user
    with the modes unchanged: the agent reads its 0600 files, nobody else does, and systemd's ProtectSystem keeps
    it from writing them."""
    if os.geteuid() != 0:
        return
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return
    for path in [out, *out.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)


def next_csr(config_path: Path, hosts: list[str] | None = None) -> tuple[Path, Path]:
    """A fresh TLS key and CSR beside the current ones (``keys/server-next.key``, ``certs/server-next.csr``),
    for renewing the certificate while the agent keeps serving with the old one."""
    cfg = load_config(config_path)
    key_path = cfg.tls.key.with_name("server-next.key")
    csr_path = cfg.tls.cert.with_name("server-next.csr")
    existing = [str(p) for p in (key_path, csr_path) if p.exists()]
    if existing:
        raise InitError(f"refusing to overwrite {', '.join(existing)}")
    if not hosts:
        try:
            current = tls.load_certificate(cfg.tls.cert)
            san = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            hosts = [str(v) for v in san.get_values_for_type(x509.DNSName)]
            hosts += [str(v) for v in san.get_values_for_type(x509.IPAddress)]
        except (OSError, ValueError, x509.ExtensionNotFound):
            hosts = _default_hosts(cfg.server.listen)
    key = ec.generate_private_key(ec.SECP256R1())
    _write(key_path, _key_pem(key), 0o600)
    _write(csr_path, make_csr(key, cfg.hospital, hosts).public_bytes(serialization.Encoding.PEM), 0o644)
    if os.geteuid() == 0:
        owner = cfg.tls.key.stat()
        for path in (key_path, csr_path):
            os.chown(path, owner.st_uid, owner.st_gid)
    return key_path, csr_path
