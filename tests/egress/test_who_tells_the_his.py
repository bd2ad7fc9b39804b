"""Per hospital and per app: the gateway tells the HIS after payment (as for the phone), or the caller does (a
kiosk that records the payment in the HIS itself). Either way reconciliation finds the HIS's record."""

from __future__ import annotations

import datetime as dt

from gateway.recon import run_reconciliation
from gateway.recon.normalize import shanghai_today
from tests.support.egress_rig import HOSPITAL, KIOSK, egress_rig, pay_body, until


def commits(his) -> list[str]:
    return [a["trade_no"] for a in his.state.applications() if a["operation"] == "CommitPrepay"]


async def test_a_kiosk_that_tells_the_his_itself(tmp_path, dev_certs, channel_keys, his):
    async with egress_rig(tmp_path, dev_certs, channel_keys, his, gateway_kwargs={"agent_his_commit": "caller"}) as rig:
        kiosk = rig.terminal(KIOSK)
        code = await rig.admin.code("wechat", "pays")
        _, paid = await kiosk.call("pay.codepay", pay_body("SELF-00001", amount_fen=3_300, auth_code=code))
        assert paid["status"] == "paid"

        async def told() -> dict | None:
            _, now = await kiosk.call("pay.query", {"request_id": "SELF-00001"})
            return now if now["his"]["state"] == "caller" else None

        final = await until(told, what="the gateway to leave the HIS to the kiosk")
        assert final["status"] == "paid" and final["his"]["receipt_no"] is None
        (order,) = await rig.gateway_rows("orders")
        assert (order.status, order.his_state, order.his_commit) == ("completed", "caller", "caller")
        assert commits(rig.his) == [], "the gateway sent no commit"

        app = rig.phone_app()
        body = {
            "business_order_no": "PHONE-0001", "business_type": "prepay", "scene": "native", "channel": "wechat",
            "amount_fen": 1_100, "subject": "住院预交金", "patient_id": "P0003", "inpatient_no": "Z0001",
        }  # fmt: skip
        status, created = await app.call("POST", "/v1/orders", body)
        assert status == 201
        await rig.admin.pay_qr("wechat", created["order"]["out_trade_no"])

        async def phone_committed() -> bool:
            return commits(rig.his) == [created["order"]["out_trade_no"]]

        await until(phone_committed, what="the gateway to commit the phone payment, as the hospital says")

        # the kiosk records its payment in the HIS under the platform's trade number
        rig.his.state.commit_prepay(
            paid["out_trade_no"], "P0003", "Z0001", 3_300, "WX", paid["channel_trade_no"], dt.datetime.now(dt.UTC)
        )
        cfg = rig.gateway.gateway.cfg
        cfg.recon.cross_day_window_min = 0
        summary = await run_reconciliation(
            rig.gateway.svc.db,
            cfg,
            HOSPITAL,
            shanghai_today(),
            channels=rig.gateway.svc.channels,
            his=rig.gateway.svc.his[HOSPITAL],
        )
        assert summary.status == "done", summary.error
        assert summary.exceptions == {} and summary.counts["matched"] == 2, (summary.exceptions, summary.counts)
