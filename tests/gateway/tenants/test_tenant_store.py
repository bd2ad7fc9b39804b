"""Tenants as rows: an import run twice changes nothing, every change is audited and bumps the version once,
the database owns a row once an operator changed it, secrets never reach the database, and an app's keys
rotate with an overlap."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import sqlalchemy as sa

from bridge import protocol
from gateway.config import AppConfig, BridgeLink, HospitalConfig, MerchantConfig, load_tenant_blocks
from gateway.model import utcnow
from gateway.store import registry
from gateway.store import tenants as store
from gateway.store.db import Database
from gateway.store.migrate import upgrade
from gateway.store.tables import audit_log, hospitals, merchants
from tests.support.channelrig import WECHAT_KEY, WECHAT_MCHID, WECHAT_SERIAL

SECRET = "S3cr3t-APIv3-key-never-in-the-db"


@pytest.fixture
async def db(db_url):
    database = Database(db_url)
    await upgrade(database)
    yield database
    await database.close()


def pub(tmp_path, name: str) -> tuple[protocol.SigningKey, str]:
    key = protocol.generate_ed25519(name)
    path = tmp_path / f"{name}.pub"
    path.write_bytes(key.public().public_pem())
    return key, str(path)


def wechat_block(merchant_id: str, hospital: str, tmp_path) -> dict:
    platform = tmp_path / "platform.pem"
    platform.write_text("unused here")
    return {
        "id": merchant_id, "channel": "wechat", "hospital": hospital, "mchid": WECHAT_MCHID, "appid": "wx0001",
        "merchant_serial_no": WECHAT_SERIAL, "private_key_file": str(WECHAT_KEY),
        "apiv3_key": {"env": "WX_APIV3_KEY"}, "platform_certificates": [str(platform)],
    }  # fmt: skip


async def audit_actions(db: Database) -> list[str]:
    async with db.read() as conn:
        return list((await conn.execute(sa.select(audit_log.c.action).order_by(audit_log.c.id))).scalars())


async def test_an_import_twice_changes_nothing_the_second_time(db, tmp_path, monkeypatch):
    monkeypatch.setenv("WX_APIV3_KEY", SECRET)
    _, app_pub = pub(tmp_path, "kiosk-9")
    file = tmp_path / "tenants.toml"
    file.write_text(
        f"""
[[hospitals]]
id = "H100"
name = "第一医院"
read_cache = {{ "patient.query" = 60 }}
[[hospitals.apps]]
app_id = "kiosk-9"
public_key = "{app_pub}"
operations = ["orders", "patient.query"]

[[merchants]]
id = "wx-h100"
channel = "wechat"
hospital = "H100"
mchid = "{WECHAT_MCHID}"
appid = "wx0001"
merchant_serial_no = "{WECHAT_SERIAL}"
private_key_file = "{WECHAT_KEY}"
apiv3_key = {{ env = "WX_APIV3_KEY" }}
platform_certificates = ["certs/platform.pem"]
"""
    )
    blocks = load_tenant_blocks(file)
    before = await store.read_version(db)
    first = await store.import_blocks(db, blocks.hospitals, blocks.merchants, actor="cli:ops", source="import")
    assert first.count("added") == 3
    after_first = await store.read_version(db)
    assert after_first == before + 3
    second = await store.import_blocks(db, blocks.hospitals, blocks.merchants, actor="cli:ops", source="import")
    assert second.count("unchanged") == 3 and await store.read_version(db) == after_first
    assert await audit_actions(db) == ["hospital.add", "merchant.add", "app.add"]

    rows = await store.load(db)
    merchant = rows.merchants["wx-h100"]
    assert merchant.settings["platform_certificates"] == [str(tmp_path / "certs" / "platform.pem")]
    assert merchant.settings["apiv3_key"] == {"env": "WX_APIV3_KEY"}
    assert rows.apps["kiosk-9"].allowed == {"orders", "patient.query"}
    assert rows.hospitals["H100"].read_cache == {"patient.query": 60}
    async with db.read() as conn:
        dump = json.dumps(
            [list(map(str, r)) for t in (hospitals, merchants, audit_log) for r in await conn.execute(sa.select(t))]
        )
    assert SECRET not in dump


async def test_the_config_no_longer_overrides_a_row_an_operator_changed(db, tmp_path):
    _, app_pub = pub(tmp_path, "app-a")
    _, other_pub = pub(tmp_path, "app-b")
    h = HospitalConfig(id="H200", name="二院", apps=[AppConfig(app_id="app-a", public_key=app_pub),
                                                     AppConfig(app_id="app-b", public_key=other_pub)])  # fmt: skip
    report = await store.import_blocks(db, [h], [], actor="config", source="config")
    assert report.count("added") == 3
    # An operator renames the hospital and disables app-b through the CLI: the database owns them now.
    await store.put_hospital(db, h.model_copy(update={"name": "第二人民医院"}), actor="cli:ops", source="cli")
    await store.set_enabled(db, "app", "app-b", False, actor="cli:ops", source="cli")
    again = await store.import_blocks(db, [h], [], actor="config", source="config")
    assert again.outcomes == {"hospital:H200": "skipped", "app:app-a": "unchanged", "app:app-b": "skipped"}
    rows = await store.load(db)
    assert rows.hospitals["H200"].name == "第二人民医院" and rows.apps["app-b"].enabled is False
    # An app dropped from the config is disabled (orders refer to it), as before tenants were rows.
    h2 = h.model_copy(update={"apps": []})
    dropped = await store.import_blocks(db, [h2], [], actor="config", source="config")
    assert dropped.disabled == ["app:app-a"]
    app = await registry.load_app(db, "app-a")
    assert app is not None and app.enabled is False


async def test_a_disabled_hospital_disables_its_apps(db, tmp_path):
    _, app_pub = pub(tmp_path, "app-h")
    h = HospitalConfig(id="H300", name="三院", apps=[AppConfig(app_id="app-h", public_key=app_pub)])
    await store.import_blocks(db, [h], [], actor="cli:ops", source="import")
    assert (await registry.load_app(db, "app-h")).enabled is True
    await store.set_enabled(db, "hospital", "H300", False, actor="cli:ops", source="cli")
    assert (await registry.load_app(db, "app-h")).enabled is False


async def test_keys_rotate_with_an_overlap_and_the_last_lasting_key_stays(db, tmp_path):
    old, old_pub = pub(tmp_path, "app-r")
    new, _ = pub(tmp_path, "app-r2")
    h = HospitalConfig(id="H400", name="四院", apps=[AppConfig(app_id="app-r", public_key=old_pub)])
    await store.import_blocks(db, [h], [], actor="cli:ops", source="import")
    retire = utcnow() + dt.timedelta(days=7)
    new_pem = new.public().public_pem().decode()
    assert await store.add_app_key(db, "app-r", new_pem, retire_old_at=retire, actor="cli:ops", source="cli") == "added"
    assert (
        await store.add_app_key(db, "app-r", new_pem, retire_old_at=retire, actor="cli:ops", source="cli")
        == "unchanged"
    )
    app = await registry.load_app(db, "app-r")
    now = utcnow()
    assert [k.public_pem() for k in app.verify_keys(now)] == [new.public().public_pem(), old.public().public_pem()]
    assert [k.public_pem() for k in app.verify_keys(retire + dt.timedelta(seconds=1))] == [new.public().public_pem()]
    new_name = store.fingerprint(new_pem)[:16]
    with pytest.raises(store.TenantError, match="only key"):
        await store.retire_app_key(db, "app-r", new_name, at=now, actor="cli:ops", source="cli")
    # An explicit import of the old file after the rotation does not undo it.
    await store.import_blocks(db, [h], [], actor="cli:ops", source="import")
    app = await registry.load_app(db, "app-r")
    assert len(app.verify_keys(utcnow())) == 2
    assert "app.key_added" in await audit_actions(db)


async def test_bad_tenants_are_refused_with_what_is_wrong(db, tmp_path):
    h = HospitalConfig(id="H500", name="五院")
    await store.put_hospital(db, h, actor="cli:ops", source="cli", must_exist=False)
    with pytest.raises(store.TenantError, match="exists"):
        await store.put_hospital(db, h, actor="cli:ops", source="cli", must_exist=False)
    private = protocol.private_pem(protocol.generate_ed25519("x")).decode()
    with pytest.raises(store.TenantError, match="private key"):
        await store.put_app(db, store.AppSpec("app-x", "H500"), actor="cli:ops", source="cli", public_key_pem=private)
    with pytest.raises(store.TenantError, match="not a PEM"):
        await store.put_app(db, store.AppSpec("app-x", "H500"), actor="cli:ops", source="cli", public_key_pem="nope")
    good_key, _ = pub(tmp_path, "app-y")
    with pytest.raises(store.TenantError, match="no hospital"):
        await store.put_app(
            db,
            store.AppSpec("app-y", "H999"),
            actor="cli:ops",
            source="cli",
            public_key_pem=good_key.public().public_pem().decode(),
        )
    bad = MerchantConfig.model_validate(
        {"id": "wx-bad", "channel": "wechat", "hospital": "H500", "mchid": "1", "appid": "wx", "apiv3_key": "inline"}
    )
    with pytest.raises(store.TenantError, match="wechat settings"):
        await store.put_merchant(db, bad, actor="cli:ops", source="cli")
    assert (await store.load(db)).merchants == {}


async def test_an_agent_link_keeps_file_references_only(db, tmp_path):
    link = BridgeLink(
        url="https://10.1.2.3:8443", ca=tmp_path / "ca.pem", client_cert=tmp_path / "c.pem",
        client_key=tmp_path / "c.key", signing_key=tmp_path / "s.pem", bridge_key_id="bridge-H600",
        bridge_public_key=tmp_path / "b.pub",
    )  # fmt: skip
    await store.put_hospital(db, HospitalConfig(id="H600", name="六院", bridge=link), actor="cli:ops", source="cli")
    row = await store.get_hospital(db, "H600")
    assert row.bridge["client_key"] == str(tmp_path / "c.key")
    assert row.config().bridge == link
