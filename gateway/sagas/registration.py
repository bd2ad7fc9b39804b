"""Holding a registration slot while the patient pays, and releasing it when they do not.

    lock ─► locking ─(HIS holds it)─► locked ─(its order paid)─► used
                    │                      └(its order closed/failed unpaid, or the app lets go)─► releasing ─► released
                    └(HIS refused)─► failed

The HIS ties a lock to a trade number, and only that trade number releases it, so each lock gets our own
(``L…``), and its writes go through the agent's journal with request ids derived from it: however often a
lock or a release is retried, the HIS applies it once. A release happens only when no payment can land for
the slot any more (``gateway.store.locks``): never because a timer ran out while the channel might still take
the money.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from typing import Any

from gateway.his import HisAnswer, HisUnavailable, write_once
from gateway.model import utcnow
from gateway.sagas.common import new_trade_no
from gateway.services import Services, log
from gateway.store import claims, locks
from gateway.store.locks import Lock
from gateway.store.platform_tables import registration_locks


class LockConflict(Exception):
    """The lock number is taken by a lock for another patient or schedule."""


class LockBusy(Exception):
    """The slot cannot be released now; the message says why."""


def _times(result: dict[str, Any]) -> dt.datetime | None:
    value = result.get("expires_at")
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return dt.datetime.fromisoformat(value)
    return None


async def _apply_lock_answer(svc: Services, lock: Lock, answer: HisAnswer) -> Lock:
    if answer.done:
        return (
            await locks.update(
                svc.db, lock.id, ("locking",), state="locked", lock_id=answer.result.get("lock_id"),
                amount_fen=answer.result.get("amount_fen"), expires_at=_times(answer.result), due_at=None,
                his_error=None,
            )
            or lock
        )  # fmt: skip
    if answer.failed:
        return (
            await locks.update(svc.db, lock.id, ("locking",), state="failed", his_error=answer.error, due_at=None)
            or lock
        )
    return await locks.update(svc.db, lock.id, ("locking",), due_at=svc.soon(svc.cfg.workers.his_poll_s)) or lock


async def _send_lock(svc: Services, lock: Lock) -> Lock:
    params = {
        "request_id": f"{lock.trade_no}-lock",
        "trade_no": lock.trade_no,
        "patient_id": lock.patient_id,
        "schedule_id": lock.schedule_id,
    }
    try:
        answer = await write_once(
            svc.his_for(lock.hospital_id), "registration.lock", params, may_have_sent=lock.attempts > 0
        )
    except HisUnavailable as e:
        return (
            await locks.update(
                svc.db, lock.id, ("locking",), attempts=lock.attempts + 1, due_at=svc.backoff(lock.attempts),
                his_error={"code": "his_unavailable", "message": str(e)},
            )
            or lock
        )  # fmt: skip
    lock = await locks.update(svc.db, lock.id, ("locking",), attempts=lock.attempts + 1) or lock
    return await _apply_lock_answer(svc, lock, answer)


async def lock(
    svc: Services, hospital_id: str, app_id: str, lock_no: str, patient_id: str, schedule_id: str
) -> tuple[Lock, bool]:
    """Hold a slot for ``lock_no`` (the app's own number; a repeat returns the same lock). The answer is the
    HIS's within the agent's deadline, else the lock is ``locking`` and the app asks again."""
    row, created = await locks.insert(
        svc.db,
        {
            "hospital_id": hospital_id, "app_id": app_id, "lock_no": lock_no, "trade_no": new_trade_no("L"),
            "patient_id": patient_id, "schedule_id": schedule_id, "state": "locking", "due_at": svc.lease(),
        },
    )  # fmt: skip
    if not created and (row.patient_id, row.schedule_id) != (patient_id, schedule_id):
        raise LockConflict(f"lock {lock_no} was taken for another patient or schedule")
    if created:
        return await _send_lock(svc, row), True
    return await refresh(svc, row), False


async def refresh(svc: Services, row: Lock) -> Lock:
    """A lock still ``locking``: ask the agent about it now (unless a worker is on it)."""
    if row.state != "locking" or (row.due_at is not None and row.due_at > utcnow()):
        return row
    claimed = await locks.update(svc.db, row.id, ("locking",), due_at=svc.lease())
    return await _send_lock(svc, claimed) if claimed is not None else row


async def unlock(svc: Services, row: Lock, reason: str) -> Lock:
    """The app lets the slot go. Refused while an order may still pay for it; idempotent once released."""
    if row.state in ("releasing", "released", "failed"):
        return row
    if row.state == "used":
        raise LockBusy(f"slot {row.lock_no} was paid for by order {row.order_business_no}: refund it instead")
    if row.state == "locking":
        raise LockBusy(f"slot {row.lock_no} is not held yet; ask again once it is")
    holder = await locks.holder_may_pay(svc.db, row)
    if holder is not None:
        raise LockBusy(f"order {holder} may still pay for slot {row.lock_no}: close it first")
    marked = await locks.update(
        svc.db, row.id, ("locked",), state="releasing", release_reason=reason, attempts=0, due_at=svc.lease()
    )
    if marked is None:
        fresh = await locks.get(svc.db, row.hospital_id, row.lock_no)
        return fresh or row
    return await release(svc, marked)


async def release(svc: Services, row: Lock) -> Lock:
    """Tell the HIS to free the slot (``registration.unlock``), once."""
    params = {"request_id": f"{row.trade_no}-unlock", "trade_no": row.trade_no, "lock_id": row.lock_id}
    try:
        answer = await write_once(
            svc.his_for(row.hospital_id), "registration.unlock", params, may_have_sent=row.attempts > 0
        )
    except HisUnavailable as e:
        return (
            await locks.update(
                svc.db, row.id, ("releasing",), attempts=row.attempts + 1, due_at=svc.backoff(row.attempts),
                his_error={"code": "his_unavailable", "message": str(e)},
            )
            or row
        )  # fmt: skip
    if answer.pending:
        return (
            await locks.update(
                svc.db, row.id, ("releasing",), attempts=row.attempts + 1, due_at=svc.soon(svc.cfg.workers.his_poll_s)
            )
            or row
        )
    if answer.failed:
        # The HIS no longer holds the slot for this trade (expired, or never held): nothing left to free.
        log.warning("registration_release_refused", lock=row.lock_no, hospital=row.hospital_id, error=answer.error)
    done = await locks.update(
        svc.db, row.id, ("releasing",), state="released", attempts=row.attempts + 1, due_at=None,
        his_error=answer.error if answer.failed else None,
    )  # fmt: skip
    if done is not None:
        log.info("registration_released", lock=row.lock_no, hospital=row.hospital_id, reason=row.release_reason)
    return done or row


async def step(svc: Services, row: Any) -> None:
    lock_row = locks.from_row(row)
    if lock_row.state == "locking":
        await _send_lock(svc, lock_row)
    elif lock_row.state == "releasing":
        await release(svc, lock_row)


async def work_once(svc: Services) -> int:
    """Follow the orders holding slots, then work the locks that are due (a lock in doubt, a release); the
    number of locks worked."""
    w = svc.cfg.workers
    await locks.settle_with_orders(svc.db)
    rows = await claims.claim(
        svc.db, registration_locks, limit=w.batch, lease_s=w.lease_s,
        where=registration_locks.c.state.in_(("locking", "releasing")),
    )  # fmt: skip
    await asyncio.gather(*(_step(svc, r) for r in rows))
    return len(rows)


async def release_forever(svc: Services) -> None:
    while True:
        try:
            if await work_once(svc):
                continue
        except Exception:
            log.exception("registration_locks_failed")
        await asyncio.sleep(svc.cfg.workers.poll_interval_s)


async def _step(svc: Services, row: Any) -> None:
    try:
        await step(svc, row)
    except Exception:
        log.exception("registration_lock_step_failed", id=row.id)
