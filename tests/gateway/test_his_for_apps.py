"""What an app needs besides money, through the gateway to the real agent over the sandbox HIS: patient lookup
and unpaid bills (each an operation the app must be allowed, the patient cached briefly), and a registration
slot held while the patient pays — released when the order closes unpaid, never while the channel might still
take the money, and never once the order is paid."""

from __future__ import annotations

import pytest

from gateway.his import HisAnswer
from gateway.his_reads import ReadCache
from gateway.sagas import compensation, registration
from gateway.store import locks
from gateway.store import orders as order_store
from tests.gateway.saga_helpers import deliver_callback
from tests.support.gateway_rig import drain, make_due, order_body

ALL = ["orders", "refunds", "events", "patient.query", "bills.unpaid", "registration.lock", "registration.unlock"]


@pytest.fixture
async def gw(gateway_factory, sqlite_url, his_link, channel):
    return await gateway_factory(sqlite_url, channel=channel, his=his_link, app={"operations": ALL})


def registration_body(no: str, lock: dict, patient_id: str = "P0003") -> dict:
    return order_body(
        no, business_type="registration", amount_fen=lock["amount_fen"], subject="挂号费", patient_id=patient_id,
        schedule_id=lock["schedule_id"], lock_id=lock["lock_id"],
    )  # fmt: skip


async def test_an_app_reads_only_what_it_is_allowed(gateway_factory, sqlite_url, his_link, api_factory):
    running = await gateway_factory(sqlite_url, his=his_link)
    client = api_factory(running)
    status, body = await client.call("POST", "/v1/his/patients/query", {"card_no": "C0003"})
    assert (status, body["error"]["code"]) == (403, "operation_not_allowed")
    status, body = await client.call("POST", "/v1/his/registration-locks", {"lock_no": "L1", "patient_id": "P1",
                                                                            "schedule_id": "S001"})  # fmt: skip
    assert (status, body["error"]["code"]) == (403, "operation_not_allowed")


async def test_patient_and_bills_through_the_agent(gw, api_factory):
    client = api_factory(gw)
    status, body = await client.call("POST", "/v1/his/patients/query", {"card_no": "C0003"})
    assert status == 200 and body["found"] and body["source"] == "his", body
    assert body["patient"]["patient_id"] == "P0003" and body["patient"]["name"] == "王五"
    status, again = await client.call("POST", "/v1/his/patients/query", {"card_no": "C0003"})
    assert status == 200 and again["source"] == "cache" and again["patient"] == body["patient"]
    status, body = await client.call("POST", "/v1/his/patients/query", {"phone": "13999999999"})
    assert status == 200 and body == {"found": False, "patient": None, "source": "his", "age_s": 0.0}

    status, body = await client.call("POST", "/v1/his/bills/unpaid", {"patient_id": "P0001"})
    assert status == 200 and body["source"] == "his"
    assert {(b["bill_no"], b["amount_fen"]) for b in body["bills"]} == {("B0001", 1250), ("B0002", 8600)}
    status, body = await client.call("POST", "/v1/his/bills/unpaid", {"patient_id": "P0001"})
    assert body["source"] == "his", "unpaid bills are not cached unless the hospital allows it"

    status, body = await client.call("POST", "/v1/his/patients/query", {})
    assert status == 422 and body["error"]["code"] == "schema_violation"
    status, body = await client.call("POST", "/v1/his/bills/unpaid", {"patient_id": "P0001", "extra": 1})
    assert status == 422 and body["details"][0]["field"] == "extra"


def test_the_read_cache_expires_and_stays_bounded():
    now = [0.0]
    cache = ReadCache(clock=lambda: now[0], max_entries=2)
    answer = HisAnswer("done", {"found": True})
    cache.put("a", answer, 30)
    now[0] = 29.9
    assert cache.get("a") == (answer, pytest.approx(29.9))
    now[0] = 30.0
    assert cache.get("a") is None
    for key in ("x", "y", "z"):
        cache.put(key, answer, 30)
    assert len(cache) == 2 and cache.get("x") is None


async def test_a_slot_is_released_once_its_order_closes_unpaid(gw, api_factory, channel):
    client = api_factory(gw)
    svc = gw.svc
    status, body = await client.call(
        "POST", "/v1/his/registration-locks", {"lock_no": "L-1", "patient_id": "P0003", "schedule_id": "S003"}
    )
    assert status == 201 and body["lock"]["state"] == "locked", body
    lock = body["lock"]
    assert lock["amount_fen"] == 1500 and lock["lock_id"].startswith("LK")
    status, again = await client.call(
        "POST", "/v1/his/registration-locks", {"lock_no": "L-1", "patient_id": "P0003", "schedule_id": "S003"}
    )
    assert status == 200 and again["lock"]["lock_id"] == lock["lock_id"], "a repeat is the same hold"
    # S003 has one place: while it is held, nobody else gets it.
    status, body = await client.call(
        "POST", "/v1/his/registration-locks", {"lock_no": "L-2", "patient_id": "P0001", "schedule_id": "S003"}
    )
    assert status == 422 and body["error"]["code"] == "his_refused" and body["lock"]["state"] == "failed"

    status, body = await client.call("POST", "/v1/orders", registration_body("R-1", lock))
    assert status == 201, body
    out_trade_no = body["order"]["out_trade_no"]
    status, body = await client.call("POST", "/v1/orders", registration_body("R-2", lock))
    assert (status, body["error"]["code"]) == (409, "lock_in_use")
    status, body = await client.call("POST", "/v1/his/registration-locks/L-1/unlock")
    assert (status, body["error"]["code"]) == (409, "lock_in_use")

    # The order expires, but the channel cannot be told to close it: a payment may still land, the slot stays.
    channel.down.add("close")
    order = await order_store.by_business_no(svc.db, "H001", "R-1")
    await order_store.update(svc.db, order.id, None, expires_at=order.created_at)
    await make_due(svc.db)
    await drain(gw.gateway)
    assert (await order_store.get(svc.db, order.id)).status == "paying"
    await registration.work_once(svc)
    assert (await locks.get(svc.db, "H001", "L-1")).state == "locked"

    channel.down.clear()
    await make_due(svc.db)
    await drain(gw.gateway)
    assert (await order_store.get(svc.db, order.id)).status == "closed"
    assert channel.trades[out_trade_no]["state"].value == "CLOSED"
    await registration.work_once(svc)
    released = await locks.get(svc.db, "H001", "L-1")
    assert released.state == "released" and released.release_reason == "order R-1 closed unpaid"
    # The HIS has the place again: another patient gets it; the released hold cannot be paid for any more.
    status, body = await client.call(
        "POST", "/v1/his/registration-locks", {"lock_no": "L-3", "patient_id": "P0001", "schedule_id": "S003"}
    )
    assert status == 201 and body["lock"]["state"] == "locked", body
    status, body = await client.call("POST", "/v1/orders", registration_body("R-3", lock))
    assert (status, body["error"]["code"]) == (409, "lock_released")
    status, body = await client.call("GET", "/v1/his/registration-locks/L-1")
    assert status == 200 and body["lock"]["state"] == "released"


async def test_a_paid_slot_is_used_never_released(gw, api_factory, channel):
    client = api_factory(gw)
    svc = gw.svc
    status, body = await client.call(
        "POST", "/v1/his/registration-locks", {"lock_no": "L-9", "patient_id": "P0002", "schedule_id": "S002"}
    )
    lock = body["lock"]
    status, body = await client.call("POST", "/v1/orders", registration_body("R-9", lock, patient_id="P0002"))
    assert status == 201, body
    out_trade_no = body["order"]["out_trade_no"]
    assert await deliver_callback(gw, *channel.pay(out_trade_no)) == 200
    await drain(gw.gateway)
    order = await order_store.by_business_no(svc.db, "H001", "R-9")
    assert order.status == "completed" and order.his_receipt_no, "the HIS registered the paid slot"
    await registration.work_once(svc)
    assert (await locks.get(svc.db, "H001", "L-9")).state == "used"
    status, body = await client.call("POST", "/v1/his/registration-locks/L-9/unlock")
    assert (status, body["error"]["code"]) == (409, "lock_in_use")
    await compensation.request_close(svc, order)
    await registration.work_once(svc)
    assert (await locks.get(svc.db, "H001", "L-9")).state == "used"


async def test_an_app_lets_an_unused_slot_go(gw, api_factory):
    client = api_factory(gw)
    status, body = await client.call(
        "POST", "/v1/his/registration-locks", {"lock_no": "L-5", "patient_id": "P0004", "schedule_id": "S001"}
    )
    assert status == 201
    status, body = await client.call("POST", "/v1/his/registration-locks/L-5/unlock")
    assert status == 200 and body["lock"]["state"] == "released", body
    assert body["lock"]["release_reason"] == "app kiosk-1 let it go"
    status, body = await client.call("POST", "/v1/his/registration-locks/L-5/unlock")
    assert status == 200 and body["lock"]["state"] == "released", "a repeat changes nothing"
    status, body = await client.call(
        "POST", "/v1/his/registration-locks", {"lock_no": "L-5", "patient_id": "P0001", "schedule_id": "S001"}
    )
    assert (status, body["error"]["code"]) == (409, "lock_conflict")
    status, body = await client.call("GET", "/v1/his/registration-locks/NOPE")
    assert (status, body["error"]["code"]) == (404, "lock_not_found")
