#!/usr/bin/env python3
"""Benchmark the platform: the day's reconciliation of many hospitals spread over 1, 2 and 4 gateway instances
on one PostgreSQL, and orders per second through 1, 2 and 4 instances.

    .venv/bin/python scripts/bench_platform.py [--hospitals 200] [--records 5000] [--instances 1,2,4]
                                               [--concurrency 2] [--orders 2000] [--clients 32] [--keep]

Reconciliation: each hospital has a day of ``--records`` entries per side (HIS, platform, channel; about 1 % of
them discrepancies of every class, as in bench_recon.py). The platform side is the hospital's orders and refunds
in PostgreSQL; the channel side a real WeChat trade bill (gzip) per merchant; the HIS side ``recon.fetch`` pages.
Each instance is a separate process running the gateway with its daily schedule due (``recon.at = 00:00``);
its channels hand over the prepared bill and its HIS links answer the prepared pages (no sandbox servers: with
200 hospitals they would measure themselves, not the gateway), so everything from the statement's bytes and
the HIS's pages to the stored verdicts is the gateway's real run. The same day is reconciled from scratch for
each instance count; the wall time is from the first run's start to the last run's end.

Orders: each instance a separate process on the same PostgreSQL with an in-memory channel (so the figure is
the gateway's own cost: signature and durable nonce, idempotent insert, the channel call); ``--clients``
concurrent signed clients (``gateway.client.GatewayClient``) in this process spread the orders over the
instances.

The last line is one JSON object with ``recon_seconds_1``, ``recon_seconds_2``, ``recon_seconds_4``,
``recon_speedup_2`` (one instance's time ÷ two instances'), ``recon_speedup_4``, ``duplicate_runs``
(hospital-days run more than once, over all counts), ``orders_per_s_1``, ``orders_per_s_2``, ``orders_per_s_4``,
the CPU seconds the runs took (instances and PostgreSQL) and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gzip
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
for path in (str(REPO), str(SCRIPTS)):
    if path not in sys.path:  # run as a file from anywhere: the repo's packages and the other benchmarks
        sys.path.insert(0, path)

import psutil  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from bench_recon import WechatBillWriter, generate  # noqa: E402
from benchkit import Children, free_port, log, machine, run_in_workdir  # noqa: E402

from bridge import protocol  # noqa: E402
from bridge.client import BridgeResult  # noqa: E402
from gateway.client import GatewayClient  # noqa: E402
from gateway.recon.normalize import SHANGHAI, day_bounds  # noqa: E402
from gateway.store.db import Database  # noqa: E402
from gateway.store.migrate import upgrade  # noqa: E402
from gateway.store.platform_tables import app_keys, job_leases  # noqa: E402
from gateway.store.recon_tables import recon_runs  # noqa: E402
from gateway.store.tables import apps, hospitals, merchants  # noqa: E402
from tests.support.memory_channel import MemoryChannel  # noqa: E402

RECON_TABLES = ("recon_exceptions", "recon_observations", "recon_runs", "his_details", "statements", "job_leases")
PAGE = 1000


def hospital_ids(n: int) -> list[str]:
    return [f"H{i:03d}" for i in range(1, n + 1)]


def the_day() -> dt.date:
    """The day the schedule reconciles now: yesterday in Asia/Shanghai."""
    return dt.datetime.now(SHANGHAI).date() - dt.timedelta(days=1)


# --- the data: three sides per hospital --------------------------------------------------------------------------


def prepare_hospital(index: int, hospital: str, records: int, seed: int, data: Path) -> list[tuple[str, int, int, int]]:
    """Write the hospital's bill and HIS pages; return its platform entries (key, fen, seconds, settled)."""
    day = the_day()
    start, _ = day_bounds(day)
    his: list[dict[str, Any]] = []
    platform: list[tuple[str, int, int, int]] = []
    prefix = f"{index:03d}"
    with gzip.open(data / f"{hospital}.bill.gz", "wb", compresslevel=1) as out:
        bill = WechatBillWriter(out)

        def emit(side: str, key: str, amount: int, secs: int, flag: int) -> None:
            kind, ref = key.split(":", 1)
            ref = ref[0] + prefix + ref[1:]
            key = f"{kind}:{ref}"
            if side == "his":
                when = (start + dt.timedelta(seconds=secs)).astimezone(SHANGHAI).replace(tzinfo=None).isoformat()
                if kind == "refund":
                    his.append({"kind": "refund", "refund_no": ref, "trade_no": "O" + ref[1:], "amount_fen": amount,
                                "receipt_no": f"TF{ref}", "channel": "wechat", "time": when})  # fmt: skip
                else:
                    his.append({"kind": "charge", "trade_no": ref, "amount_fen": amount, "receipt_no": f"SF{ref}",
                                "channel": "wechat", "time": when})  # fmt: skip
            elif side == "platform":
                platform.append((key, amount, secs, flag))
            elif kind == "pay":
                bill.pay(f"42{ref[1:]}", ref, amount, secs)
            else:
                bill.refund(f"42{ref[1:]}", "O" + ref[1:], f"503{ref[1:]}", ref, amount, secs)

        generate(records, seed + index, emit)
        bill.close()
    (data / f"{hospital}.his.json").write_text(json.dumps(his, ensure_ascii=False), encoding="utf-8")
    return platform


async def load_tenants(db: Database, ids: list[str], app_key: protocol.SigningKey) -> None:
    now = dt.datetime.now(dt.UTC)
    pem = app_key.public().public_pem().decode()
    settings = {"mchid": "1230000109", "appid": "wx1"}
    async with db.write() as conn:
        await conn.execute(
            sa.insert(hospitals),
            [
                {"id": h, "name": f"医院{h}", "refund_policy": "finance", "updated_at": now, "source": "import"}
                for h in ids
            ],
        )
        await conn.execute(
            sa.insert(merchants),
            [{"id": f"wx-{h}", "channel": "wechat", "hospital_id": h, "enabled": True, "settings": settings,
              "updated_at": now, "source": "import"} for h in ids],
        )  # fmt: skip
        await conn.execute(
            sa.insert(apps),
            [{"id": f"app-{h}", "hospital_id": h, "public_key_pem": pem, "enabled": True, "updated_at": now,
              "source": "import"} for h in ids],
        )  # fmt: skip
        await conn.execute(
            sa.insert(app_keys),
            [{"app_id": f"app-{h}", "name": "bench", "public_key_pem": pem, "added_at": now} for h in ids],
        )


async def load_platform(pg_dsn: str, hospital: str, entries: list[tuple[str, int, int, int]]) -> None:
    """The hospital's orders and refunds of the day, by COPY (setup, not measured)."""
    import asyncpg

    day = the_day()
    start, _ = day_bounds(day)
    now = dt.datetime.now(dt.UTC)
    orders, refunds = [], []
    for key, fen, secs, flag in entries:
        ref = key.split(":", 1)[1]
        paid = start + dt.timedelta(seconds=secs)
        if key.startswith("pay:"):
            orders.append((ref, fen, paid if flag else None, fen if flag else None,
                           "completed" if flag else "paying", "done" if flag else "none"))  # fmt: skip
        else:
            orders.append(("O" + ref[1:], fen, start - dt.timedelta(hours=12), fen, "completed", "done"))
            refunds.append((ref, "O" + ref[1:], fen, paid if flag else None, "succeeded" if flag else "refunding"))
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.copy_records_to_table(
            "orders",
            columns=["hospital_id", "app_id", "merchant_id", "channel", "business_order_no", "out_trade_no",
                     "request_digest", "business_type", "scene", "subject", "amount_fen", "his_params", "status",
                     "paid_fen", "paid_at", "his_state", "expires_at", "created_at", "updated_at"],
            records=[(hospital, f"app-{hospital}", f"wx-{hospital}", "wechat", f"B{no}", no, "0" * 64, "charge",
                      "native", "门诊缴费", fen, "{}", status, paid_fen, paid_at, his_state, now, now, now)
                     for no, fen, paid_at, paid_fen, status, his_state in orders],
        )  # fmt: skip
        ids = dict(await conn.fetch("SELECT out_trade_no, id FROM orders WHERE hospital_id = $1", hospital))
        await conn.copy_records_to_table(
            "refunds",
            columns=["order_id", "hospital_id", "channel", "out_refund_no", "amount_fen", "origin", "state",
                     "refunded_at", "created_at", "updated_at"],
            records=[(ids[order_no], hospital, "wechat", no, fen, "business", state, at, now, now)
                     for no, order_no, fen, at, state in refunds],
        )  # fmt: skip
    finally:
        await conn.close()


# --- an instance (a child process) -------------------------------------------------------------------------------


class BillChannel(MemoryChannel):
    """A merchant whose statement is the prepared WeChat trade bill: downloading it reads the file."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    async def download_bill(self, day: dt.date) -> bytes:
        return await asyncio.to_thread(self.path.read_bytes)


class PagesHis:
    """A hospital's agent answering ``recon.fetch`` from the prepared records (JSON, parsed per call as an
    answer would be)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.client = self

    async def call(self, operation: str, params: dict[str, Any]) -> BridgeResult:
        records = json.loads(await asyncio.to_thread(self.path.read_text, encoding="utf-8"))
        page, size = int(params["page"]), int(params["page_size"])
        chunk = records[(page - 1) * size : page * size]
        body = {
            "status": "done",
            "result": {"records": chunk, "total": len(records), "has_more": page * size < len(records)},
        }
        return BridgeResult(200, body)

    async def close(self) -> None:
        return None


async def serve(args: argparse.Namespace) -> None:
    from gateway.config import load_config
    from gateway.runtime import start_gateway

    cfg = load_config(args.config)
    data = Path(args.data)
    ids = hospital_ids(args.hospitals)
    if args.serve == "recon":
        channels: dict[str, Any] = {f"wx-{h}": BillChannel(data / f"{h}.bill.gz") for h in ids}
        his: dict[str, Any] = {h: PagesHis(data / f"{h}.his.json") for h in ids}
    else:
        channels, his = {f"wx-{h}": MemoryChannel() for h in ids}, {}
    running = await start_gateway(cfg, channels=channels, his=his, run_workers=args.serve == "recon")
    print(f"instance {running.svc.instance} listening on {running.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await running.stop()


def config_toml(work: Path, port: int, pg_url: str, signing_key: Path, concurrency: int) -> Path:
    path = work / f"gateway-{port}.toml"
    path.write_text(
        f"""
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
[database]
url = "{pg_url}"
pool_size = 8
[signing]
key = "{signing_key}"
[logging]
level = "warning"
[console]
enabled = false
[recon]
at = "00:00"
concurrency = {concurrency}
lease_s = 300
retry_s = 60
"""
    )
    return path


def start_instances(children: Children, work: Path, count: int, mode: str, args: argparse.Namespace,
                    pg_url: str, signing_key: Path) -> list[tuple[Any, str]]:  # fmt: skip
    started = []
    for _ in range(count):
        port = free_port()
        config = config_toml(work, port, pg_url, signing_key, args.concurrency)
        proc = children.start(
            [sys.executable, __file__, "--serve", mode, "--config", str(config), "--data", str(work / "data"),
             "--hospitals", str(args.hospitals)],
            work / f"instance-{port}.log",
        )  # fmt: skip
        started.append((proc, f"http://127.0.0.1:{port}"))
    return started


async def wait_listening(url: str, proc: Any, timeout_s: float = 120) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"an instance exited ({proc.returncode}) before listening")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url + "/healthz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"instance {url} did not listen within {timeout_s} s")


# --- measuring --------------------------------------------------------------------------------------------------


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


def postgres_pids(data_dir: Path) -> list[int]:
    with contextlib.suppress(OSError, ValueError, psutil.Error):
        pm = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
        return [pm, *(p.pid for p in psutil.Process(pm).children(recursive=True))]
    return []


async def reset_recon(db: Database) -> None:
    async with db.write() as conn:
        await conn.execute(sa.text(f"TRUNCATE {', '.join(RECON_TABLES)} CASCADE"))


async def recon_round(children: Children, work: Path, db: Database, count: int, args: argparse.Namespace,
                      pg_url: str, signing_key: Path, pg_data: Path) -> dict[str, Any]:  # fmt: skip
    await reset_recon(db)
    pg_before = cpu_seconds(postgres_pids(pg_data))
    instances = start_instances(children, work, count, "recon", args, pg_url, signing_key)
    try:
        deadline = time.monotonic() + args.timeout
        while True:
            async with db.read() as conn:
                states = dict(
                    (
                        await conn.execute(sa.select(job_leases.c.state, sa.func.count()).group_by(job_leases.c.state))
                    ).all()
                )
            if states.get("done", 0) >= args.hospitals:
                break
            if states.get("failed"):
                async with db.read() as conn:
                    error = (
                        await conn.execute(sa.select(job_leases.c.error).where(job_leases.c.state == "failed"))
                    ).first()
                raise RuntimeError(f"a reconciliation failed: {error[0] if error else '?'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"reconciliation not done after {args.timeout} s: {states}")
            await asyncio.sleep(0.5)
        instance_cpu = cpu_seconds([proc.pid for proc, _ in instances])
        pg_cpu = cpu_seconds(postgres_pids(pg_data)) - pg_before
    finally:
        for proc, _ in instances:
            Children.stop(proc)
            children.procs.remove(proc)
    async with db.read() as conn:
        r = recon_runs.c
        span = (
            await conn.execute(
                sa.select(sa.func.min(r.started_at), sa.func.max(r.finished_at)).where(r.status == "done")
            )
        ).one()
        per_day = (
            await conn.execute(
                sa.select(r.hospital_id, r.day, sa.func.count()).where(r.trigger == "schedule", r.status == "done")
                .group_by(r.hospital_id, r.day)
            )
        ).all()  # fmt: skip
        matched = (await conn.execute(sa.select(sa.func.sum(r.matched)))).scalar() or 0
        longest = (
            await conn.execute(sa.select(sa.func.max(sa.extract("epoch", r.finished_at - r.started_at))))
        ).scalar() or 0
        exceptions = (
            await conn.execute(sa.text("SELECT count(*) FROM recon_exceptions WHERE source = 'recon'"))
        ).scalar() or 0
        by_instance = dict(
            (
                await conn.execute(sa.select(job_leases.c.instance, sa.func.count()).group_by(job_leases.c.instance))
            ).all()
        )
    seconds = (span[1] - span[0]).total_seconds()
    duplicates = sum(n - 1 for _, _, n in per_day if n > 1)
    log(f"recon with {count} instance(s): {len(per_day)} hospital-days in {seconds:.1f} s, {matched:,} matched, "
        f"{exceptions:,} exceptions, CPU {instance_cpu:.0f} s in the instances + {pg_cpu:.0f} s in PostgreSQL, "
        f"runs per instance {sorted(by_instance.values())}, duplicates {duplicates}")  # fmt: skip
    return {"seconds": seconds, "days": len(per_day), "duplicates": duplicates, "instance_cpu_s": instance_cpu,
            "postgres_cpu_s": pg_cpu, "runs_per_instance": sorted(by_instance.values()), "matched": int(matched),
            "exceptions": int(exceptions), "longest_run_s": float(longest)}  # fmt: skip


async def orders_round(children: Children, work: Path, count: int, args: argparse.Namespace, pg_url: str,
                       signing_key: Path, gateway_key: protocol.VerifyKey, app_key: protocol.SigningKey,
                       round_no: int) -> dict[str, Any]:  # fmt: skip
    instances = start_instances(children, work, count, "orders", args, pg_url, signing_key)
    clients: list[GatewayClient] = []
    try:
        for proc, url in instances:
            await wait_listening(url, proc)
        key = protocol.SigningKey("app-H001", app_key.key)
        clients = [GatewayClient(url, app_key=key, gateway_key=gateway_key, retries=0) for _, url in instances]
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(args.orders):
            queue.put_nowait(i)
        latencies: list[float] = []

        async def worker(n: int) -> None:
            client = clients[n % len(clients)]
            while not queue.empty():
                i = queue.get_nowait()
                t0 = time.perf_counter()
                await client.create_order(
                    business_order_no=f"BENCH-{round_no}-{i:07d}", business_type="prepay", scene="native",
                    channel="wechat", amount_fen=100 + i % 1000, subject="住院预交金", patient_id="P0003",
                    inpatient_no="Z0001",
                )  # fmt: skip
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(args.clients)))
        seconds = time.perf_counter() - t0
    finally:
        for client in clients:
            await client.close()
        for proc, _ in instances:
            Children.stop(proc)
            children.procs.remove(proc)
    latencies.sort()
    rate = args.orders / seconds
    p50, p99 = latencies[len(latencies) // 2], latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    log(f"orders with {count} instance(s): {args.orders} in {seconds:.2f} s, {rate:.0f}/s, "
        f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")  # fmt: skip
    return {"orders_per_s": rate, "p50_ms": p50 * 1000, "p99_ms": p99 * 1000}


async def run(args: argparse.Namespace, children: Children, work: Path) -> dict[str, Any]:
    counts = [int(c) for c in args.instances.split(",")]
    server = children.postgres()
    pg_url = f"postgresql+asyncpg://postgres@127.0.0.1:{server.port}/postgres"
    pg_dsn = f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
    pg_data = children.servers[-1].data
    (work / "data").mkdir()
    gateway_key = protocol.generate_ed25519("gateway")
    signing_key = work / "gateway.pem"
    signing_key.write_bytes(protocol.private_pem(gateway_key))
    app_key = protocol.generate_ed25519("app")
    ids = hospital_ids(args.hospitals)

    db = Database(pg_url, pool_size=4)
    try:
        await upgrade(db)
        await load_tenants(db, ids, app_key)
        t0 = time.perf_counter()
        for index, hospital in enumerate(ids, start=1):
            platform = await asyncio.to_thread(
                prepare_hospital, index, hospital, args.records, args.seed, work / "data"
            )
            await load_platform(pg_dsn, hospital, platform)
        async with db.write() as conn:
            await conn.execute(sa.text("ANALYZE"))
        took = time.perf_counter() - t0
        log(f"{args.hospitals} hospitals x {args.records:,} records per side prepared in {took:.0f} s")

        recon = {}
        for count in counts:
            recon[count] = await recon_round(children, work, db, count, args, pg_url, signing_key, pg_data)
        orders = {}
        for round_no, count in enumerate(counts, start=1):
            orders[count] = await orders_round(
                children, work, count, args, pg_url, signing_key, gateway_key.public(), app_key, round_no
            )
    finally:
        await db.close()

    first = counts[0]
    result: dict[str, Any] = {"hospitals": args.hospitals, "records_per_side": args.records}
    for count in counts:
        result[f"recon_seconds_{count}"] = round(recon[count]["seconds"], 2)
        result[f"orders_per_s_{count}"] = round(orders[count]["orders_per_s"], 1)
    for count in counts[1:]:
        result[f"recon_speedup_{count}"] = round(recon[first]["seconds"] / recon[count]["seconds"], 2)
    result["duplicate_runs"] = sum(r["duplicates"] for r in recon.values())
    result["recon_days"] = {str(c): r["days"] for c, r in recon.items()}
    result["recon_cpu_seconds"] = {
        str(c): round(r["instance_cpu_s"] + r["postgres_cpu_s"], 1) for c, r in recon.items()
    }
    result["recon_postgres_cpu_share"] = round(
        recon[first]["postgres_cpu_s"] / max(recon[first]["instance_cpu_s"] + recon[first]["postgres_cpu_s"], 1e-9), 3
    )
    result["orders_p99_ms"] = {str(c): round(o["p99_ms"], 1) for c, o in orders.items()}
    cores = os.cpu_count() or 1
    work_s = result["recon_cpu_seconds"][str(first)]
    serial = recon[first]["seconds"]
    longest = max(r["longest_run_s"] for r in recon.values())
    # CPU work spreads over cores, down to the longest single hospital-day (one run uses one core at a time).
    result["predicted_recon_seconds"] = {str(k): round(max(work_s / k, longest), 1) for k in (8, 16)}
    result["longest_run_seconds"] = round(longest, 2)
    result["machine"] = machine(("sqlalchemy", "asyncpg", "aiohttp"))
    print(f"\nThis machine has {cores} cores. Reconciliation is CPU work (statement parsing, matching, evidence and "
          f"verdict writes) in the instances and in PostgreSQL: one instance used {recon[first]['instance_cpu_s']:.0f} "
          f"CPU s of its own and {recon[first]['postgres_cpu_s']:.0f} of PostgreSQL's for {serial:.0f} s of wall time. "
          f"Instances beyond the core count share the same cores, so on {cores} cores the speed-up is bounded by "
          f"about {cores}x; on a machine with more cores (and PostgreSQL on its own host) the same "
          f"{work_s:.0f} CPU seconds spread over 8 cores would take about {result['predicted_recon_seconds']['8']} s "
          f"and over 16 about {result['predicted_recon_seconds']['16']} s, as long as PostgreSQL keeps up "
          f"(its share of the work here: {result['recon_postgres_cpu_share']:.0%}).")  # fmt: skip
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hospitals", type=int, default=200)
    ap.add_argument("--records", type=int, default=5000)
    ap.add_argument("--instances", default="1,2,4")
    ap.add_argument("--concurrency", type=int, default=2, help="runs at once per instance (recon.concurrency)")
    ap.add_argument("--orders", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, data)")
    ap.add_argument("--serve", choices=("recon", "orders"), help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(args))
        return 0

    async def go(children: Children, work: Path) -> dict[str, Any]:
        return await run(args, children, work)

    return run_in_workdir("bench-platform-", args.keep, go, REPO / "var" / "bench")


if __name__ == "__main__":
    sys.exit(main())
