"""The console's tenant pages: the admin role only; a hospital, an app and a merchant added through the forms,
with what is wrong said when a form is refused (a relative file path, an inline secret, a private key)."""

from __future__ import annotations

import json

from bridge import protocol
from gateway.store import tenants as store
from tests.support.channelrig import WECHAT_KEY, WECHAT_MCHID, WECHAT_SERIAL
from tests.support.console_rig import ConsoleClient, add_staff


async def _client(running, username: str) -> ConsoleClient:
    client = ConsoleClient(running.url)
    assert await client.login(username) == 200
    return client


async def test_only_admins_see_and_change_tenants(gateway_factory, sqlite_url):
    running = await gateway_factory(sqlite_url)
    await add_staff(running.svc.db)
    clerk = await _client(running, "approver1")
    admin = await _client(running, "admin1")
    try:
        status, page = await clerk.get("/admin")
        assert status == 403 and 'href="/console/admin"' not in page
        status, _, _ = await clerk.post("/admin/hospitals", {"id": "H777", "name": "x"})
        assert status == 403
        status, page = await admin.get("/admin")
        assert status == 200 and 'data-id="H001"' in page and 'href="/console/admin"' in page
    finally:
        await clerk.close()
        await admin.close()


async def test_a_tenant_added_through_the_forms(gateway_factory, sqlite_url, tmp_path):
    running = await gateway_factory(sqlite_url)
    db = running.svc.db
    await add_staff(db)
    admin = await _client(running, "admin1")
    try:
        await admin.get("/admin")
        status, page, url = await admin.post(
            "/admin/hospitals", {"id": "H010", "name": "十院", "refund_policy": "auto_refund", "recon_at": "10:15"}
        )
        assert status == 200 and url.endswith("/admin/hospitals/H010?done=flash.tenant_saved"), url
        status, page, _ = await admin.post(
            "/admin/hospitals/H010", {"name": "十院", "bridge_url": "https://10.0.0.1:8443", "bridge_ca": "ca.pem"}
        )
        assert status == 400 and "absolute paths" in page and "bridge_ca" in page
        private = protocol.private_pem(protocol.generate_ed25519("m")).decode()
        status, page, _ = await admin.post(
            "/admin/hospitals/H010/apps", {"app_id": "mobile-10", "public_key": private, "op_orders": "1"}
        )
        assert status == 400 and "private key" in page
        public = protocol.generate_ed25519("m").public().public_pem().decode()
        status, page, url = await admin.post(
            "/admin/hospitals/H010/apps",
            {"app_id": "mobile-10", "public_key": public, "op_orders": "1", "op_patient.query": "1"},
        )
        assert status == 200 and url.endswith("/admin/apps/mobile-10?done=flash.tenant_saved")
        app = await store.get_app(db, "mobile-10")
        assert app is not None and app.allowed == {"orders", "patient.query"}

        settings = (
            f'mchid = "{WECHAT_MCHID}"\nappid = "wx01"\nmerchant_serial_no = "{WECHAT_SERIAL}"\n'
            f'private_key_file = "keys/apiclient_key.pem"\napiv3_key = {{ env = "WX_KEY" }}\n'
            f'public_key_file = "{WECHAT_KEY}"\npublic_key_id = "PUB_KEY_ID_01"\n'
        )
        status, page, _ = await admin.post(
            "/admin/hospitals/H010/merchants", {"merchant_id": "wx10", "channel": "wechat", "settings": settings}
        )
        assert status == 400 and "private_key_file" in page
        inline = settings.replace("keys/apiclient_key.pem", str(WECHAT_KEY)).replace('{ env = "WX_KEY" }', '"s3cret"')
        status, page, _ = await admin.post(
            "/admin/hospitals/H010/merchants", {"merchant_id": "wx10", "channel": "wechat", "settings": inline}
        )
        assert status == 400 and "apiv3_key" in page
        good = settings.replace("keys/apiclient_key.pem", str(WECHAT_KEY))
        status, page, url = await admin.post(
            "/admin/hospitals/H010/merchants", {"merchant_id": "wx10", "channel": "wechat", "settings": good}
        )
        assert status == 200 and url.endswith("/admin/merchants/wx10?done=flash.tenant_saved"), page[-1500:]
        merchant = await store.get_merchant(db, "wx10")
        assert merchant is not None and merchant.settings["apiv3_key"] == {"env": "WX_KEY"}
        assert "s3cret" not in json.dumps(merchant.settings)

        status, page, _ = await admin.post("/admin/merchants/wx10/enabled", {"enabled": "0"})
        assert status == 200 and (await store.get_merchant(db, "wx10")).enabled is False
        hospital = await store.get_hospital(db, "H010")
        assert hospital.refund_policy == "auto_refund" and hospital.recon_at == "10:15" and hospital.source == "console"
    finally:
        await admin.close()
