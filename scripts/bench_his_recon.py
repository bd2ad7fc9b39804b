"""Benchmark of the HIS side of T+1: one day's ``recon.fetch`` pulled through the SOAP profile, page by page, with
refunds listed by the day applied and carrying their state (issue 10).

- **day pull**: a sandbox HIS (a subprocess over a prepared SQLite file) holds one day of deposits and refunds
  (a third of the trades refunded; of those, half written back, a tenth cancelled). The ``sandbox-soap``
  profile's adapter reads every page of 1000 records and each page is validated against the catalog, as the
  agent does before answering the gateway. Figure: records per second, median of the rounds.
- **validation, ours vs before**: the same pages validated with today's ``ReconFetchOut`` (refund state, channel
  refund serial, write-back time, and the check that only refund records carry them) and with the record shape
  before issue 10 (a copy below, the refund fields left out of the records), in alternating rounds. Figure:
  microseconds per record for each (fastest round), and their ratio: what the new fields cost the agent.

    .venv/bin/python scripts/bench_his_recon.py                 # 30,000 records (about 40 s)
    .venv/bin/python scripts/bench_his_recon.py --records 3000  # smoke run

This is a benchmark, not a test: it prints a table, then one JSON object as its last line, and never fails on
the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parents[1]
if str(REPO) not in sys.path:  # run as a file from anywhere: import the repo's packages
    sys.path.insert(0, str(REPO))

from benchkit import Children, log, machine, read_announcements, run_in_workdir  # noqa: E402

from adapters.profile import load_profile  # noqa: E402
from bridge import catalog  # noqa: E402
from sandbox.his.state import SHANGHAI, HisState  # noqa: E402

BENCH_ROOT = REPO / "var" / "bench"
DAY = dt.date(2025, 11, 14)
PAGE = 1000
REFUND_FIELDS = ("refund_state", "channel_refund_no", "written_back_at")


class OldReconRecord(catalog.Strict):
    """``ReconRecord`` as it was before issue 10, the baseline of the validation figure."""

    trade_no: catalog.Code
    kind: Literal["registration", "charge", "prepay", "refund"]
    receipt_no: catalog.Code | None = None
    amount_fen: catalog.Fen
    channel: catalog.Channel | None = None
    channel_trade_no: catalog.Code | None = None
    refund_no: catalog.Code | None = None
    time: dt.datetime


class OldReconFetchOut(catalog.Strict):
    records: Annotated[list[OldReconRecord], Field(max_length=1000)]
    total: Annotated[int, Field(ge=0)]
    has_more: bool


def build_day(path: Path, records: int) -> dict[str, int]:
    """Deposits paid through the day, a third refunded: half written back, a tenth of them cancelled."""
    moment = dt.datetime.combine(DAY, dt.time(8, 0), tzinfo=SHANGHAI)

    def clock() -> dt.datetime:
        return moment

    state = HisState(path, clock=clock)
    state.seed()
    trades = max(3, records * 3 // 4)
    counts = {"trades": 0, "refunds_applied": 0, "refunds_written_back": 0, "refunds_cancelled": 0}
    for i in range(trades):
        moment = dt.datetime.combine(DAY, dt.time(8, 0), tzinfo=SHANGHAI) + dt.timedelta(seconds=i * 50_000 // trades)
        trade_no = f"T{i:08d}"
        state.commit_prepay(trade_no, "P0003", "Z0001", 10_000, "WX", f"wx{trade_no}", moment)
        counts["trades"] += 1
        if i % 3:
            continue
        refund_no = f"R{i:08d}"
        state.apply_refund(trade_no, refund_no, 2_500, "医保结算")
        if i % 30 == 0:
            state.cancel_refund(trade_no, refund_no)
            counts["refunds_cancelled"] += 1
        elif i % 2 == 0:
            state.writeback_refund(trade_no, refund_no, 2_500, f"wxr{refund_no}", moment)
            counts["refunds_written_back"] += 1
        else:
            counts["refunds_applied"] += 1
    state.close()
    return counts


async def pull_day(adapter: Any) -> tuple[list[dict[str, Any]], float]:
    pages, page, started = [], 1, time.perf_counter()
    while True:
        params = catalog.ReconFetchIn(date=DAY, page=page, page_size=PAGE).model_dump(mode="json")
        answer = catalog.ReconFetchOut.model_validate(await adapter.call("recon.fetch", params))
        pages.append(answer.model_dump(mode="json"))
        if not answer.has_more:
            return pages, time.perf_counter() - started
        page += 1


def validation_us(sides: dict[str, tuple[type[catalog.Strict], list[dict[str, Any]]]], rounds: int) -> dict[str, float]:
    """Microseconds per record for each side: the sides alternate round by round (background load on a shared
    machine hits both alike), and the fastest round counts, the one least disturbed."""
    best = dict.fromkeys(sides, float("inf"))
    for round_no in range(rounds):
        order = list(sides) if round_no % 2 == 0 else list(reversed(sides))
        for name in order:
            model, pages = sides[name]
            started = time.perf_counter()
            for page in pages:
                model.model_validate(page)
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: best[name] / sum(len(p["records"]) for p in sides[name][1]) * 1e6 for name in sides}


def without_refund_fields(pages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**p, "records": [{k: v for k, v in r.items() if k not in REFUND_FIELDS} for r in p["records"]]} for p in pages
    ]


async def run(children: Children, workdir: Path, records: int, rounds: int) -> dict[str, Any]:
    db = workdir / "his.sqlite3"
    started = time.perf_counter()
    counts = build_day(db, records)
    log(f"day built in {time.perf_counter() - started:.1f} s: {counts}")
    proc = children.start(
        [sys.executable, "-m", "sandbox.cli", "his", "--listen", "127.0.0.1:0", "--db", str(db), "--no-seed"],
        workdir / "sandbox.log",
        stdout_pipe=True,
    )
    url = read_announcements(proc, ["sandbox HIS listening on"])["sandbox HIS listening on"]
    profile = load_profile(
        REPO / "config" / "profiles" / "sandbox-soap.toml",
        catalog.OPERATIONS,
        read_operations=catalog.READ_OPERATIONS,
        overrides={"soap.base_url": url.removesuffix("/his/HisService.asmx")},
        environ={},
    )
    adapter = profile.build_adapter()
    await adapter.start()
    try:
        pages, _ = await pull_day(adapter)  # warm-up
        walls = [(await pull_day(adapter))[1] for _ in range(rounds)]
    finally:
        await adapter.close()
    listed = sum(len(p["records"]) for p in pages)
    states: dict[str, int] = {}
    for page in pages:
        for record in page["records"]:
            key = record["refund_state"] or record["kind"]
            states[key] = states.get(key, 0) + 1
    expected = counts["trades"] + counts["refunds_applied"] + counts["refunds_written_back"]
    assert listed == expected, f"the day lists {listed} records, expected {expected}"
    figures = validation_us(
        {"ours": (catalog.ReconFetchOut, pages), "before": (OldReconFetchOut, without_refund_fields(pages))},
        rounds * 4,
    )
    ours, before = figures["ours"], figures["before"]
    per_s = listed / statistics.median(walls)
    print(f"{'day records':<44}{listed:>12,}   {states}")
    print(f"{'recon.fetch through the SOAP profile':<44}{per_s:>12,.0f} records/s (median of {rounds})")
    print(f"{'catalog validation, with refund fields':<44}{ours:>12.2f} us/record")
    print(f"{'catalog validation, record shape before':<44}{before:>12.2f} us/record")
    return {
        "his_recon_records": listed,
        "his_recon_fetch_records_per_s": round(per_s),
        "recon_validate_us_per_record": round(ours, 2),
        "recon_validate_before_us_per_record": round(before, 2),
        "recon_validate_vs_before_ratio": round(ours / before, 3),
        "machine": machine(["pydantic", "zeep", "lxml"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=30_000, help="about how many records the day holds")
    parser.add_argument("--rounds", type=int, default=5, help="timed pulls of the whole day")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (database, logs)")
    args = parser.parse_args()
    return run_in_workdir(
        "his-recon-", args.keep, lambda children, workdir: run(children, workdir, args.records, args.rounds), BENCH_ROOT
    )


if __name__ == "__main__":
    sys.exit(main())
