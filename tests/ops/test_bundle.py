"""The offline install bundle, end to end: build it, install it into a fresh venv with the network cut (a new
network namespace where ``unshare`` allows it, and pip's ``--no-index`` with no pip config in any case), start
the agent from that venv against the sandbox HIS and get an answer. Also the systemd unit, verified as systemd
would read it."""

from __future__ import annotations

import asyncio
import configparser
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.support.rig import REPO, bridge_config_toml, free_port, make_client, prepay, wait_ready

pytestmark = [pytest.mark.system, pytest.mark.slow]

UNIT = REPO / "config" / "systemd" / "his-bridge.service"


def base_python() -> str:
    """The interpreter the test venv was made from: a bundle's venv is built from a plain Python."""
    return getattr(sys, "_base_executable", sys.executable)


def offline(cmd: list[str]) -> list[str]:
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n", *cmd]
    return cmd


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("bundle")
    built = subprocess.run(
        [str(REPO / "scripts" / "make-bundle"), "--out", str(work / "dist")], capture_output=True, text=True
    )
    assert built.returncode == 0, built.stderr[-3000:]
    archive = Path(built.stdout.strip().splitlines()[-1])
    assert archive.name.startswith("his-bridge-") and archive.suffixes[-2:] == [".tar", ".gz"]
    with tarfile.open(archive) as tar:
        tar.extractall(work / "unpacked", filter="data")
    [bundle] = (work / "unpacked").iterdir()
    assert {p.name for p in bundle.iterdir()} >= {"install.sh", "wheels", "his-bridge.service", "profiles"}

    prefix = work / "opt"
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1"}
    env.pop("PIP_FIND_LINKS", None)
    env.pop("PIP_INDEX_URL", None)
    cmd = ["sh", str(bundle / "install.sh"), "--prefix", str(prefix), "--no-system", "--python", base_python()]
    result = subprocess.run(offline(cmd), capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    again = subprocess.run(offline(cmd), capture_output=True, text=True, env=env)
    assert again.returncode == 2 and "exists" in again.stderr
    return prefix


async def test_bundle_installs_offline_and_the_installed_agent_answers(installed, tmp_path, dev_certs, his):
    agent_bin = installed / "current" / "bin" / "his-bridge"
    assert agent_bin.exists()

    api_port, ops_port = free_port(), free_port()
    config = tmp_path / "bridge.toml"
    config.write_text(
        bridge_config_toml(
            dev_certs,
            tmp_path / "journal.sqlite3",
            his.base_url,
            listen=f"127.0.0.1:{api_port}",
            ops_listen=f"127.0.0.1:{ops_port}",
        )
    )
    proc = start(agent_bin, config, tmp_path / "agent.log")
    try:
        await wait_ready(f"http://127.0.0.1:{ops_port}", proc)
        async with make_client(dev_certs, f"https://127.0.0.1:{api_port}") as client:
            answer = await client.call("prepay.commit", prepay("T-BUNDLE"))
        assert answer.status == "done", answer.body
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert his.state.application_count(trade_no="T-BUNDLE") == 1


def start(agent_bin: Path, config: Path, log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        return subprocess.Popen(
            [str(agent_bin), "serve", "--config", str(config)], stdout=out, stderr=out, env=env, cwd=config.parent
        )


def test_the_installed_venv_runs_its_own_copy(installed, tmp_path):
    venv_python = installed / "current" / "bin" / "python"
    code = "import bridge; print(bridge.__file__)"
    where = subprocess.run([venv_python, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert where.stdout.startswith(str(installed)), "the installed agent must not run from the working tree"
    shared = installed / "current" / "share" / "his-bridge"
    assert (shared / "profiles" / "sandbox-soap.toml").exists() and (shared / "bridge.example.toml").exists()


def test_installed_unit_points_at_the_prefix_and_verifies(installed):
    unit = installed / "current" / "share" / "his-bridge" / "his-bridge.service"
    text = unit.read_text()
    assert f"ExecStart={installed}/current/bin/his-bridge serve" in text and "/opt/his-bridge" not in text
    analyze = shutil.which("systemd-analyze")
    if analyze:
        result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_unit_is_hardened_and_speaks_notify():
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read_string(UNIT.read_text())
    service = parser["Service"]
    expected = {
        "Type": "notify",
        "User": "his-bridge",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/his-bridge",
        "NoNewPrivileges": "yes",
        "Restart": "on-failure",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "KillSignal": "SIGTERM",
    }
    assert {k: service.get(k) for k in expected} == expected
    assert int(service["WatchdogSec"]) >= 10
    assert int(service["TimeoutStopSec"]) > 15, "must outlast the default HIS timeout so calls in flight finish"
    assert parser["Install"]["WantedBy"] == "multi-user.target"
