"""The main job on embedded defaults, as an implementer would first see it.

Starts the sandbox HIS and the bridge agent as real processes with development certificates, then drives a
registration, an outpatient charge, a partial refund and its write-back through ``BridgeClient`` over mutual
TLS, printing each answer. Then the cloud side (``demo_gateway``): the sandbox payment channels and the gateway
as processes too, and as a hospital app a payment, a partial and a full refund through gateway → channel →
bridge → sandbox HIS, ending with the three ledgers side by side. Everything it makes is under ``var/demo/``
(removed at the next run); every process it started is stopped however it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from types import FrameType
from zoneinfo import ZoneInfo

import aiohttp
import demo_gateway
import demo_kiosk
from demo_support import BIN, REPO, Processes, bridge_client, free_port, shown, step, until

from bridge import protocol
from bridge.certs import DevCerts
from bridge.client import BridgeResult


def show(answer: BridgeResult) -> None:
    fields = {k: v for k, v in answer.body.items() if v is not None}
    print(f"   HTTP {answer.http_status}  " + json.dumps(fields, ensure_ascii=False), flush=True)


def run_cli(*args: str) -> str:
    """Run ``his-bridge`` as an implementer would, and return its output indented for the transcript."""
    out = subprocess.run([str(BIN / "his-bridge"), *args], check=True, capture_output=True, text=True)
    return "\n".join("   " + line for line in out.stdout.rstrip().splitlines())


def start_sandbox(procs: Processes, work: Path) -> str:
    proc = procs.start(
        "sandbox", [str(BIN / "his-sandbox"), "his", "--listen", "127.0.0.1:0", "--db", str(work / "his.sqlite3")],
        read_stdout=True,
    )  # fmt: skip
    return procs.announcements("sandbox", proc, r"(http://[\d.]+:\d+)")[0]


def write_config(work: Path, his_url: str, extra: str = "") -> tuple[Path, int, int]:
    """The shipped example config, pointed at this run's ports and sandbox (and ``extra`` sections appended)."""
    api_port, ops_port = free_port(), free_port()
    text = (REPO / "config" / "bridge.example.toml").read_text(encoding="utf-8")
    text = text.replace('listen = "0.0.0.0:8443"', f'listen = "127.0.0.1:{api_port}"')
    text = text.replace('ops_listen = "127.0.0.1:9109"', f'ops_listen = "127.0.0.1:{ops_port}"')
    text = text.replace(
        '# overrides = { "soap.base_url" = "http://10.0.0.5:8080" }', f'overrides = {{ "soap.base_url" = "{his_url}" }}'
    )
    (work / "profiles").mkdir()
    shutil.copy(REPO / "config" / "profiles" / "sandbox-soap.toml", work / "profiles")
    config = work / "bridge.toml"
    protocol.write_private(config, (text + extra).encode("utf-8"))
    return config, api_port, ops_port


async def wait_ready(ops_url: str, procs: Processes, agent: subprocess.Popen[bytes]) -> None:
    async def ready() -> bool:
        procs.check("agent", agent)
        try:
            async with aiohttp.ClientSession() as session, session.get(ops_url + "/readyz") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    await until(ready, bool, "the agent to be ready")


async def drive(certs: DevCerts, api_url: str) -> None:
    client = bridge_client(certs, api_url)
    run = uuid.uuid4().hex[:8].upper()
    now = dt.datetime.now(ZoneInfo("Asia/Shanghai")).isoformat(timespec="seconds")
    async with client:
        step("patient.query — find the patient by medical card C0001")
        patient = await client.call("patient.query", {"card_no": "C0001"})
        show(patient)
        pid = patient.result["patient_id"] if patient.result else "P0001"

        step("registration.lock — hold a slot in schedule S001 while the patient pays")
        lock = await client.call(
            "registration.lock",
            {"request_id": f"demo-{run}-lock", "trade_no": f"REG{run}", "patient_id": pid, "schedule_id": "S001"},
        )
        show(lock)
        step("registration.commit — the payment succeeded: record the registration in the HIS")
        show(
            await client.call(
                "registration.commit",
                {
                    "request_id": f"demo-{run}-reg",
                    "trade_no": f"REG{run}",
                    "patient_id": pid,
                    "schedule_id": "S001",
                    "lock_id": lock.result["lock_id"] if lock.result else None,
                    "amount_fen": lock.result["amount_fen"] if lock.result else 1000,
                    "channel": "wechat",
                    "channel_trade_no": f"4200{run}01",
                    "paid_at": now,
                },
            )
        )

        step("bills.unpaid — the patient's outpatient bills")
        bills = await client.call("bills.unpaid", {"patient_id": pid})
        show(bills)
        items = bills.result["bills"] if bills.result else []
        total = sum(b["amount_fen"] for b in items)
        step(f"charge.commit — pay {len(items)} bills, {total / 100:.2f} yuan, by Alipay")
        show(
            await client.call(
                "charge.commit",
                {
                    "request_id": f"demo-{run}-chg",
                    "trade_no": f"CHG{run}",
                    "patient_id": pid,
                    "bill_nos": [b["bill_no"] for b in items],
                    "amount_fen": total,
                    "channel": "alipay",
                    "channel_trade_no": f"2026{run}02",
                    "paid_at": now,
                },
            )
        )

        part = items[0]["amount_fen"] if items else 100
        step(f"refund.apply — medical insurance covered {part / 100:.2f} yuan: ask the HIS first")
        show(
            await client.call(
                "refund.apply",
                {
                    "request_id": f"demo-{run}-rfa",
                    "trade_no": f"CHG{run}",
                    "refund_no": f"RF{run}",
                    "amount_fen": part,
                    "reason": "insurance settlement",
                },
            )
        )
        step("refund.writeback — the channel refunded: record its serial in the HIS")
        show(
            await client.call(
                "refund.writeback",
                {
                    "request_id": f"demo-{run}-rfw",
                    "trade_no": f"CHG{run}",
                    "refund_no": f"RF{run}",
                    "amount_fen": part,
                    "channel_refund_no": f"ALIRF{run}",
                    "refunded_at": now,
                },
            )
        )

        step("the same write-back again (a retry): the journal answers with the stored outcome")
        show(
            await client.call(
                "refund.writeback",
                {
                    "request_id": f"demo-{run}-rfw",
                    "trade_no": f"CHG{run}",
                    "refund_no": f"RF{run}",
                    "amount_fen": part,
                    "channel_refund_no": f"ALIRF{run}",
                    "refunded_at": now,
                },
            )
        )

        step("trade.check — did the HIS record the charge?")
        show(await client.call("trade.check", {"trade_no": f"CHG{run}", "operation": "charge.commit"}))


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(REPO / "var" / "demo"), help="where to put certs, config, journal")
    parser.add_argument(
        "--channel", choices=("wechat", "alipay", "unionpay"), default="wechat", help="how the payer pays"
    )
    parser.add_argument("--no-wait", action="store_true", help="on a terminal, stop at once instead of waiting")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    procs = Processes(work)
    try:
        step("his-bridge certs dev — a development CA, server and client certificates, signing keys")
        print(run_cli("certs", "dev", "--out", str(work / "certs")))
        his_url = start_sandbox(procs, work)
        print(f"   sandbox HIS: {his_url}/his/HisService.asmx?wsdl")
        certs = DevCerts(work / "certs")
        kiosk, kiosk_toml = demo_kiosk.prepare(work, certs, his_url)
        config, api_port, ops_port = write_config(work, his_url, kiosk_toml)
        step(f"his-bridge check --config {shown(config)}")
        print(run_cli("check", "--config", str(config)))
        agent = procs.start("agent", [str(BIN / "his-bridge"), "serve", "--config", str(config)])
        ops_url = f"http://127.0.0.1:{ops_port}"
        asyncio.run(wait_ready(ops_url, procs, agent))
        api_url = f"https://127.0.0.1:{api_port}"
        print(f"   agent: {api_url} (mTLS), metrics {ops_url}/metrics")
        asyncio.run(drive(certs, api_url))
        step("his-bridge journal list — what the agent journaled")
        print(run_cli("journal", "--config", str(config), "list"))
        asyncio.run(demo_gateway.run(work, certs, api_url, procs, args.channel, kiosk))
        print(f"\nDone. Certificates, keys, configs, journal and databases are in {shown(work)}.")
        if sys.stdin.isatty() and not args.no_wait:
            input("Everything is still running: open the finance console above. Press Enter to stop. ")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.stop()
        print(f"Stopped every process the demo started. Logs: {procs.logs()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
