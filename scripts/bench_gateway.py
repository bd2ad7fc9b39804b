#!/usr/bin/env python3
"""Benchmark the gateway: orders created per second through the signed business API (SQLite and PostgreSQL),
and notifications delivered per second by two instances' outbox workers on one PostgreSQL.

    .venv/bin/python scripts/bench_gateway.py [--orders 400] [--concurrency 16] [--notifications 400]

Orders go through everything a real create does (signature and durable nonce check, idempotent insert, the
channel's create — an in-memory channel here, so the figure is the gateway's own cost). Notifications are
delivered to a local endpoint that verifies each signature; their latency is from the batch being queued to
each delivery. PostgreSQL is a throwaway server started for the
run (scripts/bootstrap installs it). Figures are printed with p50/p99 latencies; the last line is one JSON
object with ``orders_per_s_sqlite``, ``orders_per_s_postgres`` and ``notify_per_s_postgres``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a file from anywhere: import the repo's packages
    sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402

from gateway.runtime import start_gateway  # noqa: E402
from gateway.store import outbox  # noqa: E402
from gateway.store.tables import notifications  # noqa: E402
from tests.support.databases import PostgresServer  # noqa: E402
from tests.support.gateway_rig import (  # noqa: E402
    APP_ID,
    HOSPITAL,
    MERCHANT,
    ApiClient,
    NotifyReceiver,
    gateway_config,
    make_keys,
    order_body,
)
from tests.support.memory_channel import MemoryChannel  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(name: str, count: int, elapsed: float, latencies: list[float]) -> float:
    rate = count / elapsed if elapsed else 0.0
    print(
        f"{name:<28} {count:>6} in {elapsed:6.2f} s  {rate:8.1f}/s  "
        f"p50 {percentile(latencies, 0.5) * 1000:7.1f} ms  p99 {percentile(latencies, 0.99) * 1000:7.1f} ms",
        flush=True,
    )
    return rate


async def bench_orders(workdir: Path, db_url: str, label: str, count: int, concurrency: int) -> float:
    keys = make_keys(workdir / f"keys-{label}")
    cfg = gateway_config(workdir, keys, db_url, workers={"enabled": False})
    running = await start_gateway(cfg, channels={MERCHANT: MemoryChannel()}, his={}, run_workers=False)
    client = ApiClient(running.url, keys.app, keys.gateway.public())
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            started = time.perf_counter()
            status, body = await client.call("POST", "/v1/orders", order_body(f"BENCH-{label}-{i:06d}"))
            if status != 201:
                raise RuntimeError(f"HTTP {status}: {json.dumps(body)[:200]}")
            latencies.append(time.perf_counter() - started)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        await client.close()
        await running.stop()
    return summary(f"orders created ({label})", count, elapsed, latencies)


async def bench_notifications(workdir: Path, db_url: str, count: int) -> float:
    keys = make_keys(workdir / "keys-notify")
    receiver = await NotifyReceiver(keys.gateway.public()).start()
    cfg = gateway_config(workdir, keys, db_url, notify_url=receiver.url, workers={"batch": 50, "poll_interval_s": 0.02})
    idle = await start_gateway(cfg, channels={MERCHANT: MemoryChannel()}, his={}, run_workers=False)
    instances = []
    try:
        async with idle.svc.db.write() as conn:
            for i in range(count):
                await outbox.enqueue(
                    conn, app_id=APP_ID, hospital_id=HOSPITAL, event_type="order.completed",
                    subject_key=f"BENCH-{i:06d}", payload={"n": i},
                )  # fmt: skip
        started = time.perf_counter()
        for _ in range(2):
            instances.append(await start_gateway(cfg, channels={MERCHANT: MemoryChannel()}, his={}, run_workers=True))
        while True:
            async with idle.svc.db.read() as conn:
                left = (
                    await conn.execute(
                        sa.select(sa.func.count())
                        .select_from(notifications)
                        .where(notifications.c.state != "delivered")
                    )
                ).scalar()
            if not left:
                break
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
        async with idle.svc.db.read() as conn:
            rows = (await conn.execute(sa.select(notifications.c.created_at, notifications.c.delivered_at))).all()
        if len(receiver.received) != count or len(set(receiver.received)) != count:
            raise RuntimeError(f"{len(receiver.received)} deliveries of {count} notifications")
    finally:
        for running in instances:
            await running.stop()
        await idle.stop()
        await receiver.close()
    start = min(r.created_at for r in rows)
    latencies = [(r.delivered_at - start).total_seconds() for r in rows]
    return summary("notifications (2 instances)", count, elapsed, latencies)


async def run(args: argparse.Namespace, pg_url: str, workdir: Path) -> dict[str, Any]:
    sqlite_url = f"sqlite+aiosqlite:///{workdir / 'bench.sqlite3'}"
    return {
        "orders_per_s_sqlite": round(
            await bench_orders(workdir, sqlite_url, "sqlite", args.orders, args.concurrency), 1
        ),
        "orders_per_s_postgres": round(
            await bench_orders(workdir, pg_url, "postgres", args.orders, args.concurrency), 1
        ),
        "notify_per_s_postgres": round(await bench_notifications(workdir, pg_url, args.notifications), 1),
        "orders": args.orders,
        "concurrency": args.concurrency,
        "notifications": args.notifications,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--notifications", type=int, default=400)
    args = parser.parse_args()
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    server = PostgresServer()
    db = server.start()
    pg_url = f"postgresql+asyncpg://postgres@127.0.0.1:{db.port}/postgres"
    try:
        with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
            result = asyncio.run(run(args, pg_url, Path(tmp)))
    finally:
        server.stop()
    print(json.dumps(result, ensure_ascii=False, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
