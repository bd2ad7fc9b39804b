"""Every example in docs/APPS.md runs, in the order the page gives them, against a gateway with the real agent
over the sandbox HIS: the shell ones with bash, curl and OpenSSL (signing and verifying by hand), the Python ones
with ``gateway.client.GatewayClient``. Between examples the test plays the payer (at the in-memory channel) and
waits for what the page says happens next; after each it checks what the example printed and what the gateway
holds."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import io
import os
import re
from pathlib import Path
from typing import Any

import pytest

from bridge import protocol
from gateway.store import locks, outbox
from gateway.store import orders as order_store
from tests.gateway.saga_helpers import deliver_callback
from tests.support.gateway_rig import eventually, make_due
from tests.support.rig import free_port

DOC = Path(__file__).resolve().parents[2] / "docs" / "APPS.md"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")
"""The gateway's own log lines (same process, same stdout) and the notify handler's prints are not the example's."""
BLOCK = re.compile(r"^```(sh|python)\n(.*?)^```", re.S | re.M)
ALL = ["orders", "refunds", "events", "patient.query", "bills.unpaid", "registration.lock", "registration.unlock"]
pytestmark = pytest.mark.system


def examples() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(DOC.read_text(encoding="utf-8"))]


async def run_sh(code: str, cwd: Path, env: dict[str, str]) -> str:
    """bash in a child process, the event loop (and the gateway on it) serving meanwhile."""
    proc = await asyncio.create_subprocess_exec(
        "bash", "-euo", "pipefail", "-c", code, cwd=cwd, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, f"example failed ({proc.returncode}):\n{code}\n{out.decode()}\n{err.decode()}"
    return out.decode()


async def run_python(code: str, namespace: dict[str, Any]) -> str:
    compiled = compile(code, str(DOC), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = eval(compiled, namespace)
        if asyncio.iscoroutine(result):
            await asyncio.wait_for(result, 60)
    return "\n".join(
        line for line in out.getvalue().splitlines() if not LOG_LINE.match(line) and not line.startswith("event ")
    )


def test_the_page_has_the_examples_it_promises():
    kinds = [lang for lang, _ in examples()]
    assert kinds.count("sh") >= 4 and kinds.count("python") >= 6


async def test_every_example_in_apps_md_runs(
    gateway_factory, sqlite_url, his_link, channel, keys, tmp_path, monkeypatch
):
    notify_port = free_port()
    running = await gateway_factory(
        sqlite_url, channel=channel, his=his_link, run_workers=True, port=free_port(),
        notify_url=f"http://127.0.0.1:{notify_port}/his/notify",
        notifications_cfg={"allow_addresses": ["127.0.0.1/32"]}, app={"operations": ALL},
        workers={"poll_interval_s": 0.05, "pending_query_after_s": 3600, "retry_base_s": 0.2, "his_poll_s": 0.2},
    )  # fmt: skip
    db = running.svc.db
    (tmp_path / "app.pem").write_bytes(protocol.private_pem(keys.app))
    (tmp_path / "gateway.pub").write_bytes(keys.gateway.public().public_pem())
    env = {
        "GATEWAY_URL": running.url,
        "APP_ID": keys.app.key_id,
        "APP_KEY": str(tmp_path / "app.pem"),
        "GATEWAY_PUB": str(tmp_path / "gateway.pub"),
        "NOTIFY_PORT": str(notify_port),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    async def pay(no: str) -> None:
        order = await order_store.by_business_no(db, "H001", no)
        assert order is not None and order.status == "paying"
        assert await deliver_callback(running, *channel.pay(order.out_trade_no)) == 200

        async def completed() -> bool:
            return (await order_store.by_business_no(db, "H001", no)).status == "completed"

        await eventually(completed, timeout_s=30, what=f"{no} paid and recorded by the HIS")

    namespace: dict[str, Any] = {"__name__": "apps_md"}
    outputs: list[str] = []
    try:
        for lang, code in examples():
            if lang == "sh":
                out = await run_sh(code, tmp_path, env)
            else:
                out = await run_python(code, namespace)
            outputs.append(out)
            if "APP-20261205-0001" in code and "hb_call POST /v1/orders " in code:
                assert out.splitlines() == [
                    "paying",
                    f"mem://{(await order_store.by_business_no(db, 'H001', 'APP-20261205-0001')).out_trade_no}",
                ]
                await pay("APP-20261205-0001")
            elif "create_order(" in code and "APP-20261205-0002" in code:
                assert out.splitlines()[1] == "409 order_conflict", out
                await pay("APP-20261205-0002")
            elif "notify_app" in code:
                await make_due(db)

                async def both_heard() -> bool:
                    return (
                        sorted(v for v in namespace["seen"].values() if v == "order.completed")
                        == ["order.completed"] * 2
                    )

                await eventually(both_heard, timeout_s=30, what="both payments' notifications handled")

                async def both_recorded() -> bool:
                    """The app records a notice before it answers; the gateway marks it delivered after."""
                    waiting = await outbox.for_app(db, keys.app.key_id, undelivered=True)
                    return not [n for n in waiting if n.event_type == "order.completed"]

                await eventually(both_recorded, timeout_s=30, what="both notifications recorded as delivered")
            elif "/v1/events" in code:
                assert sum("order.completed delivered" in line for line in out.splitlines()) == 2, out
            elif "get_order(" in code:
                status, his_state, receipt = out.split()
                assert (status, his_state) == ("completed", "done") and receipt
            elif "APP-R-0001" in code:
                assert out.strip() in ("refunding", "succeeded", "completed"), out
            elif "too_much" in code:
                first, second = out.splitlines()
                assert first.split() in (["refunding", "20000"], ["succeeded", "20000"], ["completed", "20000"]), out
                assert second == "rejected", out
            elif "get_refund(" in code:
                assert out.strip() == "refunded and written back to the HIS"
            elif "query_patient(" in code:
                first, second = out.splitlines()
                assert first == "True P0001 张三" and second == "[('B0001', 1250), ('B0002', 8600)]", out
            elif "lock_slot(" in code:
                state, lock_id, fee = out.splitlines()[0].split()
                assert (state, fee) == ("locked", "1000") and lock_id.startswith("LK")
                assert out.splitlines()[1] == "lock_in_use"

                async def released() -> bool:
                    row = await locks.get(db, "H001", "APP-L-0001")
                    return row is not None and row.state == "released"

                await eventually(released, timeout_s=30, what="the slot released once its order closed unpaid")
        assert len(outputs) == len(examples())
        refund = await order_store.by_business_no(db, "H001", "APP-20261205-0002")
        assert refund.refunded_fen == 20000
    finally:
        client = namespace.get("client")
        if client is not None:
            await client.close()
        runner = namespace.get("runner")
        if runner is not None:
            await runner.cleanup()
