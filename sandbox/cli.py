"""``his-sandbox``: run the stand-ins a lab lacks. ``his-sandbox his`` serves the sandbox HIS (SOAP)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from aiohttp import web

from sandbox.his.faults import FaultBook
from sandbox.his.soap import ENDPOINT, create_app
from sandbox.his.state import Clock, HisState

log = logging.getLogger("sandbox")


@dataclass
class SandboxHis:
    """A running sandbox HIS; ``state`` and ``faults`` are live handles for tests."""

    runner: web.AppRunner
    state: HisState
    faults: FaultBook
    host: str
    port: int
    _tmpdir: str | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The SOAP endpoint."""
        return self.base_url + ENDPOINT

    @property
    def wsdl_url(self) -> str:
        return self.url + "?wsdl"

    async def close(self) -> None:
        await self.runner.cleanup()
        self.state.close()
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    async def __aenter__(self) -> SandboxHis:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def start_sandbox_his(
    host: str = "127.0.0.1",
    port: int = 0,
    db_path: str | Path | None = None,
    seed: bool = True,
    *,
    clock: Clock | None = None,
    access_log: bool = False,
) -> SandboxHis:
    """Start the sandbox HIS in this event loop; port 0 picks a free port (see ``.port``, ``.url``).

    Without ``db_path`` the state lives in a temporary file removed by ``close()``.
    """
    tmpdir = None
    if db_path is None:
        tmpdir = tempfile.mkdtemp(prefix="sandbox-his-")
        db_path = Path(tmpdir) / "sandbox-his.sqlite3"
    else:
        Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    state = HisState(db_path, clock=clock)
    if seed:
        state.seed()
    faults = FaultBook()
    runner = web.AppRunner(
        create_app(state, faults=faults),
        access_log=logging.getLogger("sandbox.his.access") if access_log else None,
        handle_signals=False,
    )
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        state.close()
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    bound_port = int(runner.addresses[0][1])
    return SandboxHis(runner, state, faults, host, bound_port, tmpdir)


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _serve_his(args: argparse.Namespace) -> int:
    host, port = args.listen
    sandbox = await start_sandbox_his(host, port, args.db, seed=not args.no_seed, access_log=args.verbose)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("state in %s", sandbox.state.db_path)
    print(f"sandbox HIS listening on {sandbox.url}", flush=True)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await sandbox.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="his-sandbox", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    his = commands.add_parser("his", help="serve the sandbox HIS (SOAP, ASMX style)")
    his.add_argument(
        "--listen",
        type=_listen,
        default=("127.0.0.1", 8089),
        metavar="HOST:PORT",
        help="address to listen on; port 0 picks a free port (default 127.0.0.1:8089)",
    )
    his.add_argument(
        "--db",
        type=Path,
        default=None,
        metavar="PATH",
        help="SQLite state file, kept across runs (default: a temporary file removed on exit)",
    )
    his.add_argument("--no-seed", action="store_true", help="do not insert the demo patients, schedules and bills")
    his.add_argument("-v", "--verbose", action="store_true", help="log requests and fault injections to stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if args.command == "his":
        return asyncio.run(_serve_his(args))
    return 2


if __name__ == "__main__":
    sys.exit(main())
