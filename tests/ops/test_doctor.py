"""``his-bridge doctor`` against a healthy agent (every line OK) and against each broken setup, with the FAIL
line that names it: an expired certificate, the HIS down, the clock skewed against the platform, the journal's
disk nearly full. The platform's clock is a local HTTP server whose Date header the test sets."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from tests.support.rig import bridge_config_toml, free_port
from tests.support.smalldisk import fill, small_filesystem

pytestmark = pytest.mark.system

THRESHOLDS = ("--disk-warn-mb", "2", "--disk-fail-mb", "1")


class PlatformClock:
    """Stands in for the platform: answers any request with a Date header ``offset_s`` from ours."""

    def __init__(self) -> None:
        self.offset_s = 0.0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        async def handler(_request: web.Request) -> web.Response:
            date = email.utils.formatdate(time.time() + self.offset_s, usegmt=True)
            return web.Response(text="ok", headers={"Date": date})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/"

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def platform():
    clock = PlatformClock()
    await clock.start()
    yield clock
    await clock.close()


@pytest.fixture
async def setup(tmp_path, bridge_factory, dev_certs, his):
    """A running agent with its journal on a 16 MiB filesystem of its own; yields its config file."""
    with small_filesystem(tmp_path / "disk", 16 * 1024) as disk:
        ops = f"127.0.0.1:{free_port()}"
        await bridge_factory(journal=disk / "journal.sqlite3", ops_listen=ops)
        config = tmp_path / "doctor.toml"
        config.write_text(bridge_config_toml(dev_certs, disk / "journal.sqlite3", his.base_url, ops_listen=ops))
        yield config


async def doctor(config: Path, platform_url: str, *extra: str) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "bridge.cli", "doctor", "--config", str(config), "--platform-url", platform_url]
    result = await asyncio.to_thread(subprocess.run, [*cmd, *THRESHOLDS, *extra], capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr


def fail_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("FAIL")]


async def test_healthy_setup_is_all_ok(setup, platform):
    code, out = await doctor(setup, platform.url)
    assert code == 0, out
    lines = out.splitlines()
    assert all(line.startswith("OK") for line in lines[:-1]), out
    for topic in ("config", "profile", "signing keys", "server certificate", "platform CA", "HIS", "clock"):
        assert any(topic in line for line in lines), (topic, out)
    for topic in ("journal disk", "fsync", "journal backlog", "in doubt", "quarantined", "agent: ready"):
        assert any(topic in line for line in lines), (topic, out)
    assert lines[-1].startswith("doctor: 0 FAIL, 0 WARN")


def _expired_copy(cert: Path, key: Path, out: Path) -> Path:
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "his-bridge-H001")])
    now = dt.datetime.now(dt.UTC)
    expired = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=400))
        .not_valid_after(now - dt.timedelta(days=3))
        .sign(private, hashes.SHA256())
    )
    out.write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    return out


async def test_expired_certificate_fails(setup, platform, dev_certs, tmp_path):
    expired = _expired_copy(dev_certs.server_cert, dev_certs.server_key, tmp_path / "expired.crt")
    config = tmp_path / "bad-cert.toml"
    config.write_text(setup.read_text().replace(str(dev_certs.server_cert), str(expired)))
    code, out = await doctor(config, platform.url)
    assert code == 2, out
    assert fail_lines(out) == [f"FAIL  server certificate {expired}: expired 3 days ago"], out
    assert "fix: `his-bridge csr --config" in out


async def test_his_down_fails(setup, platform, his, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    config = tmp_path / "his-down.toml"
    config.write_text(setup.read_text().replace(his.base_url, dead))
    code, out = await doctor(config, platform.url, "--his-timeout", "5")
    assert code == 2, out
    [line] = fail_lines(out)
    tried = f"FAIL  HIS soap at WSDL {dead}/his/HisService.asmx?wsdl, service {dead}/his/HisService.asmx: "
    assert line.startswith(tried) and "unreachable" in line, out
    assert "fix: check the HIS is up" in out


async def test_skewed_clock_fails(setup, platform):
    platform.offset_s = -600  # the platform is ten minutes behind us
    code, out = await doctor(setup, platform.url)
    assert code == 2, out
    [line] = fail_lines(out)
    assert line.startswith("FAIL  clock 60") and "ahead of the platform" in line and "300 s" in line, out
    assert "synchronise this host's clock" in out

    platform.offset_s = -30
    code, out = await doctor(setup, platform.url)
    assert code == 1 and "WARN  clock" in out and not fail_lines(out), out


async def test_disk_nearly_full_fails(setup, platform, tmp_path):
    disk = tmp_path / "disk"
    fill(disk, leave_bytes=512 * 1024)
    code, out = await doctor(setup, platform.url)
    assert code == 2, out
    [line] = fail_lines(out)
    assert line.startswith(f"FAIL  journal disk {disk}:") and "MiB free (below 1 MiB)" in line, out
