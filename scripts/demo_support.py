"""What both halves of the demo share: numbered sections, the processes it runs and stops, bounded waits.

Every process the demo starts is a real one, as an implementer would run it, logging to ``{work}/{name}.log``;
``Processes.stop`` ends them all however the demo ends.
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

from bridge import protocol, tls
from bridge.certs import DevCerts
from bridge.client import BridgeClient

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEADLINE_S = 30.0

T = TypeVar("T")
_section = 0


def step(title: str) -> None:
    global _section
    _section += 1
    print(f"\n== {_section}. {title}", flush=True)


def say(line: str) -> None:
    print("   " + line, flush=True)


def yuan(fen: int) -> str:
    return f"{fen / 100:.2f}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shown(path: Path) -> str:
    return str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)


@dataclass
class Processes:
    """Every process the demo started, each logging to ``{work}/{name}.log``; ``stop`` ends them in reverse
    order (SIGTERM, then SIGKILL after a grace period) however the demo ends."""

    work: Path
    running: list[tuple[str, subprocess.Popen[bytes], IO[str]]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], *, read_stdout: bool = False) -> subprocess.Popen[bytes]:
        log = (self.work / f"{name}.log").open("w")
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE if read_stdout else subprocess.DEVNULL, stderr=log)
        except BaseException:
            log.close()
            raise
        self.running.append((name, proc, log))
        return proc

    def log(self, name: str) -> str:
        return shown(self.work / f"{name}.log")

    def check(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode}; see {self.log(name)}")

    def announcements(self, name: str, proc: subprocess.Popen[bytes], *patterns: str) -> list[str]:
        """What the process announces on stdout once it listens (its URLs): the first group of the first line
        matching each pattern, waited for within ``DEADLINE_S``."""
        assert proc.stdout is not None
        deadline = time.monotonic() + DEADLINE_S
        found: dict[str, str] = {}
        output = b""
        while True:
            for line in output.decode(errors="replace").splitlines():
                for pattern in patterns:
                    if pattern not in found and (match := re.search(pattern, line)):
                        found[pattern] = match.group(1)
            if len(found) == len(patterns):
                return [found[p] for p in patterns]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SystemExit(f"{name} did not start within {DEADLINE_S:.0f} s; see {self.log(name)}")
            if select.select([proc.stdout], [], [], remaining)[0]:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    self.check(name, proc)
                    raise SystemExit(f"{name} closed its output before it announced itself; see {self.log(name)}")
                output += chunk

    def stop(self, grace_s: float = 10.0) -> None:
        for _, proc, _ in reversed(self.running):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc, log in reversed(self.running):
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            log.close()

    def logs(self) -> str:
        return ", ".join(self.log(name) for name, _, _ in self.running)


async def until(fetch: Callable[[], Awaitable[T]], done: Callable[[T], bool], what: str) -> T:
    """Poll ``fetch`` until ``done`` holds, within ``DEADLINE_S``: the demo waits on conditions, never on luck."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while True:
        value = await fetch()
        if done(value):
            return value
        if loop.time() > deadline:
            raise SystemExit(f"timed out after {DEADLINE_S:.0f} s waiting for {what}; last seen: {value}")
        await asyncio.sleep(0.1)


def bridge_client(certs: DevCerts, api_url: str) -> BridgeClient:
    return BridgeClient(
        api_url,
        signing_key=protocol.load_signing_key("platform", certs.platform_signing_key),
        bridge_key=protocol.load_verify_key("bridge-H001", certs.bridge_signing_pub),
        ssl_context=tls.client_context(certs.ca_cert, certs.client_cert, certs.client_key),
    )
