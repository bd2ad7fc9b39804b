"""The real agent with a stored-procedure profile: a charge (three procedure calls in one transaction) and a
refund go through the whole bridge into PostgreSQL and MariaDB."""

from __future__ import annotations

from tests.support.db_fixtures import SandboxDb
from tests.support.rig import REPO, make_client

PROFILES = {
    "postgresql": REPO / "config" / "profiles" / "dbproc-postgresql.toml",
    "mariadb": REPO / "config" / "profiles" / "dbproc-mariadb-dispatcher.toml",
}


async def test_charge_and_refund_through_the_agent(bridge_factory, dev_certs, sandbox_db: SandboxDb) -> None:
    running = await bridge_factory(
        profile=PROFILES[sandbox_db.dialect], overrides={"dbproc.connection": sandbox_db.connection}
    )
    async with make_client(dev_certs, running.api_url) as client:
        charged = await client.call(
            "charge.commit",
            {
                "request_id": "req-e2e-charge",
                "trade_no": "T-E2E-1",
                "patient_id": "P0001",
                "bill_nos": ["B0001", "B0002"],
                "amount_fen": 9850,
                "channel": "alipay",
                "channel_trade_no": "A-E2E-1",
                "paid_at": "2026-11-25T10:00:00+08:00",
            },
        )
        assert charged.http_status == 200, charged.body
        assert charged.status == "done" and charged.result["receipt_no"].startswith("SF")
        refund = await client.call(
            "refund.apply",
            {
                "request_id": "req-e2e-refund",
                "trade_no": "T-E2E-1",
                "refund_no": "R-E2E-1",
                "amount_fen": 1250,
                "reason": "医保结算后退自费部分",
            },
        )
        assert refund.status == "done", refund.body
        assert refund.result["refundable_fen"] == 9850 and refund.result["his_refund_id"]
    rows = sandbox_db.query("SELECT pay_mode, amount_fen FROM trades WHERE trade_no = 'T-E2E-1'")
    assert rows == [("ZFB", 9850)]
    assert sandbox_db.query("SELECT COUNT(*) FROM bills WHERE status = 'paid'") == [(2,)]
