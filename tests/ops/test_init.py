"""``his-bridge init`` as an implementer runs it: the files it writes, their modes, the CSR, secrets kept apart,
no overwriting; and the folder it writes runs an agent once the platform's files are put in place."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bridge import protocol, tls
from bridge.client import BridgeClient
from bridge.config import load_config
from bridge.server import start_agent
from tests.support.rig import SANDBOX_PROFILE

pytestmark = pytest.mark.system


def his_bridge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )


def init(out: Path, *extra: str, endpoint: str = "http://127.0.0.1:8089") -> subprocess.CompletedProcess[str]:
    return his_bridge(
        "init",
        "--hospital", "H042",
        "--protocol", "soap",
        "--endpoint", endpoint,
        "--listen", "127.0.0.1:0",
        "--ops-listen", "127.0.0.1:0",
        "--out", str(out),
        "--journal", str(out.parent / "var" / "journal.sqlite3"),
        "--profile", str(SANDBOX_PROFILE),
        "--host", "localhost",
        "--host", "127.0.0.1",
        *extra,
    )  # fmt: skip


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_init_writes_config_keys_and_csr_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "etc"
    result = init(out)
    assert result.returncode == 0, result.stderr
    config = out / "bridge.toml"
    assert mode(config) == 0o600 and mode(out / "keys") == 0o700
    assert mode(out / "keys" / "server.key") == 0o600 and mode(out / "keys" / "bridge-signing.pem") == 0o600
    assert "PRIVATE KEY" not in config.read_text()
    cfg = load_config(config)
    assert cfg.hospital == "H042" and cfg.his.overrides == {"soap.base_url": "http://127.0.0.1:8089"}
    assert cfg.tls.key == out / "keys" / "server.key" and cfg.signing.key_id == "bridge-H042"

    csr = x509.load_pem_x509_csr((out / "certs" / "server.csr").read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "his-bridge-H042"
    sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    key = serialization.load_pem_private_key((out / "keys" / "server.key").read_bytes(), None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert csr.public_key().public_bytes(serialization.Encoding.PEM, spki) == key.public_key().public_bytes(
        serialization.Encoding.PEM, spki
    )

    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    again = init(out)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_init_keeps_a_database_password_out_of_the_config(tmp_path):
    out = tmp_path / "etc"
    secret = "Driver=PostgreSQL Unicode;Server=10.0.0.9;Database=his;Uid=bridge;Pwd=s3cret"
    result = his_bridge(
        "init", "--hospital", "H7", "--protocol", "dbproc", "--endpoint", secret, "--out", str(out), "--host", "dmz1"
    )
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in (out / "bridge.toml").read_text()
    assert "${env:HIS_DBPROC_CONNECTION}" in (out / "bridge.toml").read_text()
    env = out / "secrets" / "his.env"
    assert mode(env) == 0o600 and env.read_text() == f"HIS_DBPROC_CONNECTION={secret}\n"


def test_init_without_flags_and_without_a_terminal_names_what_is_missing(tmp_path):
    result = his_bridge("init", "--out", str(tmp_path / "etc"))
    assert result.returncode == 2 and "--hospital is required" in result.stderr
    assert not (tmp_path / "etc").exists()


def _ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Platform CA")])
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _issue(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], csr: x509.CertificateSigningRequest, eku) -> bytes:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca[1].subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    )
    for ext in csr.extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    return builder.sign(ca[0], hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


async def test_an_initialised_folder_serves_once_the_platform_files_are_in_place(tmp_path, his):
    out = tmp_path / "etc"
    assert init(out, endpoint=his.base_url).returncode == 0
    ca = _ca()
    server_csr = x509.load_pem_x509_csr((out / "certs" / "server.csr").read_bytes())
    (out / "certs" / "server.crt").write_bytes(_issue(ca, server_csr, ExtendedKeyUsageOID.SERVER_AUTH))
    (out / "certs" / "platform-ca.crt").write_bytes(ca[1].public_bytes(serialization.Encoding.PEM))
    platform_signing = protocol.generate_ed25519("platform")
    (out / "certs" / "platform-signing.pub").write_bytes(platform_signing.public().public_pem())
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "platform-gateway")]))
        .sign(client_key, hashes.SHA256())
    )
    (tmp_path / "client.crt").write_bytes(_issue(ca, client_csr, ExtendedKeyUsageOID.CLIENT_AUTH))
    (tmp_path / "client.key").write_bytes(
        client_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )

    running = await start_agent(load_config(out / "bridge.toml"))
    try:
        client = BridgeClient(
            running.api_url,
            signing_key=platform_signing,
            bridge_key=protocol.load_verify_key("bridge-H042", out / "certs" / "bridge-signing.pub"),
            ssl_context=tls.client_context(
                out / "certs" / "platform-ca.crt", tmp_path / "client.crt", tmp_path / "client.key"
            ),
        )
        async with client:
            answer = await client.call("trade.check", {"trade_no": "T-NONE", "operation": "charge.commit"})
        assert answer.status == "done" and answer.result["found"] is False
    finally:
        await running.stop()


# --- issue 15, item 15: the endpoint as a HIS vendor hands it out ------------------------------------------------


def test_a_full_service_url_is_taken_apart_not_prefixed(tmp_path):
    from bridge.init import InitError, soap_overrides

    service = "http://10.9.9.9:8080/HisService.asmx"
    expected = {
        "soap.base_url": "http://10.9.9.9:8080",
        "soap.endpoint": "/HisService.asmx",
        "soap.wsdl": "/HisService.asmx?wsdl",
    }
    assert soap_overrides(service) == expected
    assert soap_overrides(service + "?wsdl") == expected
    assert soap_overrides(service + "?WSDL")["soap.wsdl"] == "/HisService.asmx?WSDL"
    assert soap_overrides("http://10.9.9.9:8080/his/HisService.asmx/")["soap.endpoint"] == "/his/HisService.asmx"
    assert soap_overrides("http://10.9.9.9:8080/") == {"soap.base_url": "http://10.9.9.9:8080"}
    assert soap_overrides("http://10.9.9.9:8080/hisapp") == {"soap.base_url": "http://10.9.9.9:8080/hisapp"}
    for bad in ("10.9.9.9:8080", "ftp://10.9.9.9/HisService.asmx", "http:///x.asmx"):
        try:
            soap_overrides(bad)
        except InitError as e:
            assert "base URL or its service URL" in str(e)
        else:
            raise AssertionError(bad)


async def test_init_with_the_service_url_reaches_the_his_and_doctor_names_the_address(tmp_path, his):
    from bridge import doctor
    from bridge.config import load_config as load

    out = tmp_path / "etc"
    result = init(out, endpoint=f"{his.base_url}/his/HisService.asmx?wsdl")
    assert result.returncode == 0, result.stderr
    cfg = load(out / "bridge.toml")
    assert cfg.his.overrides == {
        "soap.base_url": his.base_url,
        "soap.endpoint": "/his/HisService.asmx",
        "soap.wsdl": "/his/HisService.asmx?wsdl",
    }
    report = doctor.Report()
    await doctor.check_his(cfg, report, doctor.Thresholds())
    text = report.text()
    assert (
        f"OK    HIS soap at WSDL {his.base_url}/his/HisService.asmx?wsdl, service {his.base_url}/his/HisService.asmx"
        in text
    )
