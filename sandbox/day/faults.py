"""The faults a simulated day injects, and what each one should leave behind.

``EXPECTED`` is the contract the day is checked against: for every fault kind, the exception classes that must
appear on the order it hit (order- and refund-level exceptions of the gateway, reconciliation classes), or none,
with the reason none is due. An exception on any order that no fault explains is a false exception; a fault
whose order does not show exactly its expected classes is unaccounted for.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class FaultKind(StrEnum):
    his_down = "his_down"
    """The HIS refuses every call (HTTP 503) for minutes while payments go on."""
    his_drop_reply = "his_drop_reply"
    """The HIS applies one order's commit, then drops the connection without a reply."""
    bridge_kill = "bridge_kill"
    """The bridge agent is killed with SIGKILL while one order's commit is at the HIS, then restarted."""
    notify_lost = "notify_lost"
    """The channel never sends one payment's callback."""
    notify_duplicate = "notify_duplicate"
    """The channel sends one payment's callback twice."""
    notify_late = "notify_late"
    """The channel sends one payment's callback hours late."""
    refund_stuck = "refund_stuck"
    """One WeChat refund stays PROCESSING for hours (often past midnight), then succeeds."""
    refund_abnormal = "refund_abnormal"
    """One WeChat refund stays PROCESSING, then ends ABNORMAL (the payer's card was closed)."""
    partition = "partition"
    """The network between gateway and bridge black-holes every packet for minutes."""
    midnight_payment = "midnight_payment"
    """A payment finishes at 23:59:59.9."""
    midnight_refund = "midnight_refund"
    """An insurance refund is paid at 23:59:30 and the HIS, busy with its nightly jobs, writes it back after
    midnight (the mirror image of the payment at 23:59:59.9)."""
    slot_lock_expired = "slot_lock_expired"
    """A registration whose slot the kiosk locked is paid while the HIS is down; the lock expires meanwhile."""
    writeback_refused = "writeback_refused"
    """The HIS refuses one refund's write-back for good (its accounting period for the trade is closed)."""


@dataclass(frozen=True)
class Expectation:
    classes: frozenset[str]
    """Exception classes the hit order must show: order- and refund-level kinds (``his_rejected``,
    ``writeback_failed``, ``refund_abnormal``…) and reconciliation classes (``over_collection``…)."""
    why: str
    """What the exceptions mean, or why none is due."""


def _none(why: str) -> Expectation:
    return Expectation(frozenset(), "none, because " + why)


EXPECTED: dict[FaultKind, Expectation] = {
    FaultKind.his_down: _none(
        "the bridge journals each write and retries it once the HIS answers again, and the gateway polls a pending "
        "commit: every payment of the outage is booked the same day"
    ),
    FaultKind.his_drop_reply: _none(
        "the bridge treats the lost reply as in doubt and asks trade.check before resending: the HIS keeps one record"
    ),
    FaultKind.bridge_kill: _none(
        "the journal committed the write before the HIS call; after the restart the entry in flight is settled by "
        "trade.check, and the gateway's retry with the same request id gets the journaled outcome"
    ),
    FaultKind.notify_lost: _none("the gateway queries an unpaid order at the channel and finds it paid"),
    FaultKind.notify_duplicate: _none("callbacks are applied idempotently: the second changes nothing"),
    FaultKind.notify_late: _none(
        "the gateway's own query found the payment hours before the callback arrived, which then changes nothing"
    ),
    FaultKind.refund_stuck: _none(
        "the gateway keeps asking about the PROCESSING refund; it is paid and written back the next day, when all "
        "three ledgers record it"
    ),
    FaultKind.refund_abnormal: Expectation(
        frozenset({"refund_abnormal", "over_collection"}),
        "the HIS applied a refund the channel could not pay out (refund_abnormal at once; the refund entry the HIS "
        "has and the channel has not is an over-collection once it stops waiting): finance settles it with the "
        "patient offline and marks both handled",
    ),
    FaultKind.partition: _none(
        "the gateway retries each HIS step with the same request id, and the bridge answers a retry from its journal"
    ),
    FaultKind.midnight_payment: _none(
        "the HIS books it just after midnight: the day's reconciliation holds it in suspense and the next day's "
        "matches it"
    ),
    FaultKind.midnight_refund: _none(
        "the channel paid it on the day and the HIS wrote it back the next: one entry that crosses midnight, held in "
        "suspense on the day and matched by its key the next"
    ),
    FaultKind.slot_lock_expired: Expectation(
        frozenset({"his_rejected", "over_collection"}),
        "the HIS refused the registration (its slot lock expired while the HIS was down): money the HIS does not "
        "book, which finance refunds to the payer after two people agree",
    ),
    FaultKind.writeback_refused: Expectation(
        frozenset({"writeback_failed", "status_mismatch"}),
        "the channel paid a refund the HIS holds as applied and never written back (writeback_failed at once; "
        "status_mismatch from reconciliation once it stops waiting): finance corrects the HIS by hand and marks "
        "both handled",
    ),
}

TARGETED = frozenset(EXPECTED) - {FaultKind.his_down, FaultKind.partition}
"""Kinds aimed at one order (the others hit whatever is in flight during their window)."""
