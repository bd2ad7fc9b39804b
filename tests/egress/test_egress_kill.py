"""The agent killed with SIGKILL again and again while kiosks pay and a window refunds through it, concurrently.

The agent is a real process (``his-bridge serve``), so a kill loses its memory, its tasks and its sockets mid
forward. Terminals behave as the API tells them to: a request whose answer was lost is sent again with the same
request id and body, and a ``pending`` is asked about until it is final. At the end every request has a
definite answer, the channel sandbox took every payment answered ``paid`` exactly once and nothing else, and
paid back every refund answered ``succeeded`` exactly once and nothing else.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from sandbox.his.state import HisError
from tests.support.egress_rig import (
    CERT_KIOSK,
    KIOSK,
    WINDOW,
    agent_config,
    agent_process_ready,
    egress_rig,
    pay_body,
    start_agent_process,
    stop_process,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

ROUNDS = 4
PAYERS_PER_KIOSK = 4
REFUNDERS = 3
FINAL_PAY = {"paid", "failed", "closed"}
FINAL_REFUND = {"succeeded", "rejected", "failed"}


@dataclass
class Ledger:
    """What the terminals sent and what they were told."""

    sent: dict[tuple[str, str], tuple[str, dict[str, Any]]] = field(default_factory=dict)
    answers: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    paid: list[dict[str, Any]] = field(default_factory=list)
    counter: int = 0

    def next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter:06d}"


async def kiosk_loop(rig: Any, client: Any, terminal: str, ledger: Ledger, stop: asyncio.Event) -> None:
    while not stop.is_set():
        request_id = ledger.next_id("KP")
        channel = random.choice(("wechat", "alipay"))
        body = pay_body(request_id, amount_fen=1_000, auth_code=await rig.admin.code(channel, "pays"))
        ledger.sent[(terminal, request_id)] = ("pay.codepay", body)
        try:
            _, answer = await client.call("pay.codepay", body)
        except (TimeoutError, aiohttp.ClientError):
            continue
        if "status" in answer:
            ledger.answers[(terminal, request_id)] = answer
            if answer["status"] == "paid":
                ledger.paid.append(answer)


async def window_loop(rig: Any, client: Any, ledger: Ledger, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if not ledger.paid:
            await asyncio.sleep(0.05)
            continue
        payment = random.choice(ledger.paid)
        request_id = ledger.next_id("WR")
        amount = random.choice((200, 300, 700))
        his_no = f"TF{request_id}"
        try:
            rig.his.state.apply_refund(payment["out_trade_no"], his_no, amount, "窗口退费")
        except HisError:
            await asyncio.sleep(0.05)  # the HIS itself will not refund more than was paid: the window does not ask
            continue
        body = {"request_id": request_id, "out_trade_no": payment["out_trade_no"], "amount_fen": amount,
                "his_refund_no": his_no}  # fmt: skip
        ledger.sent[(WINDOW, request_id)] = ("refund", body)
        try:
            _, answer = await client.call("refund", body)
        except (TimeoutError, aiohttp.ClientError):
            continue
        if "status" in answer:
            ledger.answers[(WINDOW, request_id)] = answer


async def settle(client: Any, operation: str, body: dict[str, Any]) -> dict[str, Any]:
    """What a terminal does after losing touch: send the same request again, then ask until it is final."""
    _, answer = await client.call(operation, body)
    query, final = ("refund.query", FINAL_REFUND) if operation == "refund" else ("pay.query", FINAL_PAY)
    for _ in range(600):
        if answer.get("status") in final:
            return answer
        await asyncio.sleep(0.2)
        _, answer = await client.call(query, {"request_id": body["request_id"]})
    raise AssertionError(f"{body['request_id']} never became final: {answer}")


async def test_sigkill_during_forwards_never_pays_or_refunds_twice(tmp_path, dev_certs, channel_keys, his, gateway_pg):
    random.seed(20261201)
    async with egress_rig(
        tmp_path, dev_certs, channel_keys, his, db_url=gateway_pg, start_agent_here=False, answer_deadline_s=5
    ) as rig:
        for match, ms in (("wechat.create.codepay", 120), ("alipay.trade.pay", 120), ("wechat.refund", 80)):
            await rig.admin.call("POST", "/faults", {"match": match, "mode": "latency", "latency_ms": ms})
        config = agent_config(rig.certs, rig.keys, rig.ports, tmp_path, his.base_url, answer_deadline_s=5)
        log = tmp_path / "agent.log"
        ledger = Ledger()
        terminals = {KIOSK: rig.terminal(KIOSK), CERT_KIOSK: rig.terminal(CERT_KIOSK, cert=True)}
        window = rig.terminal(WINDOW)
        for _ in range(ROUNDS):
            proc = start_agent_process(config, log)
            try:
                await agent_process_ready(rig, proc)
                stop = asyncio.Event()
                workers = [
                    asyncio.create_task(kiosk_loop(rig, client, terminal, ledger, stop))
                    for terminal, client in terminals.items()
                    for _ in range(PAYERS_PER_KIOSK)
                ] + [asyncio.create_task(window_loop(rig, window, ledger, stop)) for _ in range(REFUNDERS)]
                await asyncio.sleep(random.uniform(1.0, 2.5))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                stop.set()
                await asyncio.gather(*workers)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

        proc = start_agent_process(config, log)
        try:
            await agent_process_ready(rig, proc)
            clients = {**terminals, WINDOW: window}
            finals = {}
            for key, (operation, body) in sorted(ledger.sent.items()):
                finals[key] = await settle(clients[key[0]], operation, body)
        finally:
            stop_process(proc)

        rows = rig.egress_rows()
        restarted = [r for r in rows if r["note"] and "restarted" in r["note"]]
        assert len(ledger.sent) > 40, "the load was too light to prove anything"
        assert restarted, "no kill landed mid-forward: the in-doubt path was not exercised"

        for key, told in ledger.answers.items():
            if told["status"] not in ("pending", "queued", "processing", "waiting"):
                assert told["status"] == finals[key]["status"], ("a final answer changed", key, told, finals[key])

        trades = await rig.admin.trades()
        succeeded = Counter(t["out_trade_no"] for t in trades if t["state"] in ("SUCCESS", "REFUND"))
        paid = {a["out_trade_no"] for k, a in finals.items() if k[0] != WINDOW and a["status"] == "paid"}
        assert set(succeeded) == paid, "every payment answered paid was taken, and nothing else"
        assert max(succeeded.values()) == 1
        orders = await rig.gateway_rows("orders")
        assert len({o.request_id for o in orders}) == len(orders) <= len([k for k in ledger.sent if k[0] != WINDOW])

        refunds = [r for r in await rig.admin.refunds() if r["state"] == "SUCCESS"]
        by_refund = Counter(r["out_refund_no"] for r in refunds)
        refunded = {a["out_refund_no"] for k, a in finals.items() if k[0] == WINDOW and a["status"] == "succeeded"}
        assert set(by_refund) == refunded and (not by_refund or max(by_refund.values()) == 1)
        per_trade: Counter[str] = Counter()
        for r in refunds:
            per_trade[r["out_trade_no"]] += r["amount_fen"]
        assert all(total <= 1_000 for total in per_trade.values()), per_trade
        assert {r["state"] for r in rows} <= {"done", "failed"}, Counter(r["state"] for r in rows)
