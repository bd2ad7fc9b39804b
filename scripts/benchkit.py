"""What every benchmark script needs around its measurements: child processes that never outlive it, the
addresses they announce, and a description of the machine the figures come from."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import platform
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 30.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def python_path() -> str:
    """The repo first, then any PYTHONPATH the caller set (to try a package without touching the venv)."""
    return os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)


def _die_with_parent() -> None:
    """Runs in the child before exec: Linux sends it SIGTERM if the benchmark itself is killed."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Children:
    """Every subprocess and database server a benchmark starts, stopped on any exit path (atexit too)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.servers: list[Any] = []
        atexit.register(self.stop_all)

    def start(self, argv: Sequence[str], log_file: Path, *, stdout_pipe: bool = False) -> subprocess.Popen[bytes]:
        with log_file.open("ab") as out:
            proc = subprocess.Popen(
                list(argv),
                cwd=REPO,
                stdout=subprocess.PIPE if stdout_pipe else out,
                stderr=out,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": python_path()},
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        self.procs.append(proc)
        return proc

    def postgres(self) -> Any:
        """A throwaway PostgreSQL cluster (tests/support/databases.py), registered before it starts."""
        from tests.support.databases import PostgresServer

        server = PostgresServer()
        self.servers.append(server)
        return server.start()

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], timeout_s: float = 15) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout_s)
        if proc.stdout is not None:
            proc.stdout.close()

    def stop_all(self) -> None:
        while self.procs:
            self.stop(self.procs.pop())
        while self.servers:
            self.servers.pop().stop()


def read_announcements(
    proc: subprocess.Popen[bytes], markers: Sequence[str], timeout_s: float = STARTUP_TIMEOUT_S
) -> dict[str, str]:
    """The address each marker line announces (its last word), once the child has printed them all."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()  # raw reads: a buffered readline would hide a second line from select()
    found: dict[str, str] = {}
    pending = b""
    deadline = time.monotonic() + timeout_s
    while len(found) < len(markers) and (left := deadline - time.monotonic()) > 0:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode} before listening")
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            pending += os.read(fd, 4096)
            *lines, pending = pending.split(b"\n")
            for line in (raw.decode(errors="replace") for raw in lines):
                found.update({m: line.split()[-1] for m in markers if m in line})
    if len(found) < len(markers):
        raise RuntimeError(f"{proc.args[:4]} did not announce {list(markers)} within {timeout_s} s")
    return found


def machine(packages: Sequence[str] = ()) -> dict[str, Any]:
    """The machine and the versions the figures belong to; the load average says how busy the box was."""
    model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    if packages:
        versions = {}
        for package in packages:
            with contextlib.suppress(PackageNotFoundError):
                versions[package] = version(package)
        info["packages"] = versions
    return info


def run_in_workdir(
    prefix: str, keep: bool, run: Callable[[Children, Path], Awaitable[dict[str, Any]]], root: Path
) -> int:
    """Run a benchmark in a fresh work directory with its children, clean up on every exit path (SIGTERM and
    SIGINT included, also when started in the background), and print the figures as the last line."""

    def interrupted(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    root.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    children = Children()
    try:
        result = asyncio.run(run(children, workdir))
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except Exception:
        log(f"benchmark failed; logs are kept in {workdir}")
        keep = True
        raise
    finally:
        children.stop_all()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if keep:
        log(f"work directory kept: {workdir}")
    print(json.dumps(result, ensure_ascii=False, separators=(",", ":")), flush=True)
    return 0
