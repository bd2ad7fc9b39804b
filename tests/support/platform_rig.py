"""Gateway instances as the platform runs them: ``his-gateway serve`` processes on one database, and the
``his-gateway`` command line beside them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.support.rig import free_port


def gateway_toml(directory: Path, *, port: int, db_url: str, signing_key: Path, extra: str = "") -> Path:
    """A config with no tenants in it (they live in the database) and the settings ``extra`` adds."""
    path = directory / f"gateway-{port}.toml"
    path.write_text(
        f"""
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
[database]
url = "{db_url}"
pool_size = 5
[signing]
key = "{signing_key}"
[logging]
level = "info"
[tenants]
poll_s = 0.5
close_grace_s = 1
{extra}
"""
    )
    return path


@dataclass
class GatewayProcess:
    config: Path
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GatewayProcess:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "-c", str(self.config), "serve"],
                stdout=out,
                stderr=out,
                env={**os.environ, **self.env},
            )
        return self

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    async def ready(self, timeout_s: float = 60) -> None:
        assert self.process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        async with aiohttp.ClientSession() as session:
            while loop.time() < deadline:
                assert self.process.poll() is None, f"the gateway exited: {self.tail()}"
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{self.url}/healthz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise AssertionError(f"the gateway at {self.url} did not come up: {self.tail()}")

    def kill(self) -> None:
        """SIGKILL: the instance dies mid-whatever, as a crashed host would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()


def spawn_gateways(
    directory: Path, count: int, *, db_url: str, signing_key: Path, extra: str = "", env: dict[str, str] | None = None
) -> list[GatewayProcess]:
    out = []
    for _ in range(count):
        port = free_port()
        config = gateway_toml(directory, port=port, db_url=db_url, signing_key=signing_key, extra=extra)
        out.append(GatewayProcess(config, port, directory / f"gateway-{port}.log", env=env or {}).start())
    return out


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    def ok(self) -> CliResult:
        assert self.code == 0, f"his-gateway failed ({self.code}): {self.err or self.out}"
        return self


async def cli(config: Path, *args: str, env: dict[str, str] | None = None, check: bool = True) -> CliResult:
    """Run ``his-gateway -c CONFIG ARGS…`` without blocking the test's event loop; with ``check``, a failure
    fails the test with the command's message."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "-c", str(config), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    result = CliResult(int(proc.returncode or 0), out.decode(), err.decode())
    return result.ok() if check else result
