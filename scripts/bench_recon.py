#!/usr/bin/env python3
"""Benchmark reconciliation: a synthetic day of N entries (default 1,000,000) on each of the three sides
(HIS, platform, channel) with discrepancies of every class injected, matched by our core
(``gateway.recon.engine.match``, pure Python over compact keys) and, in the same run, by a pandas merge
baseline that implements the same rules; plus the parse rate of a WeChat trade bill, an Alipay statement zip and
a UnionPay reconciliation zip (fixed-width ZM records) of N rows each.

    .venv/bin/python scripts/bench_recon.py [--rows 1000000] [--seed 7]

Each stage runs in its own child process so that its peak RSS is its own. Both matchers start from the sides
already in memory (ours: dicts of tuples; pandas: DataFrames) and must agree on every class count. The last
line is one JSON object with ``recon_1m_seconds``, ``recon_vs_pandas_ratio`` (ours / pandas time),
``recon_peak_rss_mb``, ``wechat_parse_rows_per_s``, ``alipay_parse_rows_per_s`` and ``unionpay_parse_rows_per_s``.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import io
import json
import random
import resource
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
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
    from gateway.recon.engine import Side, match

    sides = {"his": Side(), "platform": Side(), "channel": Side()}
    adders = {name: side.add for name, side in sides.items()}
    t0 = time.perf_counter()
    injected = generate(n, seed, lambda side, k, a, s, f: adders[side](k, a, s, f))
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = match(sides["his"], sides["platform"], sides["channel"], window_s=WINDOW_S)
    seconds = time.perf_counter() - t0
    counts: dict[str, int] = {"matched": out.matched, "cross_day": len(out.held)}
    for cls in out.flagged.values():
        counts[cls.name] = counts.get(cls.name, 0) + 1
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
    late_c = (m["c_s"] >= DAY_S - WINDOW_S).to_numpy()
    late_h = (m["h_s"] >= DAY_S - WINDOW_S).to_numpy()
    late_p = (m["p_s"] >= DAY_S - WINDOW_S).to_numpy()
    amt_bad = (ca != ha) | (~np.isnan(pa) & (pa != ha))
    is_dup = m["key"].isin(dup).to_numpy()
    hc = H & C
    c_only = ~H & C
    h_only = H & ~C
    no_his = c_only & (pf == 2)
    conds = [
        is_dup,
        hc & amt_bad,
        hc & ~P,
        hc,
        no_his & (pa == ca),
        no_his,
        c_only & late_c,
        c_only,
        h_only & late_h,
        h_only,
        ~H & ~C & P & late_p,
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
        "cross_day",
        over_under,
        "cross_day",
        under_over,
        "cross_day",
        "status_mismatch",
    ]
    cls = np.select(conds, choices, default="none")
    values, freq = np.unique(cls, return_counts=True)
    seconds = time.perf_counter() - t0
    counts = {str(v): int(f) for v, f in zip(values, freq, strict=True) if v != "none"}
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "counts": counts}


def wechat_bill(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    header = (
        "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,"
        "货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,"
        "商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注"
    )
    lines = [header]
    settled = refunded = fee_units = 0
    for i in range(n):
        fen = rng.randint(100, 500_000)
        fee = fen * 6 // 10  # in 1e-5 yuan: 0.6 %
        t = f"2025-03-14 {i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}"
        y = f"{fen // 100}.{fen % 100:02d}"
        if i % 10 == 9:
            refunded += fen
            fee_units -= fee
            lines.append(
                f"`{t},`wx1,`1230000109,`0,`,`42{i:026d},`P{i:011d},`o1,`NATIVE,`REFUND,`OTHERS,`CNY,`0.00,`0.00,"
                f"`503{i:026d},`R{i:011d},`{y},`0.00,`ORIGINAL,`SUCCESS,`门诊缴费,`,"
                f"`-{fee // 100000}.{fee % 100000:05d},`0.60%,`0.00,`{y},`"
            )
        else:
            settled += fen
            fee_units += fee
            lines.append(
                f"`{t},`wx1,`1230000109,`0,`,`42{i:026d},`P{i:011d},`o1,`NATIVE,`SUCCESS,`OTHERS,`CNY,`{y},`0.00,"
                f"`0,`0,`0.00,`0.00,`,`,`门诊缴费,`,`{fee // 100000}.{fee % 100000:05d},`0.60%,`{y},`0.00,`"
            )
    sign = "-" if fee_units < 0 else ""
    fu = abs(fee_units)
    lines.append("总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额")
    lines.append(
        f"`{n},`{settled // 100}.{settled % 100:02d},`{refunded // 100}.{refunded % 100:02d},`0.00,"
        f"`{sign}{fu // 100000}.{fu % 100000:05d},`{settled // 100}.{settled % 100:02d},"
        f"`{refunded // 100}.{refunded % 100:02d}"
    )
    return ("\n".join(lines) + "\n").encode()


def alipay_zip(n: int, seed: int) -> bytes:
    from sandbox.channels.bills import ALIPAY_DETAIL_COLUMNS

    rng = random.Random(seed)
    rows = []
    pays = refunds = income = net = 0
    for i in range(n):
        fen = rng.randint(100, 500_000)
        fee = fen * 6 // 1000
        t = f"2025-03-14 {i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}"
        y = f"{fen // 100}.{fen % 100:02d}"
        f = f"{fee // 100}.{fee % 100:02d}"
        if i % 10 == 9:
            refunds += 1
            net -= fen
            values = [f"20250314{i:020d}", f"P{i:011d}", "退款", "门诊缴费", t, t, "", "", "", "", "a***@b.com",
                      y, f"-{y}", "0.00", "0.00", "0.00", "0.00", "0.00", "", "0.00", "0.00", f"R{i:011d}", f,
                      "0.00", ""]  # fmt: skip
        else:
            pays += 1
            income += fen
            net += fen
            values = [f"20250314{i:020d}", f"P{i:011d}", "交易", "门诊缴费", t, t, "", "", "", "", "a***@b.com",
                      y, y, "0.00", "0.00", "0.00", "0.00", "0.00", "", "0.00", "0.00", "", f"-{f}", "0.00",
                      ""]  # fmt: skip
        rows.append(",".join(v + "\t" for v in values))
    detail = "\r\n".join(
        [
            "#支付宝业务明细查询",
            "#账号：[2088102146225135]",
            ALIPAY_DETAIL_COLUMNS,
            *rows,
            f"#交易合计：{pays}笔，退款合计：{refunds}笔",
        ]
    )
    y_income, y_net = (
        f"{income // 100}.{income % 100:02d}",
        f"{'-' if net < 0 else ''}{abs(net) // 100}.{abs(net) % 100:02d}",
    )
    summary = "\r\n".join(
        [
            "门店编号,门店名称,交易订单总笔数,退款订单总笔数,订单金额（元）,商家实收（元）",
            f"合计,,{pays},{refunds},{y_income},{y_net}",
        ]
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("2088_20250314_业务明细.csv", detail.encode("gbk"))
        archive.writestr("2088_20250314_业务明细(汇总).csv", summary.encode("gbk"))
    return out.getvalue()


def unionpay_zip(n: int, seed: int) -> bytes:
    """A UnionPay reconciliation zip of N fixed-width ZM records (9 consumes to 1 refund), built with the sandbox's
    record writer."""
    from sandbox.channels.unionpay import _zm_entry, zm_record

    rng = random.Random(seed)
    at = datetime.datetime(2025, 3, 14, 10, 0)
    out = io.BytesIO()
    archive = zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1)
    zm = archive.open("INN25031488ZM_777290058160001", "w", force_zip64=True)
    for i in range(n):
        amount = rng.randint(100, 500_000)
        fee = amount * 3 // 1000
        refund = i % 10 == 9
        fields = {
            "查询流水号": f"{i:021d}",
            "商户订单号": f"R{i:024d}" if refund else f"P{i:024d}",
            "交易类型": "04" if refund else "01",
            "交易子类": "00" if refund else "07",
        }
        if refund:
            fields.update({"原交易查询流水号": f"{i - 1:021d}", "原始交易订单号": f"P{i - 1:024d}"})
        entry = _zm_entry("777290058160001", code="S22", at=at, amount=amount, fee=fee, credit=not refund, **fields)
        zm.write(zm_record(entry) + b"\r\n")
    zm.close()
    archive.writestr("INN25031488ZME_777290058160001", b"")
    archive.close()
    return out.getvalue()


def stage_parse(channel: str, n: int, seed: int) -> dict[str, Any]:
    from gateway.recon.statements import parse

    makers = {"wechat": wechat_bill, "alipay": alipay_zip, "unionpay": unionpay_zip}
    data = makers[channel](n, seed)
    if channel == "wechat":
        data = gzip.compress(data, compresslevel=1)
    t0 = time.perf_counter()
    parsed = parse(channel, data)
    seconds = time.perf_counter() - t0
    assert len(parsed.rows) == n
    return {"seconds": seconds, "rows": n, "rows_per_s": n / seconds, "bytes": len(data), "peak_rss_mb": peak_rss_mb()}


def child(stage: str, n: int, seed: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--stage", stage, "--rows", str(n), "--seed", str(seed)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def stages() -> Iterator[tuple[str, Callable[[int, int], dict[str, Any]]]]:
    yield "recon", stage_recon
    yield "pandas", stage_pandas
    yield "wechat", lambda n, s: stage_parse("wechat", n, s)
    yield "alipay", lambda n, s: stage_parse("alipay", n, s)
    yield "unionpay", lambda n, s: stage_parse("unionpay", n, s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--stage", choices=[name for name, _ in stages()], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        print(json.dumps(dict(stages())[args.stage](args.rows, args.seed)))
        return

    n = args.rows
    results = {name: child(name, n, args.seed) for name, _ in stages()}
    ours, pandas = results["recon"], results["pandas"]
    if ours["counts"] != pandas["counts"]:
        raise SystemExit(f"the matchers disagree: ours {ours['counts']} pandas {pandas['counts']}")
    print(f"day of {n:,} entries per side (sizes {ours['sizes']}), injected {ours['injected']}")
    print(f"classes found (both matchers agree): {ours['counts']}")
    print(f"{'':<24}{'seconds':>10}{'peak RSS MB':>14}")
    print(f"{'ours (engine.match)':<24}{ours['seconds']:>10.2f}{ours['peak_rss_mb']:>14.0f}")
    print(f"{'pandas merge baseline':<24}{pandas['seconds']:>10.2f}{pandas['peak_rss_mb']:>14.0f}")
    print(f"(loading the three sides into our dicts, with generation: {ours['generate_and_load_seconds']:.2f} s)")
    for name in ("wechat", "alipay", "unionpay"):
        r = results[name]
        print(f"parse {name:<7} {r['rows']:,} rows, {r['bytes'] / 2**20:.0f} MiB packed: {r['seconds']:.2f} s, "
              f"{r['rows_per_s']:,.0f} rows/s, peak RSS {r['peak_rss_mb']:.0f} MB")  # fmt: skip
    print(
        json.dumps(
            {
                "rows": n,
                "recon_1m_seconds": round(ours["seconds"], 3),
                "pandas_seconds": round(pandas["seconds"], 3),
                "recon_vs_pandas_ratio": round(ours["seconds"] / pandas["seconds"], 3),
                "recon_peak_rss_mb": round(ours["peak_rss_mb"]),
                "pandas_peak_rss_mb": round(pandas["peak_rss_mb"]),
                "wechat_parse_rows_per_s": round(results["wechat"]["rows_per_s"]),
                "alipay_parse_rows_per_s": round(results["alipay"]["rows_per_s"]),
                "unionpay_parse_rows_per_s": round(results["unionpay"]["rows_per_s"]),
            }
        )
    )


if __name__ == "__main__":
    main()
