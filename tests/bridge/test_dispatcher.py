"""Dispatcher rules with a scripted adapter: ordering, in-doubt resolution, retries, quarantine, breaker.

The end-to-end tests run the same rules against the real sandbox HIS over SOAP; here each rule is isolated so
a failure names the rule.
"""

import asyncio
from typing import Any

import pytest

from adapters.base import Adapter, InDoubtError, PermanentError, RetryableError, WirePreview
from bridge.config import DispatchConfig
from bridge.dispatcher import Dispatcher, HisUnavailable, ReadFailed
from bridge.journal import Journal, State
from bridge.metrics import Metrics

PAID = {
    "patient_id": "P1",
    "amount_fen": 100,
    "channel": "wechat",
    "channel_trade_no": "W1",
    "paid_at": "2026-11-25T10:00:00+08:00",
    "bill_nos": ["B1"],
}


class ScriptedHis(Adapter):
    """Applies writes to a dict and answers trade.check from it; `script` injects outcomes per call."""

    def __init__(self) -> None:
        super().__init__("scripted")
        self.applied: list[tuple[str, str]] = []
        self.request_order: list[str] = []
        self.calls: list[str] = []
        self.script: list[str] = []
        self.gate: asyncio.Event | None = None

    def operations(self) -> frozenset[str]:
        return frozenset({"charge.commit", "trade.check", "patient.query"})

    async def preview(self, operation: str, params: dict[str, Any]) -> WirePreview:
        return WirePreview("test", "scripted", "")

    async def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(operation)
        if self.gate is not None and operation != "trade.check":
            await self.gate.wait()
        action = self.script.pop(0) if self.script else "ok"
        if operation == "trade.check":
            if action == "down":
                raise RetryableError("down", "HIS down")
            found = ("charge.commit", params["trade_no"]) in self.applied
            return {"found": found, "receipt_no": f"R-{params['trade_no']}" if found else None}
        if operation == "patient.query":
            if action == "down":
                raise RetryableError("down", "HIS down")
            return {"found": False}
        if action == "down":
            raise RetryableError("down", "HIS down")
        if action == "refuse":
            raise PermanentError("2002", "bill already paid")
        self.applied.append((operation, params["trade_no"]))
        self.request_order.append(params["request_id"])
        if action == "drop":
            raise InDoubtError("dropped", "connection lost after send")
        return {"receipt_no": f"R-{params['trade_no']}"}


async def until(condition, timeout_s: float = 5) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - the state belongs to the scripted HIS and the dispatcher
            await asyncio.sleep(0.005)


@pytest.fixture
async def rig(tmp_path):
    journal = Journal(tmp_path / "j.sqlite3")
    await journal.open()
    his = ScriptedHis()
    cfg = DispatchConfig(
        backoff_base_s=0.01,
        backoff_max_s=0.02,
        max_attempts=4,
        breaker_failures=3,
        breaker_reset_s=0.05,
        his_timeout_s=1,
    )
    dispatcher = Dispatcher(journal, his, cfg, Metrics(), sweep_interval_s=0.05)
    await dispatcher.start()
    yield journal, his, dispatcher
    await dispatcher.stop()
    await journal.close()


async def submit(journal, dispatcher, rid, trade):
    params = {"request_id": rid, "trade_no": trade, **PAID}
    entry, _ = await journal.accept(
        request_id=rid, client_id="c", operation="charge.commit", business_key=trade, body_sha256=rid, params=params
    )
    dispatcher.submit(entry)
    return entry


async def test_in_doubt_write_is_checked_not_resent(rig):
    journal, his, dispatcher = rig
    his.script = ["drop"]
    entry = await submit(journal, dispatcher, "req-00001", "T1")
    done = await dispatcher.wait(entry.seq, 5)
    assert done.state is State.done and done.result == {"receipt_no": "R-T1"}
    assert his.applied == [("charge.commit", "T1")]
    assert his.calls == ["charge.commit", "trade.check"]
    assert "not resent" in done.note


async def test_retryable_failures_back_off_then_succeed(rig):
    journal, his, dispatcher = rig
    his.script = ["down", "down"]
    entry = await submit(journal, dispatcher, "req-00002", "T2")
    done = await dispatcher.wait(entry.seq, 5)
    assert done.state is State.done and done.attempts == 3
    assert his.applied == [("charge.commit", "T2")]


async def test_permanent_refusal_fails_at_once(rig):
    journal, his, dispatcher = rig
    his.script = ["refuse"]
    entry = await submit(journal, dispatcher, "req-00003", "T3")
    failed = await dispatcher.wait(entry.seq, 5)
    assert failed.state is State.failed and failed.error["code"] == "2002"
    assert his.calls == ["charge.commit"]


async def test_quarantine_after_max_attempts_blocks_its_trade_only(rig):
    journal, his, dispatcher = rig
    dispatcher.breaker.failures = 10  # a poison write: it fails on its own while the breaker stays closed
    his.script = ["down"] * 4
    first = await submit(journal, dispatcher, "req-00004", "T4")
    assert (await dispatcher.wait(first.seq, 5)).state is State.quarantined
    behind = await submit(journal, dispatcher, "req-00005", "T4")
    other = await submit(journal, dispatcher, "req-00006", "T5")
    assert (await dispatcher.wait(other.seq, 5)).state is State.done
    assert await dispatcher.wait(behind.seq, 0.3) is None
    assert (await journal.get_seq(behind.seq)).state is State.accepted
    # an operator retries the quarantined entry (as `his-bridge journal retry` does): both drain, in order
    await journal.update(first.seq, State.accepted, reset_attempts=True)
    assert (await dispatcher.wait(behind.seq, 5)).state is State.done
    assert [t for _, t in his.applied if t == "T4"] == ["T4", "T4"]


async def test_same_trade_runs_in_arrival_order_one_at_a_time(rig):
    journal, his, dispatcher = rig
    his.gate = asyncio.Event()
    entries = [await submit(journal, dispatcher, f"req-1{i:04d}", "T6") for i in range(5)]
    others = [await submit(journal, dispatcher, f"req-2{i:04d}", f"U{i}") for i in range(3)]
    await until(lambda: his.calls.count("charge.commit") == 4)  # one of T6 and the three other trades, at the gate
    await asyncio.sleep(0.05)  # give a wrongly parallel lane the chance to send a second T6 write
    assert his.calls.count("charge.commit") == 4
    his.gate.set()
    for e in entries + others:
        assert (await dispatcher.wait(e.seq, 5) or await journal.get_seq(e.seq)).state is State.done
    t6 = [r for r in his.request_order if r.startswith("req-1")]
    assert t6 == [e.request_id for e in entries]


async def test_breaker_opens_and_refuses_reads_then_recovers(rig):
    _, his, dispatcher = rig
    his.script = ["down"] * 3
    for _ in range(3):
        with pytest.raises(ReadFailed):
            await dispatcher.read("patient.query", {"card_no": "C1"})
    with pytest.raises(HisUnavailable):
        await dispatcher.read("patient.query", {"card_no": "C1"})
    await asyncio.sleep(0.06)
    assert await dispatcher.read("patient.query", {"card_no": "C1"}) == {
        "found": False,
        "patient_id": None,
        "name": None,
        "gender": None,
        "birth_date": None,
        "card_no": None,
        "phone": None,
    }


async def test_recovery_treats_in_flight_as_in_doubt(tmp_path):
    journal = Journal(tmp_path / "r.sqlite3")
    await journal.open()
    his = ScriptedHis()
    his.applied.append(("charge.commit", "T7"))  # the HIS applied it before the crash
    params = {"request_id": "req-00007", "trade_no": "T7", **PAID}
    entry, _ = await journal.accept(
        request_id="req-00007",
        client_id="c",
        operation="charge.commit",
        business_key="T7",
        body_sha256="x",
        params=params,
    )
    await journal.update(entry.seq, State.in_flight, attempts_delta=1)
    cfg = DispatchConfig(backoff_base_s=0.01, backoff_max_s=0.02, his_timeout_s=0.1)
    dispatcher = Dispatcher(journal, his, cfg, Metrics())
    assert await dispatcher.start() == 1
    done = await dispatcher.wait(entry.seq, 5)
    assert done.state is State.done and his.calls == ["trade.check"]
    await dispatcher.stop()
    await journal.close()


async def test_stop_lets_a_sent_call_finish_and_sends_nothing_new(tmp_path):
    journal = Journal(tmp_path / "g.sqlite3")
    await journal.open()
    his = ScriptedHis()
    his.gate = asyncio.Event()
    dispatcher = Dispatcher(journal, his, DispatchConfig(backoff_base_s=0.01, backoff_max_s=0.02), Metrics())
    await dispatcher.start()
    first = await submit(journal, dispatcher, "req-g0001", "TG")
    second = await submit(journal, dispatcher, "req-g0002", "TG")
    await until(lambda: his.calls == ["charge.commit"])
    stopping = asyncio.create_task(dispatcher.stop(grace_s=5))
    await until(lambda: dispatcher._closing.is_set())
    his.gate.set()  # the HIS answers the call that was already out
    await stopping
    assert (await journal.get_seq(first.seq)).state is State.done
    assert (await journal.get_seq(second.seq)).state is State.accepted  # left for the next start, not sent
    assert his.calls == ["charge.commit"]
    await journal.close()


def test_breaker_trial_released_when_the_call_does_not_go_out():
    from bridge.breaker import BreakerState, CircuitBreaker

    now = [0.0]
    breaker = CircuitBreaker("his", failures=1, reset_s=10, clock=lambda: now[0])
    breaker.failure()
    assert breaker.state is BreakerState.open and not breaker.allow()
    now[0] = 11
    assert breaker.allow()  # the half-open trial
    assert not breaker.allow()  # only one at a time
    breaker.release()
    assert breaker.allow()
