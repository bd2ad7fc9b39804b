"""Business API: what an app needs from its hospital's HIS besides money — a patient by card, ID card or phone,
the patient's unpaid bills, and a registration slot held while the patient pays.

Each is an operation an app must be allowed (``gateway.api.permissions``). Reads pass through to the
hospital's agent (``gateway.his_reads``: cached briefly where the hospital allows it); slot holds go through
``gateway.sagas.registration``. The request bodies are the bridge catalog's own models where the catalog has
one, so an app and the agent agree on every field.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from bridge import catalog
from bridge.errors import ApiError
from gateway.api.auth import APP, SERVICES
from gateway.api.orders import json_response, parse
from gateway.his import HisUnavailable
from gateway.his_reads import ReadCache, read
from gateway.sagas import registration
from gateway.store import locks
from gateway.store.locks import Lock

READ_CACHE = web.AppKey("his_read_cache", ReadCache)


class PatientQuery(catalog.PatientQueryIn):
    """Find a patient by any one of card number, ID card number or phone (``patient.query``)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"card_no": "C0003"}, {"phone": "13800000003"}]}
    )


class BillsQuery(catalog.BillsUnpaidIn):
    """A patient's unpaid outpatient bills (``bills.unpaid``)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"patient_id": "P0001"}]})


class LockRequest(BaseModel):
    """Hold one slot of a schedule for a patient while they pay (``registration.lock``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"lock_no": "APP-L-20261205-0001", "patient_id": "P0003", "schedule_id": "S001"}]
        },
    )

    lock_no: Annotated[catalog.Code, Field(description="the app's own number for this hold; a repeat returns it")]
    patient_id: catalog.Code
    schedule_id: catalog.Code


def _time(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def lock_view(row: Lock) -> dict[str, Any]:
    return {
        "lock_no": row.lock_no,
        "state": row.state,
        "lock_id": row.lock_id,
        "amount_fen": row.amount_fen,
        "expires_at": _time(row.expires_at),
        "patient_id": row.patient_id,
        "schedule_id": row.schedule_id,
        "order_business_no": row.order_business_no,
        "release_reason": row.release_reason,
        "his_error": row.his_error,
        "created_at": _time(row.created_at),
        "updated_at": _time(row.updated_at),
    }


def _hospital(request: web.Request) -> Any:
    svc, app = request.app[SERVICES], request[APP]
    hospital = svc.tenants.hospitals.get(app.hospital_id)
    if hospital is None:
        raise ApiError(503, "his_unavailable", f"hospital {app.hospital_id} is not loaded in this instance yet")
    return hospital


async def _read(request: web.Request, operation: str, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    svc = request.app[SERVICES]
    hospital = _hospital(request)
    try:
        outcome = await read(request.app[READ_CACHE], svc.his_for(hospital.id), hospital, operation, params)
    except HisUnavailable as e:
        raise ApiError(503, "his_unavailable", f"the hospital's HIS cannot be reached now: {e}") from None
    answer = outcome.answer
    if answer.failed:
        raise ApiError(422, "his_refused", "the HIS refused the request", his_error=answer.error)
    if not answer.done:
        raise ApiError(503, "his_unavailable", "the HIS has not answered yet; ask again")
    meta = {"source": "cache" if outcome.cached else "his", "age_s": round(outcome.age_s, 1)}
    return answer.result, meta


async def query_patient(request: web.Request) -> web.Response:
    body = parse(request, PatientQuery)
    result, meta = await _read(request, "patient.query", body.model_dump(exclude_none=True))
    found = bool(result.get("found"))
    patient = {k: v for k, v in result.items() if k != "found"} if found else None
    return json_response(200, {"found": found, "patient": patient, **meta})


async def unpaid_bills(request: web.Request) -> web.Response:
    body = parse(request, BillsQuery)
    result, meta = await _read(request, "bills.unpaid", body.model_dump())
    return json_response(200, {"patient_id": body.patient_id, "bills": result.get("bills", []), **meta})


async def create_lock(request: web.Request) -> web.Response:
    svc, app = request.app[SERVICES], request[APP]
    body = parse(request, LockRequest)
    try:
        row, created = await registration.lock(
            svc, app.hospital_id, app.id, body.lock_no, body.patient_id, body.schedule_id
        )
    except registration.LockConflict as e:
        raise ApiError(409, "lock_conflict", str(e)) from None
    if row.state == "failed":
        raise ApiError(422, "his_refused", "the HIS did not hold the slot", lock=lock_view(row))
    status = 202 if row.state == "locking" else (201 if created else 200)
    return json_response(status, {"lock": lock_view(row)})


async def _own_lock(request: web.Request) -> Lock:
    svc, app = request.app[SERVICES], request[APP]
    row = await locks.get(svc.db, app.hospital_id, request.match_info["lock_no"])
    if row is None:
        raise ApiError(404, "lock_not_found", "no such slot hold for this hospital")
    return row


async def get_lock(request: web.Request) -> web.Response:
    row = await registration.refresh(request.app[SERVICES], await _own_lock(request))
    return json_response(200, {"lock": lock_view(row)})


async def unlock(request: web.Request) -> web.Response:
    svc, app = request.app[SERVICES], request[APP]
    row = await _own_lock(request)
    try:
        row = await registration.unlock(svc, row, f"app {app.id} let it go")
    except registration.LockBusy as e:
        raise ApiError(409, "lock_in_use", str(e), lock=lock_view(row)) from None
    return json_response(202 if row.state == "releasing" else 200, {"lock": lock_view(row)})


def add_routes(app: web.Application) -> None:
    app[READ_CACHE] = ReadCache()
    app.router.add_post("/v1/his/patients/query", query_patient)
    app.router.add_post("/v1/his/bills/unpaid", unpaid_bills)
    app.router.add_post("/v1/his/registration-locks", create_lock)
    app.router.add_get("/v1/his/registration-locks/{lock_no}", get_lock)
    app.router.add_post("/v1/his/registration-locks/{lock_no}/unlock", unlock)
