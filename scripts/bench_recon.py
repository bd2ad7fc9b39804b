#!/usr/bin/env python3
"""Benchmark reconciliation: a synthetic day of N entries (default 1,000,000) on each of the three sides
(HIS, platform, channel) with discrepancies of every class injected, matched by our core
(``gateway.recon.engine.match``, pure Python over compact keys) and, in the same run, by a pandas merge
baseline that implements the same rules; the streaming parse of a WeChat trade bill (gzip) and an Alipay
statement zip of N rows each, beside the stdlib floor (gunzip + decode + ``csv.reader``, no conversion); and the
whole run end to end on SQLite, from the statement's bytes to the stored exceptions.

    .venv/bin/python scripts/bench_recon.py [--rows 1000000] [--seed 7]

Each stage runs in its own child process so that its peak RSS is its own; the statements are written to files
first (as a stream) so that a parse child's peak is the parse's, not the generator's. Both matchers start from
the sides already in memory (ours: dicts of tuples; pandas: DataFrames) and must agree on every class count.
The last line is one JSON object with ``recon_1m_seconds``, ``recon_vs_pandas_ratio`` (ours / pandas time),
``recon_peak_rss_mb``, ``wechat_parse_rows_per_s``, ``alipay_parse_rows_per_s`` and ``unionpay_parse_rows_per_s``
(UnionPay's ZM file, read whole), the first two one streaming pass (every
row built, the summary checked; also per CPU second, which a machine shared with other work disturbs less),
``parse_peak_rss_mb`` (the larger of the two parse children), ``wechat_parse_vs_csv_floor_ratio`` (CPU time),
``recon_e2e_1m_seconds`` (and its CPU seconds) and ``recon_e2e_peak_rss_mb``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gzip
import io
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a file from anywhere: import the repo's packages
    sys.path.insert(0, str(REPO))

WINDOW_S = 1800
DAY_S = 86_400
Emit = Callable[[str, str, int, int, int], None]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(n: int, seed: int, emit: Emit) -> dict[str, int]:
    """The day: ``emit(side, key, amount, seconds, flag)`` for every entry; returns the injected counts."""
    rng = random.Random(seed)
    rand, randint, randrange = rng.random, rng.randint, rng.randrange
    injected = dict.fromkeys(("over", "under", "amount", "status", "duplicate", "cross_day"), 0)
    for i in range(n):
        pay = i % 10 != 9
        key = f"pay:P{i:011d}" if pay else f"refund:R{i:011d}"
        amount, secs, r = randint(100, 500_000), randrange(DAY_S - WINDOW_S), rand()
        if r < 0.002:
            injected["over"] += 1
            if pay:
                emit("channel", key, amount, secs, 1)
                emit("platform", key, amount, secs, 1)
            else:
                emit("his", key, amount, secs, 1)
        elif r < 0.004:
            injected["under"] += 1
            if pay:
                emit("his", key, amount, secs, 1)
                emit("platform", key, amount, secs, 1)
            else:
                emit("channel", key, amount, secs, 1)
                emit("platform", key, amount, secs, 1)
        elif r < 0.006:
            injected["amount"] += 1
            emit("his", key, amount, secs, 1)
            emit("platform", key, amount, secs, 1)
            emit("channel", key, amount + 1, secs, 1)
        elif r < 0.008:
            injected["status"] += 1
            emit("his", key, amount, secs, 1)
            emit("platform", key, amount, secs, 0)
            emit("channel", key, amount, secs, 1)
        elif r < 0.009:
            injected["duplicate"] += 1
            emit("his", key, amount, secs, 1)
            emit("platform", key, amount, secs, 1)
            emit("channel", key, amount, secs, 1)
            emit("channel", key, amount, secs + 1, 1)
        elif r < 0.010:
            injected["cross_day"] += 1
            late = DAY_S - 1 - randrange(WINDOW_S)
            emit("platform", key, amount, late, 1)
            emit("channel", key, amount, late, 1)
        else:
            emit("his", key, amount, secs, 1)
            emit("platform", key, amount, secs, 1)
            emit("channel", key, amount, secs, 1)
    return injected


def stage_recon(n: int, seed: int) -> dict[str, Any]:
    from gateway.recon.engine import Evidence, Side, classify, match

    sides = {"his": Side(), "platform": Side(), "channel": Side()}
    adders = {name: side.add for name, side in sides.items()}
    t0 = time.perf_counter()
    injected = generate(n, seed, lambda side, k, a, s, f: adders[side](k, a, s, f))
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    his, platform, channel = sides["his"], sides["platform"], sides["channel"]
    out = match(his, platform, channel)
    counts: dict[str, int] = {"matched": out.matched}
    for k in out.unresolved:  # judged as a run judges them when nothing of them is kept from other days
        p = platform.entries.get(k)
        ev = Evidence(
            his=[e[0] for e in his.copies(k)],
            channel=[e[0] for e in channel.copies(k) if e[2]],
            platform=(p[0], p[2]) if p is not None else None,
        )
        cls = classify(k, ev)
        name = cls.name if cls is not None else "matched"
        counts[name] = counts.get(name, 0) + 1
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "generate_and_load_seconds": build,
        "peak_rss_mb": peak_rss_mb(),
        "counts": counts,
        "injected": injected,
        "sizes": {name: len(side) for name, side in sides.items()},
    }


def stage_pandas(n: int, seed: int) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    cols: dict[str, tuple[list[str], list[int], list[int], list[int]]] = {
        s: ([], [], [], []) for s in ("his", "platform", "channel")
    }

    def emit(side: str, k: str, a: int, s: int, f: int) -> None:
        c = cols[side]
        c[0].append(k)
        c[1].append(a)
        c[2].append(s)
        c[3].append(f)

    generate(n, seed, emit)
    frames = {}
    for name, (k, a, s, f) in cols.items():
        p = name[0]
        frames[name] = pd.DataFrame(
            {"key": k, f"{p}_amt": np.array(a, dtype=np.int64), f"{p}_s": np.array(s), f"{p}_f": np.array(f)}
        )
    cols.clear()
    t0 = time.perf_counter()
    dup = set()
    for df in frames.values():
        dup.update(df["key"][df["key"].duplicated()].tolist())
    h, p, c = (frames[x].drop_duplicates("key") for x in ("his", "platform", "channel"))
    m = h.merge(c, on="key", how="outer").merge(p, on="key", how="outer")
    H = m["h_amt"].notna().to_numpy()
    C = (m["c_f"] == 1).to_numpy()
    pf = m["p_f"].fillna(0).to_numpy()
    P = pf > 0
    pay = (m["key"].str[0] == "p").to_numpy()
    ha, ca, pa = (m[x].to_numpy(dtype="float64", na_value=np.nan) for x in ("h_amt", "c_amt", "p_amt"))
    amt_bad = (ca != ha) | (~np.isnan(pa) & (pa != ha))
    is_dup = m["key"].isin(dup).to_numpy()
    hc = H & C
    c_only = ~H & C
    h_only = H & ~C
    no_his = c_only & (pf == 2)
    conds = [
        is_dup,
        hc & amt_bad,
        hc & (pf != 1),
        hc,
        no_his & ~pay & (pa == ca),
        no_his & ~pay,
        c_only,
        h_only,
        ~H & ~C & P,
    ]
    over_under = np.where(pay, "over_collection", "under_collection")
    under_over = np.where(pay, "under_collection", "over_collection")
    choices = [
        "duplicate",
        "amount_mismatch",
        "status_mismatch",
        "matched",
        "matched",
        "amount_mismatch",
        over_under,
        under_over,
        "status_mismatch",
    ]
    cls = np.select(conds, choices, default="none")
    values, freq = np.unique(cls, return_counts=True)
    seconds = time.perf_counter() - t0
    counts = {str(v): int(f) for v, f in zip(values, freq, strict=True) if v != "none"}
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "counts": counts}


WECHAT_HEADER = (
    "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,"
    "货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,"
    "商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注"
)


def _yuan(fen: int) -> str:
    return f"{'-' if fen < 0 else ''}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def _yuan5(units: int) -> str:
    return f"{'-' if units < 0 else ''}{abs(units) // 100000}.{abs(units) % 100000:05d}"


def _clock(secs: int) -> str:
    return f"2025-03-14 {secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"


class WechatBillWriter:
    """A WeChat ALL trade bill written row by row into a binary stream (UTF-8), its summary kept as it goes."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.count = self.settled = self.refunded = self.fee_units = 0
        out.write((WECHAT_HEADER + "\n").encode())

    def pay(self, trade_no: str, out_trade_no: str, fen: int, secs: int) -> None:
        fee = fen * 6 // 10  # in 1e-5 yuan: 0.6 %
        self.count += 1
        self.settled += fen
        self.fee_units += fee
        y = _yuan(fen)
        self.out.write(
            f"`{_clock(secs)},`wx1,`1230000109,`0,`,`{trade_no},`{out_trade_no},`o1,`NATIVE,`SUCCESS,`OTHERS,`CNY,"
            f"`{y},`0.00,`0,`0,`0.00,`0.00,`,`,`门诊缴费,`,`{_yuan5(fee)},`0.60%,`{y},`0.00,`\n".encode()
        )

    def refund(self, trade_no: str, out_trade_no: str, refund_no: str, out_refund_no: str, fen: int, secs: int) -> None:
        fee = fen * 6 // 10
        self.count += 1
        self.refunded += fen
        self.fee_units -= fee
        y = _yuan(fen)
        self.out.write(
            f"`{_clock(secs)},`wx1,`1230000109,`0,`,`{trade_no},`{out_trade_no},`o1,`NATIVE,`REFUND,`OTHERS,`CNY,"
            f"`0.00,`0.00,`{refund_no},`{out_refund_no},`{y},`0.00,`ORIGINAL,`SUCCESS,`门诊缴费,`,"
            f"`{_yuan5(-fee)},`0.60%,`0.00,`{y},`\n".encode()
        )

    def close(self) -> None:
        s, r = _yuan(self.settled), _yuan(self.refunded)
        self.out.write(
            "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\n".encode()
        )
        self.out.write(f"`{self.count},`{s},`{r},`0.00,`{_yuan5(self.fee_units)},`{s},`{r}\n".encode())


def write_wechat_bill(path: Path, n: int, seed: int) -> None:
    """N rows (one in ten a refund) as the gzip WeChat serves, written as a stream."""
    rng = random.Random(seed)
    with gzip.open(path, "wb", compresslevel=1) as out:
        bill = WechatBillWriter(out)
        for i in range(n):
            fen = rng.randint(100, 500_000)
            if i % 10 == 9:
                bill.refund(f"42{i:026d}", f"P{i:011d}", f"503{i:026d}", f"R{i:011d}", fen, i % DAY_S)
            else:
                bill.pay(f"42{i:026d}", f"P{i:011d}", fen, i % DAY_S)
        bill.close()


def write_alipay_zip(path: Path, n: int, seed: int) -> None:
    """N rows (one in ten a refund, written as Alipay does: negative 订单金额 and 商家实收) and the 汇总 file."""
    from sandbox.channels.bills import ALIPAY_DETAIL_COLUMNS, ALIPAY_SUMMARY_COLUMNS, ALIPAY_TABBED

    rng = random.Random(seed)
    pays = refunds = income = refunded = 0
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("20881021462251350156_20250314_业务明细.csv", "w") as raw:
            out = io.TextIOWrapper(raw, encoding="gbk", newline="")
            out.write("#支付宝业务明细查询\r\n#账号：[20881021462251350156]\r\n" + ALIPAY_DETAIL_COLUMNS + "\r\n")
            for i in range(n):
                fen = rng.randint(100, 500_000)
                fee = _yuan(fen * 6 // 1000)
                t = _clock(i % DAY_S)
                if i % 10 == 9:
                    refunds += 1
                    refunded += fen
                    y = _yuan(-fen)
                    values = [f"20250314{i:020d}", f"P{i:011d}", "退款", "门诊缴费", t, t, "", "", "", "", "a***@b.com",
                              y, y, "0.00", "0.00", "0.00", "0.00", "0.00", "", "0.00", "0.00", f"R{i:011d}", fee,
                              "0.00", ""]  # fmt: skip
                else:
                    pays += 1
                    income += fen
                    y = _yuan(fen)
                    values = [f"20250314{i:020d}", f"P{i:011d}", "交易", "门诊缴费", t, t, "", "", "", "", "a***@b.com",
                              y, y, "0.00", "0.00", "0.00", "0.00", "0.00", "", "0.00", "0.00", "", f"-{fee}", "0.00",
                              ""]  # fmt: skip
                out.write(",".join(v + "\t" if c in ALIPAY_TABBED else v for c, v in enumerate(values)) + "\r\n")
            out.write(f"#交易合计：{pays}笔，商家实收共{_yuan(income)}元，商家优惠共0.00元\r\n")
            out.write(f"#退款合计：{refunds}笔，商家实收退款共{_yuan(-refunded)}元，商家优惠退款共0.00元\r\n")
            out.flush()
            out.detach()
        net = _yuan(income - refunded)
        summary = f"{ALIPAY_SUMMARY_COLUMNS}\r\n合计,,{pays},{refunds},{net},{net},0.00,0.00,0.00,0.00,0.00,{net}\r\n"
        archive.writestr("20881021462251350156_20250314_业务明细(汇总).csv", summary.encode("gbk"))


def write_unionpay_zip(path: Path, n: int, seed: int) -> None:
    """A UnionPay reconciliation zip of N fixed-width ZM records (9 consumes to 1 refund), built with the sandbox's
    record writer."""
    from sandbox.channels.unionpay import _zm_entry, zm_record

    rng = random.Random(seed)
    at = dt.datetime(2025, 3, 14, 10, 0)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("INN25031488ZM_777290058160001", "w", force_zip64=True) as zm:
            for i in range(n):
                amount = rng.randint(100, 500_000)
                refund = i % 10 == 9
                fields = {
                    "查询流水号": f"{i:021d}",
                    "商户订单号": f"R{i:024d}" if refund else f"P{i:024d}",
                    "交易类型": "04" if refund else "01",
                    "交易子类": "00" if refund else "07",
                }
                if refund:
                    fields.update({"原交易查询流水号": f"{i - 1:021d}", "原始交易订单号": f"P{i - 1:024d}"})
                entry = _zm_entry(
                    "777290058160001", code="S22", at=at, amount=amount, fee=amount * 3 // 1000, credit=not refund,
                    **fields,
                )  # fmt: skip
                zm.write(zm_record(entry) + b"\r\n")
        archive.writestr("INN25031488ZME_777290058160001", b"")


def stage_parse(channel: str, n: int, seed: int, bill: str) -> dict[str, Any]:
    """One streaming pass over the statement file (what ``store.fetch`` does to check it, and what a run does
    again to load it): every row built, the summary checked, nothing kept."""
    from gateway.recon.statements import check

    data = Path(bill).read_bytes()
    t0, c0 = time.perf_counter(), time.process_time()
    tally = check(channel, data)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert tally.count == n, (tally.count, n)
    return {"seconds": seconds, "cpu_seconds": cpu, "rows": n, "rows_per_s": n / seconds, "rows_per_cpu_s": n / cpu,
            "bytes": len(data), "peak_rss_mb": peak_rss_mb()}  # fmt: skip


def stage_csv_floor(n: int, seed: int, bill: str) -> dict[str, Any]:
    """The floor under any WeChat parser, on the same file: gunzip, decode and split the lines with the stdlib
    (``gzip`` + ``io.TextIOWrapper`` + ``csv.reader``), converting nothing."""
    import csv

    data = Path(bill).read_bytes()
    t0, c0 = time.perf_counter(), time.process_time()
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as raw, io.TextIOWrapper(raw, encoding="utf-8") as text:
        rows = sum(1 for _ in csv.reader(text)) - 3  # header, summary header, summary
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert rows == n, (rows, n)
    return {"seconds": seconds, "rows_per_s": n / seconds, "rows_per_cpu_s": n / cpu, "peak_rss_mb": peak_rss_mb()}


class DayHis:
    """The HIS side of the day from compact tuples, answering ``recon.fetch`` pages as the bridge would."""

    def __init__(self, day_start: dt.datetime) -> None:
        self.entries: list[tuple[str, int, int]] = []
        self.start = day_start

    def record(self, key: str, amount: int, secs: int) -> dict[str, Any]:
        ref = key.split(":", 1)[1]
        when = (self.start + dt.timedelta(seconds=secs)).replace(tzinfo=None).isoformat()
        if key.startswith("refund:"):
            return {"kind": "refund", "refund_no": ref, "trade_no": "O" + ref[1:], "amount_fen": amount,
                    "receipt_no": f"TF{ref}", "channel": "wechat", "time": when}  # fmt: skip
        return {"kind": "charge", "trade_no": ref, "amount_fen": amount, "receipt_no": f"SF{ref}", "channel": "wechat",
                "time": when}  # fmt: skip

    async def fetch_page(self, day: dt.date, page: int, page_size: int) -> dict[str, Any]:
        chunk = self.entries[(page - 1) * page_size : page * page_size]
        return {
            "records": [self.record(*e) for e in chunk],
            "total": len(self.entries),
            "has_more": page * page_size < len(self.entries),
        }


class StatementChannel:
    def __init__(self, bill: bytes) -> None:
        self.bill = bill

    async def download_bill(self, day: dt.date) -> bytes:
        return self.bill


def _load_platform(path: Path, platform: list[tuple[str, int, int, int]], day_start: dt.datetime) -> None:
    """The gateway's orders and refunds of the day, bulk-inserted (setup, not measured)."""
    import sqlalchemy as sa

    from gateway.store.tables import orders, refunds
    from tests.support.gateway_rig import APP_ID, HOSPITAL, MERCHANT

    engine = sa.create_engine(f"sqlite:///{path}")
    now = dt.datetime.now(dt.UTC)
    base = {"hospital_id": HOSPITAL, "app_id": APP_ID, "merchant_id": MERCHANT, "channel": "wechat",
            "request_digest": "0" * 64, "business_type": "charge", "scene": "native", "subject": "门诊缴费",
            "his_params": {}, "expires_at": now, "created_at": now, "updated_at": now}  # fmt: skip

    def order(no: str, fen: int, paid_at: dt.datetime | None, settled: bool) -> dict[str, Any]:
        return {**base, "business_order_no": f"B{no}", "out_trade_no": no, "amount_fen": fen, "paid_at": paid_at,
                "paid_fen": fen if settled else None, "status": "completed" if settled else "paying",
                "his_state": "done" if settled else "pending"}  # fmt: skip

    with engine.begin() as conn:
        batch: list[dict[str, Any]] = []
        for key, fen, secs, flag in platform:
            ref = key.split(":", 1)[1]
            if key.startswith("pay:"):
                batch.append(order(ref, fen, day_start + dt.timedelta(seconds=secs) if flag else None, bool(flag)))
            else:  # the refunded payment, paid the day before
                batch.append(order("O" + ref[1:], fen, day_start - dt.timedelta(hours=12), True))
            if len(batch) >= 5000:
                conn.execute(orders.insert(), batch)
                batch.clear()
        if batch:
            conn.execute(orders.insert(), batch)
        ids = dict(
            conn.execute(sa.select(orders.c.out_trade_no, orders.c.id).where(orders.c.out_trade_no.like("O%"))).all()
        )
        batch = []
        for key, fen, secs, flag in platform:
            if not key.startswith("refund:"):
                continue
            ref = key.split(":", 1)[1]
            batch.append({"order_id": ids["O" + ref[1:]], "hospital_id": HOSPITAL, "channel": "wechat",
                          "out_refund_no": ref, "amount_fen": fen, "origin": "business",
                          "state": "succeeded" if flag else "processing",
                          "refunded_at": day_start + dt.timedelta(seconds=secs) if flag else None,
                          "created_at": now, "updated_at": now})  # fmt: skip
            if len(batch) >= 5000:
                conn.execute(refunds.insert(), batch)
                batch.clear()
        if batch:
            conn.execute(refunds.insert(), batch)
    engine.dispose()


def stage_e2e(n: int, seed: int, bill: str) -> dict[str, Any]:
    """The whole run on SQLite (``gateway.recon.run_reconciliation``), timed from the statement's bytes to the
    stored exceptions: download → store raw → check → stream rows; HIS pages; platform batches; match; store."""
    return asyncio.run(_e2e(n, seed, Path(bill).parent))


async def _e2e(n: int, seed: int, workdir: Path) -> dict[str, Any]:
    import sqlalchemy as sa

    from gateway.recon import run_reconciliation
    from gateway.recon.normalize import day_bounds
    from gateway.store import registry
    from gateway.store.db import Database
    from gateway.store.migrate import upgrade
    from gateway.store.recon_tables import his_details, recon_exceptions, recon_observations
    from tests.support.gateway_rig import HOSPITAL, MERCHANT, gateway_config, make_keys

    day = dt.date(2025, 3, 14)
    day_start, _ = day_bounds(day)
    path = workdir / "e2e.sqlite3"
    cfg = gateway_config(workdir, make_keys(workdir / "keys"), f"sqlite+aiosqlite:///{path}")
    db = Database(cfg.database.url)
    await upgrade(db)
    await registry.sync_from_config(db, cfg)

    his = DayHis(day_start)
    platform: list[tuple[str, int, int, int]] = []
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", compresslevel=1) as out:
        statement = WechatBillWriter(out)

        def emit(side: str, key: str, amount: int, secs: int, flag: int) -> None:
            if side == "his":
                his.entries.append((key, amount, secs))
            elif side == "platform":
                platform.append((key, amount, secs, flag))
            else:
                ref = key.split(":", 1)[1]
                if key.startswith("pay:"):
                    statement.pay(f"42{ref[1:]}", ref, amount, secs)
                else:
                    statement.refund(f"42{ref[1:]}", "O" + ref[1:], f"503{ref[1:]}", ref, amount, secs)

        injected = generate(n, seed, emit)
        statement.close()
    bill = packed.getvalue()
    del packed
    await asyncio.to_thread(_load_platform, path, platform, day_start)
    sizes = {"his": len(his.entries), "platform": len(platform), "channel": statement.count}
    platform.clear()

    t0, c0 = time.perf_counter(), time.process_time()
    summary = await run_reconciliation(
        db,
        cfg,
        HOSPITAL,
        day,
        channels={MERCHANT: StatementChannel(bill)},
        source=his,  # type: ignore[dict-item]
    )
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    async with db.read() as conn:
        stored = (await conn.execute(sa.select(sa.func.count()).select_from(recon_exceptions))).scalar_one()
        observations = (await conn.execute(sa.select(sa.func.count()).select_from(recon_observations))).scalar_one()
        detail_bytes = (await conn.execute(sa.select(sa.func.sum(his_details.c.size)))).scalar_one()
    await db.close()
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_rss_mb": peak_rss_mb(),
        "bill_bytes": len(bill),
        "sizes": sizes,
        "injected": injected,
        "counts": {k: v for k, v in summary.counts.items() if v},
        "stored_exceptions": int(stored),
        "observation_rows": int(observations),
        "his_detail_bytes": int(detail_bytes or 0),
    }


def child(stage: str, n: int, seed: int, bill: Path | None = None) -> dict[str, Any]:
    extra = ["--bill", str(bill)] if bill is not None else []
    out = subprocess.run(
        [sys.executable, __file__, "--stage", stage, "--rows", str(n), "--seed", str(seed), *extra],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


STAGES: dict[str, Callable[..., dict[str, Any]]] = {
    "recon": stage_recon,
    "pandas": stage_pandas,
    "wechat": lambda n, s, bill: stage_parse("wechat", n, s, bill),
    "alipay": lambda n, s, bill: stage_parse("alipay", n, s, bill),
    "unionpay": lambda n, s, bill: stage_parse("unionpay", n, s, bill),
    "csv_floor": stage_csv_floor,
    "e2e": stage_e2e,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    ap.add_argument("--bill", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        extra = (args.bill,) if args.bill else ()
        print(json.dumps(STAGES[args.stage](args.rows, args.seed, *extra)))
        return

    n = args.rows
    with tempfile.TemporaryDirectory(prefix="bench_recon_") as tmp:
        work = Path(tmp)
        wechat_path, alipay_path = work / "wechat.csv.gz", work / "alipay.csv.zip"
        unionpay_path = work / "unionpay.zm.zip"
        write_wechat_bill(wechat_path, n, args.seed)
        write_alipay_zip(alipay_path, n, args.seed)
        write_unionpay_zip(unionpay_path, n, args.seed)
        ours, pandas = child("recon", n, args.seed), child("pandas", n, args.seed)
        files = (("wechat", wechat_path), ("alipay", alipay_path), ("unionpay", unionpay_path))
        parsed = {name: child(name, n, args.seed, path) for name, path in files}
        floor = child("csv_floor", n, args.seed, wechat_path)
        e2e = child("e2e", n, args.seed, work / "e2e.bill")
    if ours["counts"] != pandas["counts"]:
        raise SystemExit(f"the matchers disagree: ours {ours['counts']} pandas {pandas['counts']}")
    print(f"day of {n:,} entries per side (sizes {ours['sizes']}), injected {ours['injected']}")
    print(f"classes found (both matchers agree): {ours['counts']}")
    print(f"{'':<24}{'seconds':>10}{'peak RSS MB':>14}")
    print(f"{'ours (engine.match)':<24}{ours['seconds']:>10.2f}{ours['peak_rss_mb']:>14.0f}")
    print(f"{'pandas merge baseline':<24}{pandas['seconds']:>10.2f}{pandas['peak_rss_mb']:>14.0f}")
    print(f"(loading the three sides into our dicts, with generation: {ours['generate_and_load_seconds']:.2f} s)")
    for name in ("wechat", "alipay", "unionpay"):
        r = parsed[name]
        print(f"parse {name:<7} {r['rows']:,} rows, {r['bytes'] / 2**20:.0f} MiB packed, one streaming pass: "
              f"{r['seconds']:.2f} s, {r['rows_per_s']:,.0f} rows/s ({r['rows_per_cpu_s']:,.0f} per CPU second), "
              f"peak RSS {r['peak_rss_mb']:.0f} MB")  # fmt: skip
    print(f"stdlib floor (gunzip + decode + csv.reader, no conversion) on the WeChat file: "
          f"{floor['rows_per_s']:,.0f} rows/s ({floor['rows_per_cpu_s']:,.0f} per CPU second), "
          f"peak RSS {floor['peak_rss_mb']:.0f} MB")  # fmt: skip
    print(f"end to end on SQLite (statement bytes -> stored exceptions; sides {e2e['sizes']}): "
          f"{e2e['seconds']:.1f} s ({e2e['cpu_seconds']:.1f} CPU s), peak RSS {e2e['peak_rss_mb']:.0f} MB; "
          f"run counts {e2e['counts']}; {e2e['stored_exceptions']:,} exceptions stored")  # fmt: skip
    detail_mib, bill_mib = e2e["his_detail_bytes"] / 2**20, e2e["bill_bytes"] / 2**20
    print(f"kept for later days: {e2e['observation_rows']:,} evidence rows (entries unresolved within the day), "
          f"HIS daily detail {detail_mib:.1f} MiB (statement {bill_mib:.1f} MiB)")  # fmt: skip
    print(
        json.dumps(
            {
                "rows": n,
                "recon_1m_seconds": round(ours["seconds"], 3),
                "pandas_seconds": round(pandas["seconds"], 3),
                "recon_vs_pandas_ratio": round(ours["seconds"] / pandas["seconds"], 3),
                "recon_peak_rss_mb": round(ours["peak_rss_mb"]),
                "pandas_peak_rss_mb": round(pandas["peak_rss_mb"]),
                "wechat_parse_rows_per_s": round(parsed["wechat"]["rows_per_s"]),
                "alipay_parse_rows_per_s": round(parsed["alipay"]["rows_per_s"]),
                "unionpay_parse_rows_per_s": round(parsed["unionpay"]["rows_per_s"]),
                "parse_peak_rss_mb": round(max(parsed["wechat"]["peak_rss_mb"], parsed["alipay"]["peak_rss_mb"])),
                "wechat_parse_rows_per_cpu_s": round(parsed["wechat"]["rows_per_cpu_s"]),
                "alipay_parse_rows_per_cpu_s": round(parsed["alipay"]["rows_per_cpu_s"]),
                "wechat_parse_vs_csv_floor_ratio": round(
                    parsed["wechat"]["rows_per_cpu_s"] / floor["rows_per_cpu_s"], 3
                ),
                "recon_e2e_1m_seconds": round(e2e["seconds"], 2),
                "recon_e2e_1m_cpu_seconds": round(e2e["cpu_seconds"], 2),
                "recon_e2e_peak_rss_mb": round(e2e["peak_rss_mb"]),
                "recon_e2e_evidence_rows": e2e["observation_rows"],
                "recon_e2e_his_detail_mib": round(e2e["his_detail_bytes"] / 2**20, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
