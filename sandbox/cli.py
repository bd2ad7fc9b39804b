"""``his-sandbox``: run the stand-ins a lab lacks. ``his-sandbox his`` serves the sandbox HIS (SOAP, and HL7 over
MLLP with ``--mllp-listen``); ``his-sandbox sql install`` puts it into PostgreSQL or MariaDB as stored procedures;
``his-sandbox channels`` serves sandbox WeChat Pay v3, Alipay and UnionPay channels; ``his-sandbox kiosk`` plays a
kiosk and a cashier window paying and refunding through the agent's intranet listener; ``his-sandbox day`` runs a
simulated hospital day with faults through all of them, the bridge and the gateway, and checks the books."""

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

from sandbox import kiosk
from sandbox.channels import cli as channels_cli
from sandbox.day import cli as day_cli
from sandbox.his.faults import FaultBook
from sandbox.his.mllp import MllpListener
from sandbox.his.quyi import QUYI_ENDPOINT, setup_quyi
from sandbox.his.soap import ENDPOINT, create_app
from sandbox.his.sql_install import DIALECTS, install_odbc
from sandbox.his.state import Clock, HisState, OutdatedDatabase

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
    mllp: MllpListener | None = None
    """The HL7 v2 listener over the same state and fault book, when started with ``mllp``."""

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

    @property
    def quyi_url(self) -> str:
        """The quyi-compatible endpoint, served when started with ``quyi_wsdl``."""
        return self.base_url + QUYI_ENDPOINT

    @property
    def mllp_address(self) -> tuple[str, int]:
        if self.mllp is None:
            raise RuntimeError("the sandbox was started without an MLLP listener")
        return self.mllp.address

    async def close(self) -> None:
        if self.mllp is not None:
            await self.mllp.close()
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
    quyi_wsdl: str | Path | None = None,
    mllp: tuple[str, int] | None = None,
    mllp_encoding: str = "GB18030",
) -> SandboxHis:
    """Start the sandbox HIS in this event loop; port 0 picks a free port (see ``.port``, ``.url``).

    Without ``db_path`` the state lives in a temporary file removed by ``close()``. ``quyi_wsdl``, the path of
    the real quyiServiceNo WSDL, also serves the quyi-compatible service (``.quyi_url``) over the same state.
    ``mllp=(host, port)`` also serves HL7 v2 over MLLP (``.mllp``; port 0 picks one) over the same state and fault
    book, decoding messages without MSH-18 as ``mllp_encoding``.
    """
    quyi = await asyncio.to_thread(Path(quyi_wsdl).read_bytes) if quyi_wsdl is not None else None
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
    app = create_app(state, faults=faults)
    if quyi is not None:
        setup_quyi(app, quyi)
    runner = web.AppRunner(
        app,
        access_log=logging.getLogger("sandbox.his.access") if access_log else None,
        handle_signals=False,
    )
    listener = MllpListener(state, faults, default_encoding=mllp_encoding) if mllp is not None else None
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        if listener is not None and mllp is not None:
            await listener.start(*mllp)
    except BaseException:
        if listener is not None:
            await listener.close()
        await runner.cleanup()
        state.close()
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    bound_port = int(runner.addresses[0][1])
    return SandboxHis(runner, state, faults, host, bound_port, tmpdir, mllp=listener)


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _serve_his(args: argparse.Namespace) -> int:
    host, port = args.listen
    try:
        sandbox = await start_sandbox_his(
            host,
            port,
            args.db,
            seed=not args.no_seed,
            access_log=args.verbose,
            quyi_wsdl=args.quyi_wsdl,
            mllp=args.mllp_listen,
        )
    except OutdatedDatabase as exc:
        print(f"his-sandbox his: {exc}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("state in %s", sandbox.state.db_path)
    print(f"sandbox HIS listening on {sandbox.url}", flush=True)
    if args.quyi_wsdl is not None:
        print(f"quyi service listening on {sandbox.quyi_url}", flush=True)
    if sandbox.mllp is not None:
        print(f"HL7 MLLP listening on {sandbox.mllp.url}", flush=True)
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
    his.add_argument(
        "--quyi-wsdl",
        type=Path,
        default=None,
        metavar="PATH",
        help="also serve the quyiServiceNo-compatible service from this WSDL file (docs/SANDBOX_HIS.md)",
    )
    his.add_argument(
        "--mllp-listen",
        type=_listen,
        default=None,
        metavar="HOST:PORT",
        help="also serve HL7 v2 over MLLP on this address, over the same state; port 0 picks a free port",
    )
    his.add_argument("--no-seed", action="store_true", help="do not insert the demo patients, schedules and bills")
    his.add_argument("-v", "--verbose", action="store_true", help="log requests and fault injections to stderr")
    channels_cli.add_parser(commands, _listen)
    kiosk.add_parser(commands)
    day_cli.add_parser(commands)
    sql = commands.add_parser("sql", help="the sandbox HIS as stored procedures in PostgreSQL or MariaDB")
    sql_commands = sql.add_subparsers(dest="sql_command", required=True, metavar="SQL_COMMAND")
    install = sql_commands.add_parser(
        "install", help="create the schema, seed and procedures over ODBC (drops an earlier install: a fresh HIS)"
    )
    install.add_argument("--dialect", required=True, choices=DIALECTS)
    install.add_argument(
        "--odbc",
        required=True,
        metavar="CONNECTION",
        help='ODBC connection string, e.g. "Driver={PostgreSQL Unicode};Server=127.0.0.1;Port=5432;Database=his;'
        'Uid=his_bridge;Pwd=..." (the objects are owned by this user)',
    )
    return parser


def _install_sql(args: argparse.Namespace) -> int:
    try:
        count = install_odbc(args.odbc, args.dialect)
    except Exception as exc:
        print(f"his-sandbox sql install: {exc}", file=sys.stderr)
        return 1
    print(f"sandbox HIS installed into {args.dialect}: {count} statements")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if args.command == "his":
        return asyncio.run(_serve_his(args))
    if args.command == "channels":
        return asyncio.run(channels_cli.serve(args))
    if args.command == "kiosk":
        return asyncio.run(kiosk.serve(args))
    if args.command == "sql":
        return _install_sql(args)
    if args.command == "day":
        return int(day_cli.main(args))
    return 2


if __name__ == "__main__":
    sys.exit(main())
