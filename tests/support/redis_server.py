"""A throwaway ``redis-server`` for the tests: its own temporary directory, a free loopback port, no
persistence, stopped and removed at the end. The binary is required: without it the tests fail with the
command that installs it, since a skipped shared-counter test proves nothing."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.databases import DatabaseUnavailable
from tests.support.rig import free_port

HINT = "run scripts/bootstrap as root (it installs redis-server), or: apt-get install redis-server"


class RedisServer:
    def __init__(self) -> None:
        binary = shutil.which("redis-server") or next(
            (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if Path(p).exists()), None
        )
        if binary is None:
            raise DatabaseUnavailable(f"redis-server not found: {HINT}")
        self.binary = binary
        self.tmpdir = Path(tempfile.mkdtemp(prefix="his-redis-"))
        self.port = free_port()
        self.log = self.tmpdir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.tmpdir),
            "--save", "", "--appendonly", "no", "--protected-mode", "yes", "--logfile", str(self.log),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DatabaseUnavailable(f"redis-server exited ({self.process.returncode}): {self._tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return self
            time.sleep(0.05)
        raise DatabaseUnavailable(f"redis-server did not listen on {self.port}: {self._tail()}")

    def _tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.tmpdir, ignore_errors=True)
