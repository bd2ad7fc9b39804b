"""The main job on embedded defaults, as an implementer would first see it.

Starts the sandbox HIS and the bridge agent as real processes with development certificates, then drives a
registration, an outpatient charge, a partial refund and its write-back through ``BridgeClient`` over mutual
TLS, printing each answer. Everything it makes is under ``var/demo/`` (removed at the next run).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

from bridge import protocol, tls
from bridge.certs import DevCerts
from bridge.client import BridgeClient, BridgeResult

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def show(answer: BridgeResult) -> None:
    shown = {k: v for k, v in answer.body.items() if v is not None}
    print(f"   HTTP {answer.http_status}  " + json.dumps(shown, ensure_ascii=False), flush=True)


def run_cli(*args: str) -> str:
    """Run ``his-bridge`` as an implementer would, and return its output indented for the transcript."""
    out = subprocess.run([str(BIN / "his-bridge"), *args], check=True, capture_output=True, text=True)
    return "\n".join("   " + line for line in out.stdout.rstrip().splitlines())


def start_sandbox(work: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [str(BIN / "his-sandbox"), "his", "--listen", "127.0.0.1:0", "--db", str(work / "his.sqlite3")],
        stdout=subprocess.PIPE,
        stderr=(work / "sandbox.log").open("w"),
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"(http://[\d.]+:\d+)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"sandbox HIS did not start: {line!r} (see {work / 'sandbox.log'})")
    return proc, match.group(1)


def write_config(work: Path, his_url: str) -> tuple[Path, int, int]:
    """The shipped example config, pointed at this run's ports and sandbox."""
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
    config.write_text(text, encoding="utf-8")
    config.chmod(0o600)
    return config, api_port, ops_port


async def wait_ready(ops_url: str, proc: subprocess.Popen[Any]) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            if proc.poll() is not None:
                raise SystemExit(f"the agent exited with {proc.returncode}; see var/demo/agent.log")
            try:
                async with session.get(ops_url + "/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("the agent did not become ready in 30 s; see var/demo/agent.log")


async def drive(certs: DevCerts, api_url: str) -> None:
    client = BridgeClient(
        api_url,
        signing_key=protocol.load_signing_key("platform", certs.platform_signing_key),
        bridge_key=protocol.load_verify_key("bridge-H001", certs.bridge_signing_pub),
        ssl_context=tls.client_context(certs.ca_cert, certs.client_cert, certs.client_key),
    )
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", default=str(REPO / "var" / "demo"), help="where to put certs, config, journal")
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    step("his-bridge certs dev — a development CA, server and client certificates, signing keys")
    print(run_cli("certs", "dev", "--out", str(work / "certs")))
    sandbox, his_url = start_sandbox(work)
    agent: subprocess.Popen[Any] | None = None
    try:
        print(f"   sandbox HIS: {his_url}/his/HisService.asmx?wsdl")
        config, api_port, ops_port = write_config(work, his_url)
        step(f"his-bridge check --config {config.relative_to(REPO) if config.is_relative_to(REPO) else config}")
        print(run_cli("check", "--config", str(config)))
        agent = subprocess.Popen(
            [str(BIN / "his-bridge"), "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=(work / "agent.log").open("w"),
        )
        ops_url = f"http://127.0.0.1:{ops_port}"
        asyncio.run(wait_ready(ops_url, agent))
        print(f"   agent: https://127.0.0.1:{api_port} (mTLS), metrics {ops_url}/metrics")
        asyncio.run(drive(DevCerts(work / "certs"), f"https://127.0.0.1:{api_port}"))
        step("his-bridge journal list — what the agent journaled")
        print(run_cli("journal", "--config", str(config), "list"))
        print(f"\nDone. Logs, journal and config are in {work}.")
    finally:
        for proc in (agent, sandbox):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
