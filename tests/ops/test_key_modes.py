"""Keys are written with their mode at creation (issue 15, item 12): every private key and secret we write is
0600 from the moment it exists, whatever the umask, and nothing chmods a file afterwards — a window in which a
key sits readable by others is the bug."""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
from pathlib import Path

import pytest

from bridge import protocol
from bridge.certs import make_dev_certs
from bridge.init import InitOptions, init
from sandbox.channels import cli as channels_cli
from tests.support.rig import REPO, SANDBOX_PROFILE


@pytest.fixture
def no_umask_no_chmod(monkeypatch):
    """A umask that loosens nothing, so a mode seen is the mode given at creation; and chmod of any regular file
    refused, so a writer that fixes the mode afterwards is caught."""
    real_chmod = os.chmod

    def chmod(path, mode, *args, **kwargs):
        if os.path.isfile(path):
            raise AssertionError(f"chmod after creation: {path}")
        return real_chmod(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "chmod", chmod)
    monkeypatch.setattr(os, "fchmod", lambda *a: (_ for _ in ()).throw(AssertionError("fchmod after creation")))
    old = os.umask(0)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _private_files(folder: Path) -> list[Path]:
    return [
        p
        for p in folder.rglob("*")
        if p.is_file() and (b"PRIVATE KEY" in p.read_bytes()[:200] or p.name in ("apiv3.key", "his.env"))
    ]


def test_write_private_replaces_a_loose_file_with_a_0600_one(tmp_path, no_umask_no_chmod):
    target = tmp_path / "token"
    target.write_text("old")
    assert _mode(target) == 0o666
    protocol.write_private(target, b"new secret\n")
    assert _mode(target) == 0o600 and target.read_bytes() == b"new secret\n"


def test_the_agents_dev_certs_and_init_write_keys_0600(tmp_path, no_umask_no_chmod):
    certs = make_dev_certs(tmp_path / "certs")
    keys = _private_files(certs.dir)
    assert len(keys) >= 4 and all(_mode(k) == 0o600 for k in keys), {k.name: oct(_mode(k)) for k in keys}
    opts = InitOptions(
        hospital="H042",
        protocol="dbproc",
        endpoint="Driver=PostgreSQL Unicode;Server=10.0.0.5;Pwd=secret",
        out=tmp_path / "etc",
        profile=SANDBOX_PROFILE,
        hosts=["localhost"],
    )
    init(opts)
    written = _private_files(opts.out)
    assert {p.name for p in written} >= {"bridge-signing.pem", "server.key", "his.env"}
    assert all(_mode(p) == 0o600 for p in written), {p.name: oct(_mode(p)) for p in written}
    assert _mode(opts.out / "bridge.toml") == 0o600


def test_the_sandbox_channels_write_their_keys_0600(tmp_path, no_umask_no_chmod):
    channels_cli._write_private(tmp_path / "cert.key", b"-----BEGIN PRIVATE KEY-----\n")
    channels_cli._alipay_key(tmp_path)
    keys = _private_files(tmp_path)
    assert len(keys) == 2 and all(_mode(k) == 0o600 for k in keys)


def test_the_demo_writes_its_keys_0600(tmp_path, no_umask_no_chmod):
    spec = importlib.util.spec_from_file_location("demo_gateway_under_test", REPO / "scripts" / "demo_gateway.py")
    assert spec is not None and spec.loader is not None
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        demo = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = demo
        spec.loader.exec_module(demo)
    finally:
        sys.path.remove(str(REPO / "scripts"))
        sys.modules.pop(spec.name, None)
    demo.make_keys(tmp_path)
    keys = _private_files(tmp_path)
    assert len(keys) >= 4 and all(_mode(k) == 0o600 for k in keys), {k.name: oct(_mode(k)) for k in keys}
