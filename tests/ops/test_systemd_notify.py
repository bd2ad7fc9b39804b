"""The agent under systemd's notify protocol, with a unix datagram socket standing in for systemd: READY=1 after
recovery, WATCHDOG=1 from the running loop, RELOADING=1 then READY=1 on SIGHUP, STOPPING=1 on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.systemd import Notifier, watchdog_interval
from tests.support.rig import bridge_config_toml

pytestmark = pytest.mark.system


class FakeSystemd:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[dict[str, str]] = []

    def next_with(self, key: str, timeout_s: float = 30) -> dict[str, str]:
        """The next message carrying ``key``; the messages before it are kept in ``received``."""
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            message = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.received.append(message)
            if key in message:
                return message
        raise AssertionError(f"no {key} from the agent; got {self.received}")

    def close(self) -> None:
        self.sock.close()


def start_agent(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "serve", "--config", str(config)], env=env, stdout=out, stderr=out
        )


async def heard(fake: FakeSystemd, key: str) -> dict[str, str]:
    return await asyncio.to_thread(fake.next_with, key)


def test_notifier_is_a_no_op_outside_systemd_and_speaks_to_abstract_sockets():
    assert not Notifier.from_env({}).notify("READY=1")
    assert Notifier("@his-bridge-test").address == "\0his-bridge-test"
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None


@pytest.mark.slow
async def test_serve_speaks_the_notify_protocol_through_reload_and_stop(tmp_path, dev_certs, his):
    fake = FakeSystemd(tmp_path / "notify.sock")
    config = tmp_path / "bridge.toml"
    toml = bridge_config_toml(dev_certs, tmp_path / "journal.sqlite3", his.base_url)
    config.write_text(toml.replace('level = "warning"', 'level = "info"'))
    env = {**os.environ, "NOTIFY_SOCKET": str(fake.path), "WATCHDOG_USEC": "200000", "PYTHONUNBUFFERED": "1"}
    env.pop("WATCHDOG_PID", None)
    proc = start_agent(config, env, tmp_path / "agent.log")
    try:
        ready = await heard(fake, "READY")
        assert ready["READY"] == "1" and ready["MAINPID"] == str(proc.pid)
        await heard(fake, "WATCHDOG")
        await heard(fake, "WATCHDOG")

        proc.send_signal(signal.SIGHUP)
        assert (await heard(fake, "RELOADING"))["RELOADING"] == "1"
        assert (await heard(fake, "READY"))["READY"] == "1"
        await heard(fake, "WATCHDOG")

        proc.send_signal(signal.SIGTERM)
        assert (await heard(fake, "STOPPING"))["STOPPING"] == "1"
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        fake.close()
    assert '"reloaded"' in (tmp_path / "agent.log").read_text()
