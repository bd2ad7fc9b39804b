"""``his-sandbox day``: run a hospital's day with everything going wrong, then check that no money and no record
was lost. Progress goes to stderr; the report, ending with one JSON line, to stdout. Exit status 0 when every
invariant holds, 1 when one does not (the work folder with every log is kept then), 2 when the day could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from bridge import clock
from sandbox.day import report
from sandbox.day.faults import FaultKind
from sandbox.day.plan import Mix, at, build
from sandbox.day.run import run_day
from sandbox.day.stack import DEFAULT_PROFILE, Stack, StackError

T = TypeVar("T")
DEFAULT_DAY = dt.date(2026, 3, 16)
"""A fixed day, so that the same seed prints the same report on any date."""


def _kinds(text: str) -> frozenset[FaultKind]:
    try:
        return frozenset(FaultKind(k.strip()) for k in text.split(",") if k.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"fault kinds are among: {', '.join(k.value for k in FaultKind)}") from None


def _mix(text: str) -> Mix:
    try:
        return Mix.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "day",
        help="run a simulated hospital day with faults through every process, then reconcile and check the books",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--orders", type=int, default=300, help="orders in the day (default 300)")
    p.add_argument("--seed", type=int, default=7, help="the same seed gives the same day, faults and report")
    p.add_argument("--date", type=dt.date.fromisoformat, default=DEFAULT_DAY, help=f"the day (default {DEFAULT_DAY})")
    p.add_argument(
        "--mix", type=_mix, default=Mix(), metavar="NAME=N,…", help=f"order kinds and refunds (default {Mix().text()})"
    )
    p.add_argument(
        "--rate", type=float, default=0.0, help="orders started per real second (default: as fast as it goes)"
    )
    p.add_argument("--concurrency", type=int, default=8, help="patients and apps acting at once (default 8)")
    p.add_argument("--fault-rounds", type=int, default=None, help="every fault kind this many times (default 1/300)")
    p.add_argument("--faults", type=_kinds, default=None, metavar="KIND,…", help="only these fault kinds")
    p.add_argument("--postgres", action="store_true", help="two gateway instances sharing a throwaway PostgreSQL")
    p.add_argument("--work", type=Path, default=None, help="where certificates, configs, databases and logs go")
    p.add_argument("--keep", action="store_true", help="keep the work folder even when every check passes")
    p.add_argument("--profile", type=Path, default=DEFAULT_PROFILE, help="the bridge's HIS profile for the sandbox")
    p.set_defaults(func=main)


async def _until_stopped(day: Coroutine[Any, Any, T]) -> T:
    """Run the day; SIGTERM or SIGINT cancels it, and the stack is still stopped on the way out."""
    task = asyncio.ensure_future(day)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def main(args: argparse.Namespace) -> int:
    if args.orders < 1 or args.concurrency < 1:
        print("his-sandbox day: --orders and --concurrency are at least 1", file=sys.stderr)
        return 2
    plan = build(args.seed, args.orders, args.mix, args.date, fault_rounds=args.fault_rounds, kinds=args.faults)
    work = (args.work or Path(tempfile.mkdtemp(prefix="his-day-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    clock_file = clock.ClockFile(work / "clock")
    clock_file.start_at(at(plan.day, 7))
    clock.use_file(clock_file.path)
    stack = Stack(work, profile=args.profile.resolve(), postgres=args.postgres)
    started = time.monotonic()
    try:
        outcome = asyncio.run(
            _until_stopped(run_day(plan, stack, clock_file, concurrency=args.concurrency, rate=args.rate))
        )
    except StackError as exc:
        print(f"his-sandbox day: {exc}\n(work folder kept: {work})", file=sys.stderr)
        return 2
    except asyncio.CancelledError:
        print(f"his-sandbox day: stopped (work folder kept: {work})", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        print(f"his-sandbox day: the day broke down (work folder kept: {work})", file=sys.stderr)
        return 2
    finally:
        clock.use_file(None)
    elapsed = time.monotonic() - started
    print(report.render(plan, outcome.verdict, outcome.activity), flush=True)
    ok = outcome.verdict.ok
    print(f"took {elapsed:.0f} s for {len(plan.orders)} orders", file=sys.stderr)
    if ok and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work folder with every log: {work}", file=sys.stderr)
    return 0 if ok else 1
