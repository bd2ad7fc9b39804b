"""Benchmark of the adapters: what the profile layer costs per call compared with the bare library.

Each adapter makes the same catalog call, ``patient.query`` for card C0001, in two ways against the same
sandbox:

- **ours**: ``Adapter.call("patient.query", params)``, built from the shipped profile, so the template render,
  the protocol checks and the reply mapping are all included;
- **bare**: the library the adapter wraps, doing the equivalent work by hand: build the request, send it,
  parse the reply, read the same fields into the same dict. The request is pre-built except for what must be
  fresh (the HL7 control id).

    soap     SoapAdapter               vs zeep.AsyncClient + AsyncTransport, QueryPatient(inXml=...), lxml
    hl7      Hl7Adapter (MLLP, GB18030) vs hl7.mllp.open_hl7_connection (one kept-alive connection), hl7.parse
    dbproc   DbprocAdapter (PostgreSQL) vs pyodbc, one connection: execute, drain, commit

Calls are sequential (concurrency 1), so the ratio is the per-call cost. After a warm-up, the two sides run in
interleaved rounds, and the side that goes first alternates. Background load on a shared machine then hits
both sides alike. The sandbox HIS runs as a subprocess, and the stored procedures run in a throwaway
PostgreSQL cluster that the script starts and removes. Before timing, the script checks that both sides
return the same dict. It prints a table, then one JSON object as its last line.

    .venv/bin/python scripts/bench_adapters.py            # full run (about 40 s)
    .venv/bin/python scripts/bench_adapters.py --quick    # smoke run (about 5 s)

This is a benchmark, not a test: it reports figures and never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import math
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parents[1]
if str(REPO) not in sys.path:  # run as a file from anywhere: import the repo's packages
    sys.path.insert(0, str(REPO))

from benchkit import Children, log, machine, read_announcements, run_in_workdir  # noqa: E402

from adapters.base import Adapter  # noqa: E402
from adapters.profile import load_profile  # noqa: E402
from bridge import catalog  # noqa: E402

PROFILES = REPO / "config" / "profiles"
SOAP_PROFILE = PROFILES / "sandbox-soap.toml"
HL7_PROFILE = PROFILES / "hl7-v24-gb18030.toml"
DBPROC_PROFILE = PROFILES / "dbproc-postgresql.toml"
BENCH_ROOT = REPO / "var" / "bench"  # same filesystem as the repo, and git-ignored
OPERATION = "patient.query"
CARD_NO = "C0001"
ADAPTERS = ("soap", "hl7", "dbproc")
AIM_RATIO = 1.2


@dataclass(frozen=True)
class Counts:
    warmup: int
    rounds: int
    calls: int


FULL = Counts(warmup=300, rounds=20, calls=200)
QUICK = Counts(warmup=30, rounds=4, calls=50)

# The bare sides' requests, written out once as the profiles render them for card C0001.
SOAP_INNER = f"<Request><CardNo>{CARD_NO}</CardNo><IdCardNo></IdCardNo><Phone></Phone></Request>"
HL7_QUERY = (
    "MSH|^~\\&|HISBRIDGE|PAY|HIS|HOSPITAL|{timestamp}||QBP^Q11^QBP_Q11|{control_id}|P|2.4|||||CHN|GB 18030-2000\r"
    f"QPD|ZPQ^PatientQuery|{{control_id}}|{CARD_NO}||\r"
    "RCP|I\r"
)
PG_QUERY = "SELECT * FROM his_patient_query(?, ?, ?)"


def query_params() -> dict[str, Any]:
    """The input exactly as the bridge hands it to an adapter: validated, then dumped to JSON."""
    return catalog.OPERATIONS[OPERATION].input.model_validate({"card_no": CARD_NO}).model_dump(mode="json")


def iso_date(text: str, fmt: str) -> str:
    return dt.datetime.strptime(text, fmt).date().isoformat()


# --- subprocesses and the database ---------------------------------------------------------------------------


def load_adapter(path: Path, overrides: dict[str, Any]) -> Adapter:
    profile = load_profile(
        path, catalog.OPERATIONS, read_operations=catalog.READ_OPERATIONS, overrides=overrides, environ={}
    )
    return profile.build_adapter()


# --- measurement ---------------------------------------------------------------------------------------------

Call = Callable[[], Awaitable[dict[str, Any]]]


@dataclass
class Side:
    """One way of making the call, and every figure taken from it."""

    name: str
    call: Call
    latencies_ns: list[int] = field(default_factory=list, repr=False)
    round_mean_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    client_cpu_s: float = 0.0
    his_cpu_s: float = 0.0

    @property
    def calls(self) -> int:
        return len(self.latencies_ns)

    def pct_ms(self, q: float) -> float:
        """Nearest-rank percentile."""
        ordered = sorted(self.latencies_ns)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] / 1e6

    @property
    def mean_ms(self) -> float:
        return sum(self.latencies_ns) / len(self.latencies_ns) / 1e6

    def summary(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "calls_per_s": round(self.calls / self.wall_s, 1),
            "mean_ms": round(self.mean_ms, 4),
            "p50_ms": round(self.pct_ms(0.50), 4),
            "p99_ms": round(self.pct_ms(0.99), 4),
            "client_cpu_ms_per_call": round(self.client_cpu_s * 1000 / self.calls, 4),
            "his_cpu_ms_per_call": round(self.his_cpu_s * 1000 / self.calls, 4) if self.his_cpu_s else None,
            "round_mean_ms": [round(x, 4) for x in self.round_mean_ms],
        }


def cpu_seconds(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    times = proc.cpu_times()
    return times.user + times.system


async def run_round(side: Side, n: int, his: psutil.Process | None) -> None:
    """``n`` calls one after another; only the call itself is inside the timed span."""
    gc.collect()
    latencies: list[int] = []
    clock = time.perf_counter_ns
    his_before, cpu_before, start = cpu_seconds(his), time.process_time(), clock()
    for _ in range(n):
        t0 = clock()
        await side.call()
        latencies.append(clock() - t0)
    side.wall_s += (clock() - start) / 1e9
    side.client_cpu_s += time.process_time() - cpu_before
    side.his_cpu_s += cpu_seconds(his) - his_before
    side.latencies_ns += latencies
    side.round_mean_ms.append(sum(latencies) / n / 1e6)


async def compare(name: str, sides: list[Side], counts: Counts, his: psutil.Process | None) -> dict[str, Any]:
    """Check that every side answers alike, warm them up, then time them in interleaved rounds."""
    answers = [await side.call() for side in sides]
    for side, answer in zip(sides[1:], answers[1:], strict=True):
        if answer != answers[0]:
            raise RuntimeError(f"{name}: {side.name} answers {answer}, {sides[0].name} answers {answers[0]}")
    log(f"{name}: both sides answer {answers[0]}")
    for side in sides:
        for _ in range(counts.warmup):
            await side.call()
    for r in range(counts.rounds):
        order = sides if r % 2 == 0 else sides[::-1]  # whoever went first goes last next time
        for side in order:
            await run_round(side, counts.calls, his)
    ours, bare = sides[0], sides[1]
    round_ratios = [o / b for o, b in zip(ours.round_mean_ms, bare.round_mean_ms, strict=True)]
    result = {
        "ratio": round(ours.mean_ms / bare.mean_ms, 3),
        "median_round_ratio": round(statistics.median(round_ratios), 3),
        "round_ratios": [round(x, 3) for x in round_ratios],
        "p50_ratio": round(ours.pct_ms(0.5) / bare.pct_ms(0.5), 3),
        "added_ms_per_call": round(ours.mean_ms - bare.mean_ms, 4),
        # CPU time per call in this process: steadier than wall time when the VM's scheduling is noisy
        "client_cpu_ratio": round(ours.client_cpu_s / bare.client_cpu_s, 3),
        "sides": {side.name: side.summary() for side in sides},
    }
    log(f"{name}: ratio {result['ratio']} (median of rounds {result['median_round_ratio']})")
    return result


# --- the three adapters ---------------------------------------------------------------------------------------


async def bench_soap(base_url: str, counts: Counts, his: psutil.Process) -> dict[str, Any]:
    import zeep
    from lxml import etree
    from zeep.proxy import AsyncServiceProxy
    from zeep.transports import AsyncTransport

    params = query_params()
    adapter = load_adapter(SOAP_PROFILE, {"soap.base_url": base_url})
    await adapter.start()
    transport = AsyncTransport(client=httpx.AsyncClient(), wsdl_client=httpx.Client())
    try:
        client = zeep.AsyncClient(f"{base_url}/his/HisService.asmx?wsdl", transport=transport)
        binding = client.wsdl.bindings["{http://tempuri.org/}HisServiceSoap"]
        service = AsyncServiceProxy(client, binding, address=f"{base_url}/his/HisService.asmx")
        parser = etree.XMLParser(resolve_entities=False, no_network=True)

        async def ours() -> dict[str, Any]:
            return await adapter.call(OPERATION, params)

        async def bare() -> dict[str, Any]:
            text = await service.QueryPatient(inXml=SOAP_INNER)
            root = etree.fromstring(text.encode("utf-8"), parser)
            if root.findtext("ResultCode") != "0":
                raise RuntimeError(f"QueryPatient failed: {text}")
            patient = root.find("Patient")
            assert patient is not None
            return {
                "found": True,
                "patient_id": patient.findtext("PatientId"),
                "name": patient.findtext("Name"),
                "gender": patient.findtext("Gender"),
                "birth_date": iso_date(patient.findtext("BirthDate") or "", "%Y-%m-%d"),
                "card_no": patient.findtext("CardNo"),
                "phone": patient.findtext("Phone"),
            }

        return await compare("soap", [Side("ours", ours), Side("bare", bare)], counts, his)
    finally:
        await adapter.close()
        transport.wsdl_client.close()
        await transport.aclose()


async def bench_hl7(host: str, port: int, counts: Counts, his: psutil.Process) -> dict[str, Any]:
    import hl7
    import hl7.mllp

    params = query_params()
    adapter = load_adapter(HL7_PROFILE, {"hl7.host": host, "hl7.port": port})
    reader, writer = await hl7.mllp.open_hl7_connection(host, port, encoding="gb18030")
    timestamp = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).strftime("%Y%m%d%H%M%S")
    query = HL7_QUERY.replace("{timestamp}", timestamp)
    try:

        async def ours() -> dict[str, Any]:
            return await adapter.call(OPERATION, params)

        async def bare() -> dict[str, Any]:
            control_id = secrets.token_hex(10).upper()
            writer.writemessage(query.format(control_id=control_id))
            await writer.drain()
            message = await reader.readmessage()  # decoded as GB18030, then hl7.parse
            if message["MSA.F2"] != control_id:
                raise RuntimeError(f"MSA-2 is {message['MSA.F2']!r}, not {control_id}")
            if message["MSA.F1"] not in ("AA", "CA") or message["QAK.F2"] != "OK":
                raise RuntimeError(f"the query failed: {message}")
            return {
                "found": True,
                "patient_id": message["PID.F3.R1.C1"],
                "name": message["PID.F5.R1.C1"],
                "gender": message["PID.F8"],
                "birth_date": iso_date(message["PID.F7"], "%Y%m%d"),
                "card_no": message["PID.F3.R2.C1"],
                "phone": message["PID.F13"],
            }

        return await compare("hl7", [Side("ours", ours), Side("bare", bare)], counts, his)
    finally:
        await adapter.close()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def bench_dbproc(connection: str, counts: Counts) -> dict[str, Any]:
    import pyodbc

    params = query_params()
    adapter = load_adapter(DBPROC_PROFILE, {"dbproc.connection": connection})
    await adapter.start()
    db = pyodbc.connect(connection, autocommit=False)
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bare")
    try:

        def query() -> dict[str, Any]:
            cursor = db.cursor()
            cursor.execute(PG_QUERY, params["card_no"], params["id_card_no"], params["phone"])
            sets = []
            while True:
                if cursor.description is not None:
                    columns = [d[0].lower() for d in cursor.description]
                    sets.append([dict(zip(columns, row, strict=True)) for row in cursor.fetchall()])
                if not cursor.nextset():
                    break
            db.commit()
            cursor.close()
            row = sets[0][0]
            if row["status"] != "T":
                raise RuntimeError(f"his_patient_query failed: {row}")
            return {
                "found": True,
                "patient_id": row["patient_id"],
                "name": row["name"],
                "gender": row["gender"],
                "birth_date": row["birth_date"].isoformat(),
                "card_no": row["card_no"],
                "phone": row["phone"],
            }

        async def ours() -> dict[str, Any]:
            return await adapter.call(OPERATION, params)

        async def bare() -> dict[str, Any]:
            return query()  # blocks the loop: nothing else runs, and a sequential caller needs no thread

        async def bare_thread() -> dict[str, Any]:
            # the same, handed to a worker thread as any async caller must: the share of the overhead
            # that is the thread hop rather than the profile layer
            return await asyncio.get_running_loop().run_in_executor(worker, query)

        sides = [Side("ours", ours), Side("bare", bare), Side("bare_in_thread", bare_thread)]
        result = await compare("dbproc", sides, counts, None)
        thread = sides[2].mean_ms
        result["ratio_vs_bare_in_thread"] = round(sides[0].mean_ms / thread, 3)
        return result
    finally:
        await adapter.close()
        worker.shutdown()
        with contextlib.suppress(pyodbc.Error):
            db.close()


# --- the run and the report ------------------------------------------------------------------------------------


@dataclass
class Settings:
    counts: Counts
    adapters: tuple[str, ...]
    mode: str
    keep: bool


async def run(settings: Settings, cleanup: Children, workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    counts = settings.counts
    log(f"{counts.rounds} rounds x {counts.calls} calls per side after {counts.warmup} warm-up calls; in {workdir}")
    if {"soap", "hl7"} & set(settings.adapters):
        listen = ["--listen", "127.0.0.1:0", "--mllp-listen", "127.0.0.1:0"]  # loopback only, free ports
        his = cleanup.start(
            [sys.executable, "-m", "sandbox.cli", "his", *listen, "--db", str(workdir / "his.sqlite3")],
            workdir / "his.log",
            stdout_pipe=True,
        )
        urls = read_announcements(his, ["sandbox HIS listening on", "HL7 MLLP listening on"])
        base_url = urls["sandbox HIS listening on"].rsplit("/his/", 1)[0]
        mllp_host, _, mllp_port = urls["HL7 MLLP listening on"].removeprefix("mllp://").rpartition(":")
        his_proc = psutil.Process(his.pid)
        if "soap" in settings.adapters:
            results["soap"] = await bench_soap(base_url, counts, his_proc)
        if "hl7" in settings.adapters:
            results["hl7"] = await bench_hl7(mllp_host, int(mllp_port), counts, his_proc)
    if "dbproc" in settings.adapters:
        from sandbox.his.sql_install import install_odbc

        log("dbproc: starting a throwaway PostgreSQL cluster and installing the sandbox HIS into it")
        db = await asyncio.to_thread(cleanup.postgres)
        await asyncio.to_thread(install_odbc, db.connection, "postgresql")
        results["dbproc"] = await bench_dbproc(db.connection, counts)
    return report(settings, results)


def report(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    c = settings.counts
    lines = [
        "",
        f"HIS Bridge adapter benchmark ({settings.mode}): {OPERATION} for card {CARD_NO}, concurrency 1,"
        f" {c.rounds} interleaved rounds x {c.calls} calls per side after {c.warmup} warm-up calls",
        "",
        f"{'adapter':<9}{'side':<16}{'calls':>7}{'calls/s':>10}{'mean ms':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'CPU ms/call: client':>21}{'HIS':>7}",
    ]
    for name, result in results.items():
        for side, s in result["sides"].items():
            his = f"{s['his_cpu_ms_per_call']:.3f}" if s["his_cpu_ms_per_call"] is not None else "–"
            lines.append(
                f"{name:<9}{side:<16}{s['calls']:>7}{s['calls_per_s']:>10.1f}{s['mean_ms']:>9.3f}{s['p50_ms']:>9.3f}"
                f"{s['p99_ms']:>9.3f}{s['client_cpu_ms_per_call']:>21.3f}{his:>7}"
            )
    lines += ["", f"ours / bare, mean time per call (aim <= {AIM_RATIO}):"]
    headline: dict[str, Any] = {}
    aims: dict[str, Any] = {}
    for name in ADAPTERS:
        result = results.get(name)
        headline[f"{name}_overhead_ratio"] = result["ratio"] if result else None
        headline[f"{name}_median_round_ratio"] = result["median_round_ratio"] if result else None
        if result is None:
            continue
        met = result["ratio"] <= AIM_RATIO
        aims[f"{name}_overhead_ratio"] = {"aim": f"<= {AIM_RATIO}", "value": result["ratio"], "met": met}
        extra = ""
        if "ratio_vs_bare_in_thread" in result:
            extra = f"; vs bare in a worker thread {result['ratio_vs_bare_in_thread']}"
        lines.append(
            f"  {'met    ' if met else 'NOT MET'}  {name:<7} {result['ratio']:.3f}  (median of rounds"
            f" {result['median_round_ratio']:.3f}, p50 {result['p50_ratio']:.3f},"
            f" +{result['added_ms_per_call']:.3f} ms per call, client CPU"
            f" {result['client_cpu_ratio']:.2f}x{extra})"
        )
    print("\n".join(lines), flush=True)
    return {
        **headline,
        "mode": settings.mode,
        "operation": OPERATION,
        "counts": {"warmup": c.warmup, "rounds": c.rounds, "calls_per_round": c.calls},
        "aims": aims,
        "adapters": results,
        "machine": machine(("zeep", "httpx", "lxml", "hl7", "pyodbc", "jinja2")),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a fast smoke run with small counts")
    parser.add_argument("--rounds", type=int, help=f"interleaved rounds (default {FULL.rounds})")
    parser.add_argument("--calls", type=int, help=f"calls per side per round (default {FULL.calls})")
    parser.add_argument("--warmup", type=int, help=f"warm-up calls per side (default {FULL.warmup})")
    parser.add_argument(
        "--only",
        type=lambda v: tuple(a for a in ADAPTERS if a in v.split(",")),
        default=ADAPTERS,
        metavar="LIST",
        help="comma-separated subset of soap,hl7,dbproc (default: all)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, HIS state) afterwards")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    counts = Counts(
        warmup=args.warmup if args.warmup is not None else base.warmup,
        rounds=max(1, args.rounds or base.rounds),
        calls=max(1, args.calls or base.calls),
    )
    custom = args.rounds or args.calls or args.warmup is not None or args.only != ADAPTERS
    settings = Settings(counts, args.only, "custom" if custom else "quick" if args.quick else "full", args.keep)
    if not settings.adapters:
        parser.error("--only names none of soap, hl7, dbproc")

    return run_in_workdir(
        "adapters-", settings.keep, lambda cleanup, workdir: run(settings, cleanup, workdir), BENCH_ROOT
    )


if __name__ == "__main__":
    sys.exit(main())
